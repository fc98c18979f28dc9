"""From prompt text to token ids and back: encoding (with the chat template), length checks against the model's
context, stop tokens, and printable text deltas while tokens stream."""
from __future__ import annotations

import torch

from ..checkpoint.reader import load_any
from ..errors import LlmbinError
from ..models.context import max_context


def stop_token_ids(model, tokenizer) -> set:
    ids = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        ids.update(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    return ids


def check_prompt(prompt: str | None) -> str:
    """The prompt itself, or one line saying it is missing."""
    if not prompt or not prompt.strip():
        raise LlmbinError("the prompt is empty; pass --prompt TEXT or pipe the prompt on stdin")
    return prompt


def encode_prompt(tokenizer, prompt: str, chat: bool) -> torch.Tensor:
    check_prompt(prompt)
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise LlmbinError("this model's tokenizer has no chat template; drop --chat")
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    return tokenizer(prompt, return_tensors="pt").input_ids


def check_length(model, prompt_tokens: int, max_new_tokens: int) -> None:
    if max_new_tokens < 1:
        raise LlmbinError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    context = max_context(model.config)
    if context is None:
        return
    if prompt_tokens >= context:
        raise LlmbinError(f"the prompt is {prompt_tokens} tokens, longer than the model's context of {context}; "
                          "shorten it")
    if prompt_tokens + max_new_tokens > context:
        raise LlmbinError(f"{prompt_tokens} prompt tokens + --max-new-tokens {max_new_tokens} exceed the model's context "
                          f"of {context}; lower --max-new-tokens to {context - prompt_tokens} or shorten the prompt")


class TextStream:
    """Token ids in, printable text deltas out (holds back a partial UTF-8 character)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.printed = tokenizer, [], 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        delta, self.printed = text[self.printed:], len(text)
        return delta


def load_for_generation(ref: str, device: str = "cpu"):
    model, tokenizer = load_any(ref, device)
    if tokenizer is None:
        raise LlmbinError(f"{ref} has no tokenizer files; save the tokenizer next to the model")
    return model.eval(), tokenizer
