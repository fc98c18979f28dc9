"""How a model call takes and returns its KV cache, across the transformers versions llmbin supports.

transformers 5.24 renamed the argument and the output field `past_key_values` to `cache` (the old name is
deprecated and goes in 5.40); before 5.24 a `cache=` argument is not an error but lands in `**kwargs` unread,
so every decode step would attend to one token. Every call that passes a cache goes through `cache_kwargs`.
"""
from __future__ import annotations

import transformers
from packaging.version import Version

RENAMED_IN = Version("5.24.0")
CACHE_KWARG = "cache" if Version(transformers.__version__.split("+")[0]) >= RENAMED_IN else "past_key_values"


def cache_kwargs(cache) -> dict:
    """{argument name: cache} for a model's forward."""
    return {CACHE_KWARG: cache}


def returned_cache(output):
    """The cache a forward returned (output.cache, or output.past_key_values before 5.24)."""
    return getattr(output, CACHE_KWARG)
