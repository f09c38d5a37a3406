"""Evaluate untrusted candidate kernels: static policy, sandboxed workers, correctness, timing, verdicts.

Knows nothing of LLMs or agents; imports only kernels/ of the project.
"""
from .checker import Comparison, compare
from .evaluate import Evaluator, EvaluatorSettings
from .promotion import ABDecision, decide
from .sandboxes import SandboxLost, Timeouts
from .timing import TimingSettings
from .verdict import FAILURE_CLASSES, CandidateFailure, Verdict

__all__ = ["ABDecision", "CandidateFailure", "Comparison", "Evaluator", "EvaluatorSettings", "FAILURE_CLASSES",
           "SandboxLost", "Timeouts", "TimingSettings", "Verdict", "compare", "decide"]
