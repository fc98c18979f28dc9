"""`llmbin compare`: several recipes on one model, all scored under one protocol, and the report."""
