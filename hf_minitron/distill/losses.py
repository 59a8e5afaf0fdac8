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
import threading
from typing import NamedTuple

import torch

from ..kernels.topk_kl import KD_CHUNK_LOGITS

KD_LOSSES = ("forward_kl", "reverse_kl", "jsd")
TOPK_KD_LOSS = "topk_kl"  # top-k KL against an offline teacher cache: topk_distillation_loss below


class DistillationLossOutput(NamedTuple):
    """Sums over the counted tokens. ``loss = kd + ce_weight * ce`` carries the gradient; ``kd`` and ``ce`` are
    detached fp32 scalars for logging (``ce`` is 0 when no targets were given); ``num_tokens`` counts the tokens."""

    loss: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor
    num_tokens: int


def default_chunk_size(vocab_size: int) -> int:
    """Tokens per chunk so that one chunk of logits holds at most ``KD_CHUNK_LOGITS`` values (at least one token)."""
    return max(1, KD_CHUNK_LOGITS // max(1, vocab_size))


def divergence_rows(student: torch.Tensor, teacher: torch.Tensor, *, kind: str, temperature: float = 1.0,
                    beta: float = 0.5, grad_out: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                    ce_weight: float = 0.0, workspace: tuple[torch.Tensor, ...] | None = None):
    """Per-token losses of one chunk (fp32 math) and, when ``grad_out`` is given, their gradient written into it.

    ``student``, ``teacher``: ``[n, V]`` logits (any float dtype; upcast here). ``grad_out``: ``[n, V]`` fp32 buffer
    that receives d(sum of kd rows + ce_weight * sum of ce rows)/d(student). ``targets``: ``[n]`` ids for the
    student's cross-entropy at ``T = 1``. ``workspace``: three ``[n, V]`` fp32 buffers the log-probabilities are
    written into (``None``: allocated here). Returns ``(kd_rows [n], ce_rows [n] or None)``; ``kd_rows`` include the
    ``T**2`` factor.
    """
    inv_t = 1.0 / temperature
    if workspace is None:
        workspace = tuple(torch.empty(student.shape, dtype=torch.float32, device=student.device) for _ in range(3))
    log_q = _log_softmax_into(student, inv_t, workspace[0])
    log_p = _log_softmax_into(teacher, inv_t, workspace[1])
    ce_rows = None
    if targets is not None:
        log_q1 = log_q if temperature == 1.0 else torch.log_softmax(student.float(), dim=-1)
        ce_rows = -log_q1.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    want_grad = grad_out is not None
    if kind == "forward_kl":
        p = torch.exp(log_p, out=workspace[2])
        diff = log_p.sub_(log_q)  # log p - log q, in log_p's memory
        kd_rows = _rowdot(p, diff)
        if not torch.isfinite(kd_rows).all():  # -inf teacher logits: p log p is 0 where p is 0
            kd_rows = torch.where(p > 0, p * diff, 0.0).sum(-1)
        del diff
        if want_grad:
            torch.exp(log_q, out=grad_out)  # grad_out is fp32 (the caller upcasts into the real buffer)
            grad_out.sub_(p)  # q - p
    elif kind == "reverse_kl":
        q = log_q.exp()
        diff = log_q.sub_(log_p)  # log q - log p, in log_q's memory
        kd_rows = torch.where(q > 0, q * diff, 0.0).sum(-1)
        if want_grad:
            diff.sub_(kd_rows.unsqueeze(-1)).mul_(q)  # q (log q - log p - KL)
            grad_out.copy_(torch.where(q > 0, diff, 0.0))
    elif kind == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd needs 0 < beta < 1, got beta={beta}; use forward_kl (beta=0) or reverse_kl (beta=1)")
        p, q = log_p.exp(), log_q.exp()
        log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))
        p_rows = torch.where(p > 0, p * log_p.sub_(log_m), 0.0).sum(-1)
        del p
        q_diff = log_q.sub_(log_m)  # log q - log m
        del log_m
        q_rows = torch.where(q > 0, q * q_diff, 0.0).sum(-1)
        kd_rows = beta * p_rows + (1.0 - beta) * q_rows
        if want_grad:
            # d/dq_j = (1 - beta) (log q_j - log m_j); through the softmax: q_j (g_j - sum_k q_k g_k)
            q_diff.sub_(q_rows.unsqueeze(-1)).mul_(q).mul_(1.0 - beta)
            grad_out.copy_(torch.where(q > 0, q_diff, 0.0))
    else:
        raise ValueError(f"kd_loss={kind!r} is not supported; choose one of {', '.join(KD_LOSSES)}")
    scale = temperature * temperature
    if scale != 1.0:
        kd_rows = kd_rows * scale
    if want_grad:
        if scale * inv_t != 1.0:  # d/d(student) = d/d(student / T) / T, times the T**2 loss scale
            grad_out.mul_(scale * inv_t)
        if ce_rows is not None and ce_weight != 0.0:
            soft = torch.softmax(student.float(), dim=-1)
            soft.scatter_add_(-1, targets.unsqueeze(-1), torch.full((soft.shape[0], 1), -1.0, device=soft.device))
            grad_out.add_(soft, alpha=ce_weight)
    return kd_rows, ce_rows


