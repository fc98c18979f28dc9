"""The checkpoint format's version: what this llmbin writes and what it reads."""

# 2 (issue 17): unquantized tensors in the source's dtype; optional packed embeddings/head ("embeddings" record).
# Version 1 checkpoints (float32 base tensors, no "embeddings") load unchanged.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
