"""The one masked next-token negative log-likelihood of the library (evaluation, LM-loss importance criteria).

``next_token_nll_sum(states, ids, mask, project=...)`` sums ``-log p(ids[t+1] | ..t)`` over the positions whose token
and target are both unmasked, ``chunk_tokens`` positions at a time in fp32 and float64 accumulation. ``states`` are
either logits ``[batch, seq, vocab]`` (``project=None``) or final hidden states ``[batch, seq, hidden]`` with
``project`` mapping them to logits (the LM head, plus a final soft-cap): then no ``[batch, seq, vocab]`` tensor is ever
built.
"""

from __future__ import annotations

from typing import Callable

import torch

#: fp32 logits per chunk (16M = 64 MiB)
CHUNK_LOGITS = 1 << 24


def chunk_tokens_for(vocab_size: int) -> int:
    """Positions per chunk so that one chunk holds about :data:`CHUNK_LOGITS` fp32 logits."""
    return max(1, CHUNK_LOGITS // max(1, vocab_size))


def next_token_nll_sum(states: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None, *,
                       project: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       chunk_tokens: int | None = None) -> tuple[float, float]:
    """``(sum of next-token NLL in nats, number of positions counted)`` over ``states [batch, seq, *]`` and
    ``ids [batch, seq]``; ``mask [batch, seq]`` (1 = real token) drops positions whose token or target is padding."""
    s, target = states[:, :-1], ids[:, 1:].to(states.device)
    if mask is None:
        s, target = s.reshape(-1, s.shape[-1]), target.reshape(-1)
    else:
        keep = (mask[:, 1:] * mask[:, :-1]).to(states.device).bool()
        s, target = s[keep], target[keep]
    if chunk_tokens is None:
        vocab = s.shape[-1] if project is None else None
        chunk_tokens = chunk_tokens_for(vocab) if vocab else 4096
    total = torch.zeros((), dtype=torch.float64, device=s.device)
    for start in range(0, s.shape[0], chunk_tokens):
        part = s[start : start + chunk_tokens]
        logits = (part if project is None else project(part)).float()
        total += torch.nn.functional.cross_entropy(logits, target[start : start + chunk_tokens],
                                                   reduction="sum").double()
    return total.item(), float(s.shape[0])


__all__ = ["CHUNK_LOGITS", "chunk_tokens_for", "next_token_nll_sum"]
