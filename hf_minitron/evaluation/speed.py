"""Size and speed of a model: parameter counts and greedy-generation throughput.

Throughput protocol (the same for every model of a run): each prompt is rendered as plain text, encoded with the
model's own tokenizer and generated from alone (batch 1), greedily, for exactly ``max_new_tokens`` tokens (EOS does
not stop it, so every model produces the same number of tokens). One untimed warm-up generation runs first.
``tokens_per_s`` = all new tokens / all generation time; ``first_token_latency_s`` = median over the prompts of the
time ``generate(max_new_tokens=1)`` takes (prefill plus one decode step). Wall-clock on whatever device the model is
on, with ``torch.get_num_threads()`` threads on CPU (recorded), so compare figures from the same run only.
"""

from __future__ import annotations

import statistics
import time

import torch

#: Prompts used when a run gives none.
DEFAULT_PROMPTS = (
    "The history of the printing press begins",
    "Here is a short explanation of how vaccines train the immune system:",
    "def fibonacci(n):",
    "Three tips for writing clear technical documentation are",
)


def parameter_counts(model) -> dict:
    """``{"parameters", "non_embedding_parameters"}`` (tied weights once; see :func:`hf_minitron.arch.count_parameters`)."""
    from ..arch import count_parameters

    total, non_embedding = count_parameters(model)
    return {"parameters": total, "non_embedding_parameters": non_embedding}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _timed_generate(model, ids: torch.Tensor, new_tokens: int, pad_id) -> float:
    device = ids.device
    _sync(device)
    start = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id)
    _sync(device)
    elapsed = time.perf_counter() - start
    if out.shape[1] - ids.shape[1] != new_tokens:  # min_new_tokens guarantees this; a custom generate might not
        raise RuntimeError(f"generate returned {out.shape[1] - ids.shape[1]} new tokens, expected {new_tokens}")
    return elapsed


def generation_throughput(model, tokenizer, prompts=DEFAULT_PROMPTS, *, max_new_tokens: int = 32) -> dict:
    """Greedy-generation speed of ``model`` on ``prompts`` (see the module docstring)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [tokenizer(p, return_tensors="pt").input_ids.to(device) for p in prompts]
    _timed_generate(model, encoded[0], min(4, max_new_tokens), pad_id)  # warm-up: allocator, kernels, caches
    total_time = sum(_timed_generate(model, ids, max_new_tokens, pad_id) for ids in encoded)
    first = [_timed_generate(model, ids, 1, pad_id) for ids in encoded]
    model.train(was_training)
    new_tokens = max_new_tokens * len(encoded)
    return {"tokens_per_s": new_tokens / total_time, "first_token_latency_s": statistics.median(first),
            "new_tokens": new_tokens, "prompts": len(encoded),
            "prompt_tokens": [int(ids.shape[1]) for ids in encoded]}


def speed_settings(model, *, prompts, max_new_tokens: int) -> dict:
    """What a throughput figure depends on, for the report."""
    device = next(model.parameters()).device
    return {"prompts": list(prompts), "max_new_tokens": max_new_tokens, "batch_size": 1, "decoding": "greedy",
            "device": str(device), "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "torch_threads": torch.get_num_threads() if device.type == "cpu" else None}


__all__ = ["DEFAULT_PROMPTS", "generation_throughput", "parameter_counts", "speed_settings"]
