"""Evaluate untrusted candidate kernels: a judge that decides every check, fresh sandboxes that run them.

Knows nothing of LLMs or agents; imports only kernels/ of the project.
"""
from .checker import Comparison, compare
from .evaluate import Evaluator, EvaluatorSettings
from .judge import JudgeError
from .pool import EvaluationPool, GpuTurns
from .promotion import ABDecision, decide
from .sandboxes import SandboxLost, Timeouts
from .timing import TimingSettings
from .verdict import FAILURE_CLASSES, CandidateFailure, Verdict

__all__ = ["ABDecision", "CandidateFailure", "Comparison", "EvaluationPool", "Evaluator", "EvaluatorSettings",
           "FAILURE_CLASSES", "GpuTurns", "JudgeError", "SandboxLost", "Timeouts", "TimingSettings", "Verdict",
           "compare", "decide"]