def _log_softmax_into(logits: torch.Tensor, inv_t: float, out: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits * inv_t)`` in fp32, written into ``out`` (no other ``[n, V]`` allocation)."""
    if logits.dtype != torch.float32 or inv_t != 1.0:
        out.copy_(logits)
        if inv_t != 1.0:
            out.mul_(inv_t)
        logits = out
    return torch.log_softmax(logits, dim=-1, out=out)


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(-1)`` for ``[n, V]`` tensors."""
    return torch.linalg.vecdot(a, b, dim=-1)


def _chunk_sums(student, teacher, grad_buf, row_mask, targets, a, b, kind, temperature, beta, ce_weight, vocab,
                workspace):
    """Loss sums (float64) of rows ``[a, b)``; writes their gradient into ``grad_buf[a:b]`` when it is given.
    ``workspace``: three ``[chunk, vocab]`` fp32 buffers reused by every chunk of one worker."""
    keep = None if row_mask is None else row_mask[a:b]
    partial = keep is not None and not bool(keep.all())
    if partial and not bool(keep.any()):
        if grad_buf is not None:
            grad_buf[a:b] = 0
        return 0.0, 0.0
    direct = grad_buf is not None and vocab == grad_buf.shape[1] and grad_buf.dtype == torch.float32
    g = None
    if grad_buf is not None:
        g = grad_buf[a:b] if direct else torch.empty(b - a, vocab, dtype=torch.float32, device=student.device)
    tgt = None if targets is None else targets[a:b].clamp(min=0)
    kd_rows, ce_rows = divergence_rows(student[a:b, :vocab], teacher[a:b, :vocab], kind=kind, temperature=temperature,
                                       beta=beta, grad_out=g, targets=tgt, ce_weight=ce_weight,
                                       workspace=tuple(w[: b - a] for w in workspace))
    if partial:
        kd_rows = torch.where(keep, kd_rows, 0.0)
        ce_rows = None if ce_rows is None else torch.where(keep, ce_rows, 0.0)
        if g is not None:
            g[(~keep).nonzero().squeeze(-1)] = 0
    if grad_buf is not None and not direct:
        grad_buf[a:b, :vocab] = g
    kd = kd_rows.sum(dtype=torch.float64)
    ce = 0.0 if ce_rows is None else ce_rows.sum(dtype=torch.float64)
    return kd, ce


def _single_threaded_worker():
    torch.set_num_threads(1)


