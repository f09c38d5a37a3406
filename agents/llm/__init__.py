"""The LLM agents: the client with its ledger and record/replay, the coder, planner and reflector, prompts/."""
