"""Perplexity protocols, zero-shot tasks, reports."""
