"""Held-out language-model evaluation."""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def mean_nll(model, blocks: torch.Tensor, batch_size: int = 4, attention_mask: torch.Tensor | None = None) -> float:
    """Mean next-token negative log-likelihood (nats/token) of ``model`` over ``[n, seq]`` token ``blocks``.

    Every next-token prediction inside a block counts (positions masked out by ``attention_mask`` do not).
    Accumulates in float64.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, blocks.shape[0], batch_size):
        ids = blocks[start : start + batch_size].to(device)
        mask = None if attention_mask is None else attention_mask[start : start + batch_size].to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = ids[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
        if mask is not None:
            keep = (mask[:, 1:] * mask[:, :-1]).reshape(-1).bool()
            nll = nll[keep]
        total += nll.double().sum().item()
        count += nll.numel()
    model.train(was_training)
    return total / max(count, 1)


def perplexity(model, blocks: torch.Tensor, batch_size: int = 4) -> float:
    """``exp(mean_nll)`` over ``[n, seq]`` token blocks."""
    return math.exp(mean_nll(model, blocks, batch_size=batch_size))
