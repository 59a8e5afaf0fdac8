"""Logit distillation losses with a token-chunked, memory-frugal PyTorch path.

``distillation_loss`` is the single dispatch point the trainer calls. It returns sums over the counted tokens (the
trainer divides by ``num_items_in_batch``). The PyTorch path walks the counted tokens in chunks: for each chunk it
upcasts the student and teacher logits to fp32, computes the per-token divergence and its gradient with respect to the
student logits, and writes that gradient into one buffer in the student's dtype. No ``[tokens, vocab]`` fp32 tensor
larger than a chunk is ever alive, and the backward pass is a single multiply.

Divergences, with ``p = softmax(teacher / T)`` and ``q = softmax(student / T)``, all multiplied by ``T**2`` (so the
gradient magnitude does not shrink with the temperature, Hinton et al. 2015):

- ``forward_kl``: ``KL(p || q) = sum p (log p - log q)`` (the Minitron recipe's loss, at ``T = 1``)
- ``reverse_kl``: ``KL(q || p) = sum q (log q - log p)``
- ``jsd``: generalized Jensen-Shannon divergence with ``m = beta p + (1 - beta) q``:
  ``beta KL(p || m) + (1 - beta) KL(q || m)`` (GKD, Agarwal et al. 2024, eq. 1; ``beta = 0.5`` is the usual JSD)

Optionally the next-token cross-entropy of the student (at temperature 1) is added with weight ``ce_weight``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

KD_LOSSES = ("forward_kl", "reverse_kl", "jsd")
TOPK_KD_LOSS = "topk_kl"  # top-k KL against an offline teacher cache: topk_distillation_loss

# Default chunk: about this many logits (tokens x vocab) per chunk, i.e. 16 MiB per fp32 temporary.
DEFAULT_CHUNK_ELEMENTS = 1 << 22


class DistillationLossOutput(NamedTuple):
    """Sums over the counted tokens. ``loss = kd + ce_weight * ce`` carries the gradient; ``kd`` and ``ce`` are
    detached fp32 scalars for logging (``ce`` is 0 when no targets were given); ``num_tokens`` counts the tokens."""

    loss: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor
    num_tokens: int


def default_chunk_size(vocab_size: int) -> int:
    """Tokens per chunk so that one fp32 chunk of logits holds about ``DEFAULT_CHUNK_ELEMENTS`` values."""
    return max(1, DEFAULT_CHUNK_ELEMENTS // max(1, vocab_size))


def divergence_rows(student: torch.Tensor, teacher: torch.Tensor, *, kind: str, temperature: float = 1.0,
                    beta: float = 0.5, with_grad: bool = True):
    """Per-token divergence of one chunk, fp32.

    ``student``, ``teacher``: ``[n, V]`` fp32 logits. Returns ``(rows [n], grad [n, V] or None, log_q)`` where ``rows``
    is already multiplied by ``T**2``, ``grad`` is d(sum rows)/d(student logits) and ``log_q`` is
    ``log_softmax(student / T)`` (reused for the cross-entropy at ``T = 1``).
    """
    inv_t = 1.0 / temperature
    log_q = torch.log_softmax(student * inv_t if temperature != 1.0 else student, dim=-1)
    log_p = torch.log_softmax(teacher * inv_t if temperature != 1.0 else teacher, dim=-1)
    scale = temperature * temperature
    if kind == "forward_kl":
        p = log_p.exp()
        # p log p is 0 where p underflows to 0 (log p = -inf), never nan
        rows = torch.where(p > 0, p * (log_p - log_q), 0.0).sum(-1)
        grad = (log_q.exp() - p) if with_grad else None
    elif kind == "reverse_kl":
        q = log_q.exp()
        diff = log_q - log_p
        rows = torch.where(q > 0, q * diff, 0.0).sum(-1)
        grad = q * (diff - rows.unsqueeze(-1)) if with_grad else None
        if grad is not None:
            grad = torch.where(q > 0, grad, 0.0)
    elif kind == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd needs 0 < beta < 1, got beta={beta}; use forward_kl (beta=0) or reverse_kl (beta=1)")
        p, q = log_p.exp(), log_q.exp()
        log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))
        q_term = torch.where(q > 0, q * (log_q - log_m), 0.0)
        p_term = torch.where(p > 0, p * (log_p - log_m), 0.0)
        rows = beta * p_term.sum(-1) + (1.0 - beta) * q_term.sum(-1)
        del p_term
        if with_grad:
            # d/dq_j = (1 - beta) (log q_j - log m_j); through the softmax: q_j (g_j - sum_k q_k g_k)
            g = (1.0 - beta) * (log_q - log_m)
            grad = torch.where(q > 0, q * (g - (1.0 - beta) * q_term.sum(-1, keepdim=True)), 0.0)
        else:
            grad = None
    else:
        raise ValueError(f"kd_loss={kind!r} is not supported; choose one of {', '.join(KD_LOSSES)}")
    rows = rows * scale
    if grad is not None:
        grad = grad * (scale * inv_t)  # d/d(student) = d/d(student / T) / T, times the T**2 loss scale
    return rows, grad, log_q


class _ChunkedDistillation(torch.autograd.Function):
    """Sum over counted rows of ``T**2 * divergence + ce_weight * cross_entropy``; gradient computed chunk by chunk
    in the forward pass and stored once, in the student's dtype."""

    @staticmethod
    def forward(ctx, student, teacher, rows, targets, kind, temperature, beta, ce_weight, chunk_size, vocab):
        need_grad = ctx.needs_input_grad[0]
        grad_buf = None
        if need_grad:
            full = rows.numel() == student.shape[0] and vocab == student.shape[1]
            grad_buf = torch.empty_like(student) if full else torch.zeros_like(student)
        kd_total = torch.zeros((), dtype=torch.float64, device=student.device)
        ce_total = torch.zeros((), dtype=torch.float64, device=student.device)
        for start in range(0, rows.numel(), chunk_size):
            idx = rows[start : start + chunk_size]
            s = student.index_select(0, idx)[:, :vocab].float()
            t = teacher.index_select(0, idx)[:, :vocab].float()
            kd_rows, grad, log_q = divergence_rows(s, t, kind=kind, temperature=temperature, beta=beta,
                                                    with_grad=need_grad)
            kd_total += kd_rows.sum(dtype=torch.float64)
            if targets is not None:
                tgt = targets[start : start + chunk_size].unsqueeze(-1)
                log_q1 = log_q if temperature == 1.0 else torch.log_softmax(s, dim=-1)
                ce_total -= log_q1.gather(-1, tgt).sum(dtype=torch.float64)
                if need_grad and ce_weight != 0.0:
                    ce_grad = log_q1.exp_()  # log_q is not needed any more: reuse its memory
                    ce_grad.scatter_add_(-1, tgt, torch.full_like(tgt, -1.0, dtype=ce_grad.dtype))
                    grad.add_(ce_grad, alpha=ce_weight)
            if need_grad:
                if vocab == student.shape[1]:
                    grad_buf.index_copy_(0, idx, grad.to(grad_buf.dtype))
                else:
                    grad_buf[idx, :vocab] = grad.to(grad_buf.dtype)
            del s, t, kd_rows, grad, log_q
        ctx.save_for_backward(grad_buf if need_grad else None)
        kd = kd_total.float()
        ce = ce_total.float()
        total = kd + ce_weight * ce if targets is not None else kd.clone()
        ctx.mark_non_differentiable(kd, ce)
        return total, kd, ce

    @staticmethod
    def backward(ctx, grad_total, grad_kd, grad_ce):
        (grad_buf,) = ctx.saved_tensors
        grad_student = None
        if grad_buf is not None and ctx.needs_input_grad[0]:
            # in place: the buffer is used once (no double backward), and a second [tokens, vocab] tensor is avoided
            grad_student = grad_buf.mul_(grad_total.to(grad_buf.dtype))
        return grad_student, None, None, None, None, None, None, None, None, None


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    kind: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    targets: torch.Tensor | None = None,
    ce_weight: float = 0.0,
    chunk_size: int | None = None,
    vocab_size: int | None = None,
) -> DistillationLossOutput:
    """Distillation loss summed over the counted tokens (the trainer divides by the token count).

    Args:
        student_logits: ``[..., V_s]`` logits, any float dtype (math is fp32); the only input that gets a gradient.
        teacher_logits: ``[..., V_t]`` logits with the same leading shape (treated as constants).
        mask: ``[...]`` bool, ``True`` where the token counts (``None``: all count).
        kind: ``"forward_kl"`` (default), ``"reverse_kl"`` or ``"jsd"`` (generalized JSD with ``beta``).
        temperature: softmax temperature ``T`` of both sides; the divergence is multiplied by ``T**2``.
        targets: ``[...]`` next-token ids for the student's cross-entropy (at ``T = 1``); ``None`` skips it.
        ce_weight: weight of the cross-entropy in ``loss``.
        chunk_size: counted tokens per chunk (default: about 4M logits per chunk).
        vocab_size: compare only the first ``vocab_size`` entries (a shared vocabulary whose other rows are padding);
            ``None`` requires ``V_s == V_t``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}; must be > 0")
    if kind not in KD_LOSSES:
        raise ValueError(f"kd_loss={kind!r} is not supported; choose one of {', '.join(KD_LOSSES)}")
    if student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same leading (token) shape")
    v_s, v_t = student_logits.shape[-1], teacher_logits.shape[-1]
    if vocab_size is None:
        if v_s != v_t:
            raise ValueError(f"student vocabulary ({v_s}) and teacher vocabulary ({v_t}) differ; pass vocab_size= "
                             "the shared size to compare only the shared rows")
        vocab_size = v_s
    elif not 0 < vocab_size <= min(v_s, v_t):
        raise ValueError(f"vocab_size={vocab_size} must be in [1, min({v_s}, {v_t})]")
    student = student_logits.reshape(-1, v_s)
    teacher = teacher_logits.reshape(-1, v_t).detach()
    if mask is None:
        rows = torch.arange(student.shape[0], device=student.device)
    else:
        if mask.shape != student_logits.shape[:-1]:
            raise ValueError(f"mask {tuple(mask.shape)} must match the logits' leading shape "
                             f"{tuple(student_logits.shape[:-1])}")
        rows = mask.reshape(-1).nonzero().squeeze(-1).to(student.device)
    tgt = None
    if targets is not None:
        if targets.shape != student_logits.shape[:-1]:
            raise ValueError(f"targets {tuple(targets.shape)} must match the logits' leading shape "
                             f"{tuple(student_logits.shape[:-1])}")
        tgt = targets.reshape(-1).to(student.device).index_select(0, rows)
        if tgt.numel() and (int(tgt.min()) < 0 or int(tgt.max()) >= vocab_size):
            raise ValueError(f"targets must be token ids in [0, {vocab_size}) at counted positions "
                             f"(got {int(tgt.min())}..{int(tgt.max())}); mask out ignored positions")
    if kind == "forward_kl" and vocab_size == v_s == v_t and _kernel_applies(student):
        return _kernel_forward_kl(student, teacher, mask, temperature, targets, ce_weight)
    chunk = chunk_size or default_chunk_size(vocab_size)
    if chunk < 1:
        raise ValueError(f"chunk_size={chunk_size}; must be >= 1")
    total, kd, ce = _ChunkedDistillation.apply(student, teacher, rows, tgt, kind, float(temperature), float(beta),
                                               float(ce_weight), int(chunk), int(vocab_size))
    return DistillationLossOutput(total, kd, ce, int(rows.numel()))


# --- the fused kernels of hf_minitron.kernels.topk_kl: full-vocabulary forward KL on Triton, top-k KL from a cache ---

def _kernel_applies(student: torch.Tensor) -> bool:
    """Full-vocabulary forward KL runs on the Triton kernel where Triton runs (CUDA, or the interpreter in tests)."""
    from ..kernels._triton import use_triton

    return use_triton(student)


def _cross_entropy_sum(student_logits, targets, mask, with_grad: bool):
    """Cross-entropy at T=1 summed over counted tokens: the top-k KL with k=1 and tail='renormalize'."""
    from ..kernels.topk_kl import topk_kl_loss

    ids = targets.clamp(min=0).unsqueeze(-1)
    logits = student_logits if with_grad else student_logits.detach()
    return topk_kl_loss(logits, ids, torch.zeros(ids.shape, device=ids.device), tail="renormalize", valid=mask,
                        num_items=1, inplace=False)


def _finish(kd, ce, mask, targets, ce_weight, n_tokens) -> DistillationLossOutput:
    zero = torch.zeros((), dtype=torch.float32, device=kd.device)
    if targets is None:
        return DistillationLossOutput(kd, kd.detach().float(), zero, n_tokens)
    total = kd + ce_weight * ce if ce_weight != 0.0 else kd
    return DistillationLossOutput(total, kd.detach().float(), ce.detach().float(), n_tokens)


def _kernel_forward_kl(student, teacher, mask, temperature, targets, ce_weight) -> DistillationLossOutput:
    from ..kernels.topk_kl import forward_kl_loss

    valid = None if mask is None else mask.reshape(-1)
    n_tokens = student.shape[0] if valid is None else int(valid.sum())
    tgt = None if targets is None else targets.reshape(-1)
    ce = None if tgt is None else _cross_entropy_sum(student, tgt, valid, with_grad=ce_weight != 0.0)
    kd = forward_kl_loss(student, teacher, temperature=temperature, valid=valid, num_items=1, inplace=False)
    return _finish(kd, ce, valid, tgt, ce_weight, n_tokens)


def topk_distillation_loss(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_tail_logmass: torch.Tensor | None,
    mask: torch.Tensor | None = None,
    *,
    tail: str = "bucket",
    temperature: float = 1.0,
    cache_temperature: float = 1.0,
    targets: torch.Tensor | None = None,
    ce_weight: float = 0.0,
) -> DistillationLossOutput:
    """``kd_loss="topk_kl"``: top-k forward KL against cached teacher statistics (``hf_minitron.teacher_cache``),
    summed over the counted tokens, through the fused kernel (``hf_minitron.kernels.topk_kl``; see there for the
    ``tail`` choices and their bias). The student logits are consumed (overwritten with their gradient).

    ``teacher_ids``/``teacher_logprobs`` ``[..., k]``, ``teacher_tail_logmass [...]``; the log-probs were stored at
    ``cache_temperature`` (a different ``temperature`` is exact for ``tail="renormalize"``, refused otherwise).
    """
    from ..kernels.topk_kl import retemper_teacher_logprobs, topk_kl_loss

    dev = student_logits.device
    logw = retemper_teacher_logprobs(teacher_logprobs.to(dev), cache_temperature=cache_temperature,
                                     temperature=temperature, tail=tail)
    valid = None if mask is None else mask.to(dev)
    n_tokens = student_logits[..., 0].numel() if valid is None else int(valid.sum())
    ce = None
    if targets is not None:  # before the KL: that call overwrites the logits with their gradient
        ce = _cross_entropy_sum(student_logits, targets.to(dev), valid, with_grad=ce_weight != 0.0)
    log_tail = None if teacher_tail_logmass is None or tail != "bucket" else teacher_tail_logmass.to(dev)
    kd = topk_kl_loss(student_logits, teacher_ids.to(dev), logw, log_tail, tail=tail, temperature=temperature,
                      valid=valid, num_items=1, inplace=True)
    return _finish(kd, ce, valid, targets, ce_weight, n_tokens)
