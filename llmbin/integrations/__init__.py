"""Integrations with transformers and lm-eval."""
