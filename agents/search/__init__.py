"""The search: the LangGraph loop and its state, the rule-based planner, the template coder, rule verdicts."""
