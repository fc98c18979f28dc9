"""`python -m llmbin.cli ...` runs the `llmbin` command."""
from . import main

main()
