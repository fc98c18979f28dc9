"""What llmbin asks of the machine it runs on: files that appear whole, memory handed back, thread counts,
and the versions and CPU path that change float results. Imports nothing else of llmbin but its errors."""
