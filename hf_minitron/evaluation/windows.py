"""Held-out perplexity: the masked mean NLL every stage uses, and the evaluation windows.

Windows (:func:`eval_windows`): the texts are tokenized without special tokens, joined with the tokenizer's EOS and
cut into non-overlapping windows of ``seq_len`` tokens (the tail shorter than a window is dropped). With
``add_bos=True`` each window is ``[BOS] + seq_len - 1`` text tokens, so the first text token of every window is
predicted from BOS; without it the first token of a window is context only and is never predicted. Every window
therefore scores ``seq_len - 1`` predictions. Windows are built per tokenizer: two models with the same tokenizer see
the same ids (:func:`windows_fingerprint` tells), two different tokenizers cut the same text differently.
"""

from __future__ import annotations

import math

import torch

from ..data import fingerprint, token_blocks
from ..errors import ConfigError
from ..nll import next_token_nll_sum


@torch.no_grad()
def mean_nll(model, blocks: torch.Tensor, batch_size: int = 4, attention_mask: torch.Tensor | None = None) -> float:
    """Mean next-token negative log-likelihood (nats/token) of ``model`` over ``[n, seq]`` token ``blocks``.

    Every next-token prediction inside a block counts (positions masked out by ``attention_mask`` do not).
    Accumulates in float64 (:func:`hf_minitron.nll.next_token_nll_sum`, the library's one masked NLL).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, blocks.shape[0], batch_size):
        ids = blocks[start : start + batch_size].to(device)
        mask = None if attention_mask is None else attention_mask[start : start + batch_size].to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        nll, n = next_token_nll_sum(logits, ids, mask)
        total += nll
        count += n
    model.train(was_training)
    return total / max(count, 1)


def perplexity(model, blocks: torch.Tensor, batch_size: int = 4) -> float:
    """``exp(mean_nll)`` over ``[n, seq]`` token blocks."""
    return math.exp(mean_nll(model, blocks, batch_size=batch_size))


def eval_windows(texts, tokenizer, seq_len: int, num_windows: int | None = None, *, add_bos: bool = False,
                 model_name: str = "model") -> torch.Tensor:
    """``[n, seq_len]`` non-overlapping evaluation windows of ``texts`` (see the module docstring).

    ``add_bos`` with a tokenizer that has no BOS token is a :class:`ConfigError` naming ``model_name``."""
    if not add_bos:
        return token_blocks(texts, tokenizer, seq_len, num_windows)
    bos = tokenizer.bos_token_id
    if bos is None:
        raise ConfigError(f"add_bos is set but the tokenizer of {model_name} has no BOS token; unset add_bos "
                          "(windows then start with a text token, which is never predicted)")
    body = token_blocks(texts, tokenizer, seq_len - 1, num_windows)
    return torch.cat([torch.full((body.shape[0], 1), bos, dtype=body.dtype), body], dim=1)


def windows_fingerprint(windows: torch.Tensor) -> str:
    """A short hash of the window ids: equal for two models exactly when they were scored on the same tokens."""
    return fingerprint(windows)


def evaluate_perplexity(model, windows: torch.Tensor, *, batch_size: int = 4) -> dict:
    """``{"nll", "perplexity", "windows", "predicted_tokens", "windows_fingerprint"}`` of ``model`` on ``windows``."""
    nll = mean_nll(model, windows, batch_size=batch_size)
    return {"nll": nll, "perplexity": math.exp(nll), "windows": int(windows.shape[0]),
            "predicted_tokens": int(windows.shape[0] * (windows.shape[1] - 1)),
            "windows_fingerprint": windows_fingerprint(windows)}


__all__ = ["eval_windows", "evaluate_perplexity", "mean_nll", "perplexity", "windows_fingerprint"]
