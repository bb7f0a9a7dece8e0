"""Cost accounting across runs: the ledger of every LLM call, and budgets above a task."""