class _ChunkedDistillation(torch.autograd.Function):
    """Sum over counted rows of ``T**2 * divergence + ce_weight * cross_entropy``; gradient computed chunk by chunk
    in the forward pass and stored once, in the student's dtype.

    Chunks are contiguous row ranges (views, no gathers); a range with uncounted rows computes them too and drops
    them (zero loss, zero gradient), a range with none counted is skipped. On CPU the chunks are spread over one
    single-threaded worker per torch thread (cache-sized work per core, no per-op thread synchronisation).
    """

    @staticmethod
    def forward(ctx, student, teacher, row_mask, targets, kind, temperature, beta, ce_weight, chunk_size, vocab):
        need_grad = ctx.needs_input_grad[0]
        n_rows, width = student.shape
        grad_buf = torch.empty_like(student) if need_grad else None
        if need_grad and vocab < width:
            grad_buf[:, vocab:] = 0
        ranges = [(a, min(a + chunk_size, n_rows)) for a in range(0, n_rows, chunk_size)]
        args = (kind, temperature, beta, ce_weight, vocab)

        local = threading.local()  # one workspace per worker thread, allocated once: no per-chunk allocations

        def run(bounds):
            with torch.no_grad():  # grad mode is per thread: workers must not record the chunk math
                if not hasattr(local, "workspace"):
                    local.workspace = tuple(torch.empty(min(chunk_size, n_rows), vocab, dtype=torch.float32,
                                                        device=student.device) for _ in range(3))
                return _chunk_sums(student, teacher, grad_buf, row_mask, targets, *bounds, *args, local.workspace)

        threads = torch.get_num_threads()
        if student.device.type == "cpu" and threads > 1 and len(ranges) > 1:
            from concurrent.futures import ThreadPoolExecutor

            try:
                with ThreadPoolExecutor(max_workers=threads, initializer=_single_threaded_worker) as pool:
                    sums = list(pool.map(run, ranges))
            finally:
                torch.set_num_threads(threads)
        else:
            sums = [run(bounds) for bounds in ranges]
        kd = torch.as_tensor(sum(k for k, _ in sums), dtype=torch.float64, device=student.device).float()
        ce = torch.as_tensor(sum(c for _, c in sums), dtype=torch.float64, device=student.device).float()
        # kept as an attribute, not a saved tensor, so backward can hand the buffer on without a copy
        ctx.grad_buf = grad_buf
        total = kd + ce_weight * ce if targets is not None else kd.clone()
        ctx.mark_non_differentiable(kd, ce)
        return total, kd, ce

    @staticmethod
    def backward(ctx, grad_total, grad_kd, grad_ce):
        grad_buf, ctx.grad_buf = ctx.grad_buf, None
        grad_student = None
        if grad_buf is not None and ctx.needs_input_grad[0]:
            # in place, and the only reference is handed on: no second [tokens, vocab] tensor (so the graph can be
            # walked backward once, as in training)
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
        chunk_size: tokens per chunk (default: ``KD_CHUNK_LOGITS // vocab`` tokens, 4M logits per chunk).
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
    row_mask = None
    if mask is not None:
        if mask.shape != student_logits.shape[:-1]:
            raise ValueError(f"mask {tuple(mask.shape)} must match the logits' leading shape "
                             f"{tuple(student_logits.shape[:-1])}")
        row_mask = mask.reshape(-1).to(device=student.device, dtype=torch.bool)
    num_tokens = student.shape[0] if row_mask is None else int(row_mask.sum())
    tgt = None
    if targets is not None:
        if targets.shape != student_logits.shape[:-1]:
            raise ValueError(f"targets {tuple(targets.shape)} must match the logits' leading shape "
                             f"{tuple(student_logits.shape[:-1])}")
        tgt = targets.reshape(-1).to(student.device)
        counted = tgt if row_mask is None else tgt[row_mask]
        if counted.numel() and (int(counted.min()) < 0 or int(counted.max()) >= vocab_size):
            raise ValueError(f"targets must be token ids in [0, {vocab_size}) at counted positions "
                             f"(got {int(counted.min())}..{int(counted.max())}); mask out ignored positions")
    if kind == "forward_kl" and vocab_size == v_s == v_t and _kernel_applies(student):
        return _kernel_forward_kl(student, teacher, mask, temperature, targets, ce_weight)
    chunk = chunk_size or default_chunk_size(vocab_size)
    if chunk < 1:
        raise ValueError(f"chunk_size={chunk_size}; must be >= 1")
    total, kd, ce = _ChunkedDistillation.apply(student, teacher, row_mask, tgt, kind, float(temperature), float(beta),
                                               float(ce_weight), int(chunk), int(vocab_size))
    return DistillationLossOutput(total, kd, ce, num_tokens)


# --- the fused kernel of hf_minitron.kernels.topk_kl: full-vocabulary forward KL where Triton runs ------------------

def _kernel_applies(student: torch.Tensor) -> bool:
    """Full-vocabulary forward KL runs on the Triton kernel where Triton runs (CUDA, or the interpreter in tests)."""
    from ..kernels._triton import use_triton

    return use_triton(student)


def _kernel_forward_kl(student, teacher, mask, temperature, targets, ce_weight) -> DistillationLossOutput:
    from ..kernels import topk_kl

    return DistillationLossOutput(*topk_kl.kl_and_cross_entropy_sums(
        student, teacher_logits=teacher, temperature=temperature, valid=None if mask is None else mask.reshape(-1),
        targets=None if targets is None else targets.reshape(-1), ce_weight=ce_weight))


# --- top-k KL against an offline teacher cache (kd_loss="topk_kl") ---------------------------------------------------

def topk_distillation_loss(student_logits, teacher_ids, teacher_logprobs, teacher_tail_logmass, mask=None, *,
                           tail: str = "bucket", temperature: float = 1.0, cache_temperature: float = 1.0,
                           targets=None, ce_weight: float = 0.0) -> DistillationLossOutput:
    """``kd_loss="topk_kl"``: the top-k KL against cached teacher statistics (plus ``ce_weight`` x the student's
    cross-entropy on ``targets``), summed over the counted tokens, through the fused kernel
    (``hf_minitron.kernels.topk_kl``; see there for the ``tail`` choices and their bias). The student logits are
    consumed (overwritten with their gradient) when they require grad.

    ``teacher_ids`` / ``teacher_logprobs`` ``[..., k]``, ``teacher_tail_logmass [...]``: a batch of a
    ``TeacherCache``; the log-probs were stored at ``cache_temperature`` (another ``temperature`` is exact for
    ``tail="renormalize"``, refused otherwise).
    """
    from ..kernels.topk_kl import kl_and_cross_entropy_sums, retemper_teacher_logprobs

    dev = student_logits.device
    logw = retemper_teacher_logprobs(teacher_logprobs.to(dev), cache_temperature=cache_temperature,
                                     temperature=temperature, tail=tail)
    log_tail = None if teacher_tail_logmass is None or tail != "bucket" else teacher_tail_logmass.to(dev)
    return DistillationLossOutput(*kl_and_cross_entropy_sums(
        student_logits, teacher_ids=teacher_ids.to(dev), teacher_logw=logw, teacher_log_tail=log_tail, tail=tail,
        temperature=temperature, valid=None if mask is None else mask.to(dev), targets=targets,
        ce_weight=ce_weight, inplace=True))
