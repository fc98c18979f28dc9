"""Deviation-aware distillation loss against a cached teacher.

The teacher runs once over every window (train and held-out) before the student trains; per token
it leaves its top-k log-probabilities log p_t,i with their token ids, the log of the remaining mass
log p_t,rest = log(1 - sum_i p_t,i), and its full-vocabulary entropy H_t. Teacher and student are
never both needed at once, and the cache costs k * 8 bytes per token instead of V * 4.

Per token t (p teacher, q student, both at temperature T, over the k cached tokens and one "rest" bin):

    KL_t = sum_i p_t,i (log p_t,i - log q_t,i) + p_t,rest (log p_t,rest - log q_t,rest)
    w_t  = 1 + gamma * H_t / log V              (loss=entropy_kl; gamma = 0 for loss=kl)
    L    = T^2 * mean_t (w_t * KL_t)  [+ ce_weight * mean_t CE(student, next token)]

KL_t is the exact KL divergence between the two distributions coarsened to those k + 1 bins (a
lower bound of the full-vocabulary KL, equal to it when k = V). The weight grows with the teacher's
predictive entropy, so ambiguous tokens, where a quantized student deviates most, count up to
(1 + gamma) times as much as confident ones (DB-LLM's deviation-aware distillation; the paper's exact
weighting is not public, this is llmbin's choice), with a weight independent of the batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

FORMULA = ("L = T^2 * mean_t[(1 + gamma * H_t / log V) * KL(p_t || q_t)], p_t/q_t the teacher/student next-token "
           "distributions at temperature T (teacher's top-k tokens plus one bin for the rest), H_t the teacher's "
           "predictive entropy, V the vocabulary size")


@dataclass
class TeacherCache:
    """Per-token teacher targets for windows [W, S]: top-k log-probs/ids, log rest mass, entropy."""

    logp: torch.Tensor  # float32 [W, S, k]
    ids: torch.Tensor  # int32 [W, S, k]
    log_rest: torch.Tensor  # float32 [W, S]
    entropy: torch.Tensor  # float32 [W, S]
    vocab: int

    def select(self, index) -> "TeacherCache":
        return TeacherCache(self.logp[index], self.ids[index], self.log_rest[index], self.entropy[index], self.vocab)

    def to(self, device) -> "TeacherCache":
        return TeacherCache(self.logp.to(device), self.ids.to(device), self.log_rest.to(device),
                            self.entropy.to(device), self.vocab)

    def state(self) -> dict:
        return {"logp": self.logp, "ids": self.ids, "log_rest": self.log_rest, "entropy": self.entropy,
                "vocab": self.vocab}


def targets_from_logits(logits: torch.Tensor, topk: int, temperature: float = 1.0) -> TeacherCache:
    """Teacher logits [B, S, V] -> its cache entries (computed in float32)."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    top, ids = logp.topk(min(topk, logp.shape[-1]), dim=-1)
    rest_mass = (1 - top.exp().sum(-1)).clamp(min=0)
    if top.shape[-1] == logp.shape[-1]:
        rest_mass = torch.zeros_like(rest_mass)  # no token is left out: no rest bin (not 1 - sum's rounding residue)
    return TeacherCache(top, ids.to(torch.int32), torch.log(rest_mass), entropy, logits.shape[-1])


@torch.no_grad()
def build_cache(teacher, windows: torch.Tensor, topk: int, temperature: float, batch_size: int, device,
                progress=None) -> TeacherCache:
    parts = []
    for start in range(0, len(windows), batch_size):
        ids = windows[start:start + batch_size].to(device)
        parts.append(targets_from_logits(teacher(input_ids=ids, use_cache=False).logits, topk, temperature).to("cpu"))
        if progress is not None:
            progress(len(ids))
    return TeacherCache(*(torch.cat([getattr(p, f) for p in parts]) for f in ("logp", "ids", "log_rest", "entropy")),
                        parts[0].vocab)


def token_terms(student_logits: torch.Tensor, target: TeacherCache, temperature: float = 1.0,
                gamma: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (w_t, KL_t) per token [B, S]: the entropy weight and the k+1-bin KL (see the module docstring)."""
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    ids = target.ids.long()
    log_q_top = log_q.gather(-1, ids)
    p_top = target.logp.exp()
    kl = (p_top * (target.logp - log_q_top)).sum(-1)
    if ids.shape[-1] < log_q.shape[-1]:
        # the student's mass outside the teacher's top-k, as a masked log-sum-exp (no 1 - sum cancellation)
        log_q_rest = torch.logsumexp(log_q.scatter(-1, ids, float("-inf")), dim=-1)
        p_rest = target.log_rest.exp()
        log_p_rest = torch.where(p_rest > 0, target.log_rest, torch.zeros_like(p_rest))  # 0 * log 0 := 0
        kl = kl + p_rest * (log_p_rest - log_q_rest)
    weight = 1 + gamma * target.entropy / math.log(target.vocab)
    return weight, kl


def distill_loss(student_logits, target: TeacherCache, labels: torch.Tensor | None, temperature: float,
                 gamma: float, ce_weight: float = 0.0) -> torch.Tensor:
    weight, kl = token_terms(student_logits, target, temperature, gamma)
    loss = temperature ** 2 * (weight * kl).mean()
    if ce_weight > 0 and labels is not None:
        loss = loss + ce_weight * F.cross_entropy(student_logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
    return loss
