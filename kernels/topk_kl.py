"""Fused top-k (and full-vocabulary) forward KL between a teacher and the student's logits.

Three parts side by side, Liger-Kernel style:

* **reference** — :func:`topk_kl_reference`, :func:`forward_kl_reference`: plain PyTorch (``log_softmax`` of the whole
  ``[tokens, vocab]`` student logits), differentiable by autograd. Ground truth for the tests.
* **Triton kernels** — ``_topk_kl_kernel`` / ``_full_kl_kernel``: one program per token row, an online log-sum-exp over
  the vocabulary, the loss of the row, and the gradient with respect to the logits written *in place of the logits*
  during the forward pass (no materialised log-softmax, no ``[tokens, vocab]`` loss tensor). Native-dtype loads,
  fp32 math and accumulation.
* **dispatcher** — :func:`topk_kl_loss`, :func:`forward_kl_loss` (logits form) and :func:`fused_linear_topk_kl_loss`,
  :func:`fused_linear_forward_kl_loss` (hidden states + LM-head weight, processed in token chunks so the
  ``[tokens, vocab]`` logits never exist all at once). Triton on CUDA (or on CPU under ``TRITON_INTERPRET=1``), the
  chunked PyTorch path with the same semantics everywhere else.

Losses (per token row, summed over rows whose ``valid`` flag is set, divided by ``num_items``, times ``T**2``)
----------------------------------------------------------------------------------------------------------------
Student ``q = softmax(z / T)`` over the full vocabulary. The teacher comes as ``k`` distinct ids per row with
log-weights ``log_w`` (and, for ``bucket``, the log of the teacher's remaining mass ``log_tail``):

* ``tail="bucket"`` (default): ``KL(p || q)`` over ``k + 1`` classes — the top-k ids and one "everything else" class
  whose teacher mass is ``exp(log_tail)`` and student mass is the student's probability outside the top-k. This is the
  exact KL between the two coarsened distributions, a lower bound of the full KL (data-processing inequality): it is
  blind to how the student spreads its tail mass, nothing else.
* ``tail="renormalize"``: the teacher renormalised over its top-k (``softmax(log_w)``), the student over the full
  vocabulary: ``sum_i p~_i (log p~_i - log q_i)``. The target puts zero mass outside the top-k, so the student is
  pushed to over-confidence; with ``k = 1`` it is cross-entropy on the teacher's top token.
* ``tail="sampled"``: ids drawn from the teacher with importance weights ``w`` (``E[w_id] = p_id``, e.g. counts / draws
  when the proposal is the teacher itself, or the teacher's top ids with their exact ``p`` plus draws from the rest
  weighted by its mass, as ``hf_minitron.teacher_cache`` stores them), loss ``sum_i w_i (log w_i - log q_i)``. Its
  gradient ``sum(w) q - w`` is an unbiased estimate of the full forward-KL gradient ``q - p`` (as in random-sampling
  KD); the loss *value* is not an unbiased estimate of the KL (the sample's entropy term differs), and the variance
  falls as ``k`` grows.
  Ids must be distinct: merge repeated draws into one id with the summed weight and pad with unused ids of weight 0
  (``log_w = -inf``).

``forward_kl_loss`` is the full-vocabulary ``KL(softmax(t / T) || softmax(z / T))`` against online teacher logits.

Numerics: the student's tail mass is never formed as ``1 - sum(q_topk)`` (which cancels, and in bf16 gives negative
KL and NaN gradients). The kernel writes ``-inf`` over the top-k entries of the row it owns, so the online
log-sum-exp sweep yields the log-mass of the tail directly, ``lse_tail``; the full normaliser is
``lse = logaddexp(lse_tail, lse_topk)`` (a ``log1p(exp(-|d|))`` of the difference) and ``log q_tail = lse_tail - lse``
exactly, with no ``1 - eps`` clamp anywhere.

Temperature: cached teacher log-probs are at the cache's temperature. :func:`retemper_teacher_logprobs` changes it
only where that is exact — ``renormalize`` (``p_i^(T_cache / T)`` renormalised over the stored ids is exactly the
tempered teacher renormalised over them) — and refuses for ``bucket`` (the tempered tail mass depends on the unstored
tail) and ``sampled`` (the draws came from the cache-temperature teacher).

Gradient: computed in the forward pass (``T * (P q - p)`` per row, ``P`` the total target mass) and scaled by the
``backward`` grad; a second backward through the same graph is not supported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ._triton import triton_available, use_triton

TAILS = ("bucket", "renormalize", "sampled")

# The one chunk budget of every KD path (this kernel's chunked paths and ``hf_minitron.distill.losses``): at most this
# many logits (tokens x vocab) exist per chunk, i.e. 16 MiB per fp32 temporary.
KD_CHUNK_LOGITS = 1 << 22
_MODE = {"bucket": 0, "renormalize": 1, "sampled": 2}
_NEG_INF = float("-inf")


# ----------------------------------------------------------------------------------------------------------------------
# Reference (plain PyTorch, whole [tokens, vocab] tensors; autograd gives the gradient)
# ----------------------------------------------------------------------------------------------------------------------
def _normaliser(valid: torch.Tensor, num_items) -> float:
    if num_items is None:
        return float(max(int(valid.sum()), 1))
    n = float(num_items.item() if isinstance(num_items, torch.Tensor) else num_items)
    if not n > 0:
        raise ValueError(f"num_items={n}; it must be positive (the number of tokens the loss is averaged over)")
    return n


def topk_kl_reference(student_logits, teacher_ids, teacher_logw, teacher_log_tail=None, *, tail="bucket",
                      temperature=1.0, valid=None, num_items=None):
    """Top-k forward KL, the definition in the module docstring, written plainly.

    Shapes: ``student_logits [..., V]``, ``teacher_ids [..., k]``, ``teacher_logw [..., k]`` (natural-log weights),
    ``teacher_log_tail [...]`` (bucket only), ``valid [...]`` bool. Returns the scalar loss (fp32 or fp64).
    """
    _check_tail(tail, teacher_log_tail)
    ct = torch.promote_types(student_logits.dtype, torch.float32)
    V = student_logits.shape[-1]
    z = student_logits.reshape(-1, V).to(ct) / temperature
    ids = teacher_ids.reshape(z.shape[0], -1).long()
    logw = teacher_logw.reshape(z.shape[0], -1).to(ct)
    valid = torch.ones(z.shape[0], dtype=torch.bool) if valid is None else valid.reshape(-1).cpu()
    ids = torch.where(valid.to(ids.device)[:, None], ids, torch.arange(ids.shape[1], device=ids.device) % V)
    logq = torch.log_softmax(z, dim=-1)
    logq_k = logq.gather(-1, ids)
    logp = torch.log_softmax(logw, dim=-1) if tail == "renormalize" else logw
    p = logp.exp()
    rows = torch.where(p > 0, p * (logp - logq_k), torch.zeros_like(p)).sum(-1)
    if tail == "bucket":
        log_tail = teacher_log_tail.reshape(-1).to(ct)
        logq_tail = torch.logsumexp(logq.scatter(-1, ids, _NEG_INF), dim=-1)
        p_tail = log_tail.exp()
        rows = rows + torch.where(p_tail > 0, p_tail * (log_tail - logq_tail), torch.zeros_like(p_tail))
    rows = torch.where(valid.to(rows.device), rows, torch.zeros_like(rows))
    return rows.sum() * (temperature ** 2) / _normaliser(valid, num_items)


def forward_kl_reference(student_logits, teacher_logits, *, temperature=1.0, valid=None, num_items=None):
    """Full-vocabulary ``T^2 KL(softmax(t/T) || softmax(z/T))`` summed over valid rows / ``num_items``."""
    ct = torch.promote_types(student_logits.dtype, torch.float32)
    V = student_logits.shape[-1]
    logq = torch.log_softmax(student_logits.reshape(-1, V).to(ct) / temperature, dim=-1)
    logp = torch.log_softmax(teacher_logits.reshape(-1, V).to(ct) / temperature, dim=-1)
    rows = torch.nn.functional.kl_div(logq, logp, log_target=True, reduction="none").sum(-1)
    valid = torch.ones(rows.shape[0], dtype=torch.bool) if valid is None else valid.reshape(-1).cpu()
    rows = torch.where(valid.to(rows.device), rows, torch.zeros_like(rows))
    return rows.sum() * (temperature ** 2) / _normaliser(valid, num_items)


def retemper_teacher_logprobs(logprobs, *, cache_temperature: float, temperature: float, tail: str):
    """Teacher log-weights for the loss at ``temperature`` from ones stored at ``cache_temperature``.

    Exact for ``renormalize`` (returns ``logprobs * T_cache / T``; the loss renormalises over the stored ids); refused
    with a ``ValueError`` for ``bucket`` and ``sampled``, where the stored values cannot give the tempered target.
    """
    if float(cache_temperature) == float(temperature):
        return logprobs
    if tail != "renormalize":
        raise ValueError(
            f"the teacher cache was written at temperature {cache_temperature} but the loss asks for temperature="
            f"{temperature} with tail={tail!r}: the tempered teacher's tail mass ({'bucket' if tail == 'bucket' else 'draw distribution'})"
            f" is not in the cache. Rebuild the cache with `cache-teacher --temperature {temperature}`, set "
            f"temperature={cache_temperature}, or use tail='renormalize' (exact under a temperature change)")
    return logprobs.float() * (float(cache_temperature) / float(temperature))


def _check_tail(tail, log_tail):
    if tail not in TAILS:
        raise ValueError(f"tail={tail!r}; choose one of {TAILS}")
    if tail == "bucket" and log_tail is None:
        raise ValueError("tail='bucket' needs teacher_log_tail (log of the teacher's mass outside the top-k ids); "
                         "pass it, or use tail='renormalize'")


# ----------------------------------------------------------------------------------------------------------------------
# Triton kernels (defined only where triton is importable; TRITON_INTERPRET is read when they are decorated, i.e. at
# import of this module)
# ----------------------------------------------------------------------------------------------------------------------
if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _online_lse(m, s, x):
        """Fold a block ``x`` (fp32, may hold -inf) into the running max ``m`` and sum ``s`` of ``exp(x - m)``."""
        m_new = tl.maximum(m, tl.max(x, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe), axis=0)
        return m_new, s

    @triton.jit
    def _logaddexp(a, b):
        mx = tl.maximum(a, b)
        mn = tl.minimum(a, b)
        return tl.where(mx == float("-inf"), mx, mx + tl.log(1.0 + tl.exp(mn - mx)))

    @triton.jit
    def _load_topk(lw_ptr, zk_ptr, offs, mask, inv_T):
        """Teacher log-weights and tempered student logits at the top-k ids (fp32; -inf where masked)."""
        lw = tl.load(lw_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)
        uk = tl.load(zk_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32) * inv_T
        return lw, uk

    @triton.jit
    def _topk_kl_kernel(
        z_ptr, stride_z,          # [N, V] student logits, native dtype; the row becomes its gradient (COMPUTE_GRAD)
        zk_ptr, ids_ptr, lw_ptr, stride_k,  # [N, K] student logits at the ids (fp32), ids, teacher log-weights
        tail_ptr,                 # [N] fp32 log of the teacher's tail mass (MODE 0)
        rows_ptr,                 # [R] int64 rows to process (the valid ones)
        loss_ptr,                 # [N] fp32 per-row loss (times T^2)
        V, K, inv_T, T2, grad_scale,
        MODE: tl.constexpr, COMPUTE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        row = tl.load(rows_ptr + tl.program_id(0)).to(tl.int64)
        z_row = z_ptr + row * stride_z
        k_off = row * stride_k
        # pass A over the K ids: log-sum-exps of the teacher weights and of the student's top-k logits; mask the
        # top-k entries of the row to -inf so that the vocabulary sweep sums the tail only.
        m_w = float("-inf")
        s_w = 0.0
        m_k = float("-inf")
        s_k = 0.0
        for off in range(0, K, BLOCK_K):
            kk = off + tl.arange(0, BLOCK_K)
            km = kk < K
            lw, uk = _load_topk(lw_ptr, zk_ptr, k_off + kk, km, inv_T)
            ids = tl.load(ids_ptr + k_off + kk, mask=km, other=0).to(tl.int64)
            m_w, s_w = _online_lse(m_w, s_w, lw)
            m_k, s_k = _online_lse(m_k, s_k, uk)
            tl.store(z_row + ids, tl.full([BLOCK_K], float("-inf"), tl.float32).to(z_ptr.dtype.element_ty), mask=km)
        lse_w = m_w + tl.log(s_w)
        lse_k = m_k + tl.log(s_k)
        tl.debug_barrier()
        # sweep 1: online log-sum-exp of the tail (top-k entries are -inf now)
        m = float("-inf")
        s = 0.0
        for off in range(0, V, BLOCK_V):
            cols = off + tl.arange(0, BLOCK_V)
            u = tl.load(z_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32) * inv_T
            m, s = _online_lse(m, s, u)
        lse_tail = m + tl.log(s)
        lse = _logaddexp(lse_tail, lse_k)
        # pass B over the K ids: the loss terms and the total target mass P
        P = 0.0
        cross = 0.0
        for off in range(0, K, BLOCK_K):
            kk = off + tl.arange(0, BLOCK_K)
            km = kk < K
            lw, uk = _load_topk(lw_ptr, zk_ptr, k_off + kk, km, inv_T)
            if MODE == 1:
                logp = lw - lse_w
            else:
                logp = lw
            p = tl.exp(logp)
            P += tl.sum(p, axis=0)
            cross += tl.sum(tl.where(p > 0, p * (logp - (uk - lse)), 0.0), axis=0)
        ratio = 0.0
        if MODE == 0:
            log_pt = tl.load(tail_ptr + row).to(tl.float32)
            log_qt = lse_tail - lse
            has_tail = log_pt > float("-inf")
            p_t = tl.exp(log_pt)
            P += p_t
            cross += tl.where(has_tail, p_t * (log_pt - log_qt), 0.0)
            ratio = tl.where(has_tail, tl.exp(log_pt - log_qt), 0.0)
        tl.store(loss_ptr + row, cross * T2)
        if COMPUTE_GRAD:
            gs = grad_scale  # = T / num_items
            coef = (P - ratio) * gs
            # sweep 2: gradient outside the top-k (the -inf entries give exactly 0 and are fixed below)
            for off in range(0, V, BLOCK_V):
                cols = off + tl.arange(0, BLOCK_V)
                cm = cols < V
                u = tl.load(z_row + cols, mask=cm, other=float("-inf")).to(tl.float32) * inv_T
                g = tl.exp(u - lse) * coef
                tl.store(z_row + cols, g.to(z_ptr.dtype.element_ty), mask=cm)
            tl.debug_barrier()
            # pass C: gradient at the top-k ids, P q_i - p_i
            for off in range(0, K, BLOCK_K):
                kk = off + tl.arange(0, BLOCK_K)
                km = kk < K
                lw, uk = _load_topk(lw_ptr, zk_ptr, k_off + kk, km, inv_T)
                ids = tl.load(ids_ptr + k_off + kk, mask=km, other=0).to(tl.int64)
                if MODE == 1:
                    p = tl.exp(lw - lse_w)
                else:
                    p = tl.exp(lw)
                g = (P * tl.exp(uk - lse) - p) * gs
                tl.store(z_row + ids, g.to(z_ptr.dtype.element_ty), mask=km)

    @triton.jit
    def _full_kl_kernel(
        z_ptr, stride_z,          # [N, V] student logits, native dtype; the row becomes its gradient (COMPUTE_GRAD)
        t_ptr, stride_t,          # [N, V] teacher logits, native dtype
        rows_ptr, loss_ptr, V, inv_T, T2, grad_scale,
        COMPUTE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr,
    ):
        row = tl.load(rows_ptr + tl.program_id(0)).to(tl.int64)
        z_row = z_ptr + row * stride_z
        t_row = t_ptr + row * stride_t
        # sweep 1: online log-sum-exps of both rows and A = sum exp(ut - m_t) (ut - uz), rescaled with m_t
        m_z = float("-inf")
        s_z = 0.0
        m_t = float("-inf")
        s_t = 0.0
        a = 0.0
        for off in range(0, V, BLOCK_V):
            cols = off + tl.arange(0, BLOCK_V)
            cm = cols < V
            uz = tl.load(z_row + cols, mask=cm, other=float("-inf")).to(tl.float32) * inv_T
            ut = tl.load(t_row + cols, mask=cm, other=float("-inf")).to(tl.float32) * inv_T
            m_z, s_z = _online_lse(m_z, s_z, uz)
            m_new = tl.maximum(m_t, tl.max(ut, axis=0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_t - m_safe)
            e = tl.exp(ut - m_safe)
            s_t = s_t * alpha + tl.sum(e, axis=0)
            a = a * alpha + tl.sum(tl.where(e > 0, e * (ut - uz), 0.0), axis=0)
            m_t = m_new
        lse_z = m_z + tl.log(s_z)
        lse_t = m_t + tl.log(s_t)
        tl.store(loss_ptr + row, (a / s_t - lse_t + lse_z) * T2)
        if COMPUTE_GRAD:
            for off in range(0, V, BLOCK_V):
                cols = off + tl.arange(0, BLOCK_V)
                cm = cols < V
                uz = tl.load(z_row + cols, mask=cm, other=float("-inf")).to(tl.float32) * inv_T
                ut = tl.load(t_row + cols, mask=cm, other=float("-inf")).to(tl.float32) * inv_T
                g = (tl.exp(uz - lse_z) - tl.exp(ut - lse_t)) * grad_scale
                tl.store(z_row + cols, g.to(z_ptr.dtype.element_ty), mask=cm)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _launch_params(V: int, K: int, block_v: Optional[int], device) -> dict:
    bv = block_v or min(32768, _next_pow2(V))
    return {"BLOCK_V": bv, "BLOCK_K": min(1024, _next_pow2(K)),
            "num_warps": 32 if (device.type == "cuda" and bv >= 8192) else (8 if device.type == "cuda" else 4)}


# ----------------------------------------------------------------------------------------------------------------------
# Row-chunk workers: loss rows [C] fp32, gradient written into `buf` [C, V] (native dtype) when compute_grad
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class _Target:
    """What the student is compared with, for a chunk of rows: top-k ids + log-weights (+ log tail), or full logits."""

    tail: str = "full"                         # "bucket" | "renormalize" | "sampled" | "full"
    ids: Optional[torch.Tensor] = None         # [C, k] int32/int64, distinct per row
    logw: Optional[torch.Tensor] = None        # [C, k] natural-log weights, any float dtype
    log_tail: Optional[torch.Tensor] = None    # [C] log teacher tail mass (bucket)
    logits: Optional[torch.Tensor] = None      # [C, V] teacher logits (full)

    def rows(self, sl: slice) -> "_Target":
        cut = lambda t: None if t is None else t[sl]  # noqa: E731
        return _Target(self.tail, cut(self.ids), cut(self.logw), cut(self.log_tail), cut(self.logits))


def _rows_torch(buf, tgt: _Target, valid, T: float, grad_scale: float, compute_grad: bool) -> torch.Tensor:
    """Chunked PyTorch path: same math as the kernels, on ``[C, V]`` temporaries of the compute dtype."""
    ct = torch.promote_types(buf.dtype, torch.float32)
    in_place = compute_grad and buf.dtype == ct and buf.is_contiguous()  # buf becomes the gradient anyway: reuse it
    u = buf if in_place else buf.to(ct, copy=True)                          # [C, V]
    if T != 1.0:
        u.mul_(1.0 / T)
    if tgt.tail == "full":
        logp = torch.log_softmax(tgt.logits.to(ct) / T, dim=-1)
        lse = torch.logsumexp(u, dim=-1, keepdim=True)
        p = logp.exp()
        rows = torch.where(p > 0, p * (logp - u + lse), torch.zeros((), dtype=ct, device=u.device)).sum(-1)
        if compute_grad:
            g = u.sub_(lse).exp_().sub_(p).mul_(grad_scale)
            if not in_place:
                buf.copy_(g)
    else:
        ids = tgt.ids.long()
        logw = tgt.logw.to(ct)
        uk = u.gather(1, ids)                                                 # [C, k]
        u.scatter_(1, ids, _NEG_INF)
        # one exp pass: e = exp(u - m) in place; the tail's log-sum-exp and, later, q = e * exp(m - lse)
        m = u.amax(dim=-1, keepdim=True)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        e = u.sub_(m).exp_()
        lse_tail = m.squeeze(-1) + e.sum(-1).log()
        lse = torch.logaddexp(lse_tail, torch.logsumexp(uk, dim=-1))
        logp = torch.log_softmax(logw, dim=-1) if tgt.tail == "renormalize" else logw
        p = logp.exp()
        zero = torch.zeros((), dtype=ct, device=u.device)
        rows = torch.where(p > 0, p * (logp - uk + lse[:, None]), zero).sum(-1)
        P = p.sum(-1)
        ratio = torch.zeros_like(P)
        if tgt.tail == "bucket":
            log_pt = tgt.log_tail.to(ct)
            log_qt = lse_tail - lse
            has = log_pt > _NEG_INF
            rows = rows + torch.where(has, log_pt.exp() * (log_pt - log_qt), zero)
            ratio = torch.where(has, (log_pt - log_qt).exp(), zero)
            P = P + log_pt.exp()
        if compute_grad:
            g = e.mul_(((P - ratio) * grad_scale * (m.squeeze(-1) - lse).exp())[:, None])
            g.scatter_(1, ids, (P[:, None] * (uk - lse[:, None]).exp() - p) * grad_scale)
            if not in_place:
                buf.copy_(g)
    rows = rows * (T * T)
    if compute_grad:
        buf[~valid] = 0
    return torch.where(valid, rows, torch.zeros_like(rows))


def _rows_triton(buf, tgt: _Target, valid, T: float, grad_scale: float, compute_grad: bool,
                 block_v: Optional[int] = None) -> torch.Tensor:
    C, V = buf.shape
    if buf.stride(-1) != 1:
        raise ValueError("the Triton path needs logits contiguous in the vocabulary dimension")
    loss = torch.zeros(C, dtype=torch.float32, device=buf.device)
    rows = valid.nonzero().flatten().to(torch.int64)
    if compute_grad and rows.numel() < C:
        buf[~valid] = 0
    if rows.numel() == 0:
        return loss
    if tgt.tail == "full":
        t = tgt.logits if tgt.logits.stride(-1) == 1 else tgt.logits.contiguous()
        prm = _launch_params(V, 1, block_v, buf.device)
        _full_kl_kernel[(rows.numel(),)](buf, buf.stride(0), t, t.stride(0), rows, loss, V, 1.0 / T, T * T,
                                         grad_scale, COMPUTE_GRAD=compute_grad, BLOCK_V=prm["BLOCK_V"],
                                         num_warps=prm["num_warps"])
        return loss
    ids = tgt.ids.contiguous()
    logw = tgt.logw.contiguous()
    K = ids.shape[1]
    zk = buf.gather(1, ids.long()).float().contiguous()
    log_tail = tgt.log_tail.float().contiguous() if tgt.log_tail is not None else loss
    prm = _launch_params(V, K, block_v, buf.device)
    _topk_kl_kernel[(rows.numel(),)](buf, buf.stride(0), zk, ids, logw, K, log_tail, rows, loss, V, K, 1.0 / T,
                                     T * T, grad_scale, MODE=_MODE[tgt.tail], COMPUTE_GRAD=compute_grad,
                                     BLOCK_V=prm["BLOCK_V"], BLOCK_K=prm["BLOCK_K"], num_warps=prm["num_warps"])
    return loss


def _rows(buf, tgt, valid, T, grad_scale, compute_grad, backend, block_v=None):
    if backend == "triton":
        return _rows_triton(buf, tgt, valid, T, grad_scale, compute_grad, block_v)
    return _rows_torch(buf, tgt, valid, T, grad_scale, compute_grad)


def _pick_backend(backend: str, tensor: torch.Tensor) -> str:
    if backend == "auto":
        return "triton" if use_triton(tensor) else "torch"
    if backend not in ("triton", "torch"):
        raise ValueError(f"backend={backend!r}; choose 'auto', 'triton' or 'torch'")
    if backend == "triton" and not triton_available():
        raise RuntimeError("backend='triton' but triton is not installed; use backend='torch'")
    return backend


def default_chunk_rows(vocab_size: int, num_rows: int, budget: int = KD_CHUNK_LOGITS) -> int:
    """Token rows per chunk: a power of two with ``rows * vocab`` at most ``budget`` elements (at least 1)."""
    rows = max(1, budget // max(1, vocab_size))
    rows = 1 << (rows.bit_length() - 1)
    return max(1, min(rows, num_rows))


# ----------------------------------------------------------------------------------------------------------------------
# Autograd functions: the gradient is computed in forward; backward scales it by the incoming grad
# ----------------------------------------------------------------------------------------------------------------------
class LogitsKLFunction(torch.autograd.Function):
    """Loss over materialised logits ``[N, V]``; the gradient replaces the logits (``inplace``) or a copy of them."""

    @staticmethod
    def forward(ctx, logits, tgt, valid, T, scale, inplace, backend, chunk_rows, block_v):
        compute_grad = ctx.needs_input_grad[0]
        N = logits.shape[0]
        loss_rows = torch.zeros(N, dtype=torch.promote_types(logits.dtype, torch.float32), device=logits.device)
        if compute_grad:
            buf = logits.detach() if inplace else logits.detach().clone()
        step = N if backend == "triton" else chunk_rows
        for start in range(0, N, step):
            sl = slice(start, min(N, start + step))
            if compute_grad:
                chunk = buf[sl]
            else:  # the Triton kernel writes into the row it owns (the -inf mask of the top-k ids)
                chunk = logits.detach()[sl].clone() if backend == "triton" else logits.detach()[sl]
            loss_rows[sl] = _rows(chunk, tgt.rows(sl), valid[sl], T, T * scale, compute_grad, backend, block_v)
        if compute_grad:
            ctx.save_for_backward(buf)
        return loss_rows.sum() * scale

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        if not (grad_out.numel() == 1 and float(grad_out) == 1.0):
            grad.mul_(grad_out.to(grad.dtype))
        return grad, None, None, None, None, None, None, None, None


class FusedLinearKLFunction(torch.autograd.Function):
    """Loss from hidden states ``[N, H]`` and the LM head ``weight [V, H]`` (+ ``bias [V]``), chunk by chunk of rows.

    Per chunk: logits = ``hidden @ weight.T (+ bias)`` (soft-capped when ``softcap``), the row worker turns them into
    their gradient, which is folded into ``grad_hidden`` and the fp32-or-native ``grad_weight`` at once.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, tgt, valid, T, scale, softcap, backend, chunk_rows, block_v, teacher_head):
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        compute_grad = need_h or need_w or need_b
        N = hidden.shape[0]
        loss_rows = torch.zeros(N, dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
        h_all = hidden.detach()
        w = weight.detach()
        b = None if bias is None else bias.detach()
        grad_h = torch.empty_like(h_all) if need_h else None
        grad_w = torch.zeros_like(w) if need_w else None
        grad_b = torch.zeros_like(b) if need_b else None
        for start in range(0, N, chunk_rows):
            sl = slice(start, min(N, start + chunk_rows))
            h = h_all[sl]
            logits = h @ w.t() if b is None else torch.addmm(b, h, w.t())
            capped_tanh = None
            if softcap:
                capped_tanh = logits.div_(softcap).tanh_()
                logits = capped_tanh * softcap
            tgt_c = tgt.rows(sl)
            if teacher_head is not None:  # full-vocabulary KL against teacher hidden states + teacher head
                tgt_c = _Target("full", logits=teacher_head.logits(sl))
            loss_rows[sl] = _rows(logits, tgt_c, valid[sl], T, T * scale, compute_grad, backend, block_v)
            if not compute_grad:
                continue
            g = logits
            if capped_tanh is not None:
                g = g * (1 - capped_tanh * capped_tanh)
            if need_h:
                torch.matmul(g, w, out=grad_h[sl])
            if need_w:
                grad_w.addmm_(g.t().to(grad_w.dtype), h.to(grad_w.dtype))
            if need_b:
                grad_b.add_(g.sum(0).to(grad_b.dtype))
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        return loss_rows.sum() * scale

    @staticmethod
    def backward(ctx, grad_out):
        grads = list(ctx.saved_tensors)
        if not (grad_out.numel() == 1 and float(grad_out) == 1.0):
            grads = [None if g is None else g.mul_(grad_out.to(g.dtype)) for g in grads]
        return (*grads, None, None, None, None, None, None, None, None, None)


@dataclass
class _TeacherHead:
    """Teacher hidden states ``[N, Ht]`` + teacher LM head; gives teacher logits one chunk of rows at a time."""

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: Optional[torch.Tensor] = None
    softcap: Optional[float] = None

    @torch.no_grad()
    def logits(self, sl: slice) -> torch.Tensor:
        h = self.hidden[sl].detach()
        out = h @ self.weight.detach().t() if self.bias is None else torch.addmm(self.bias.detach(), h, self.weight.detach().t())
        if self.softcap:
            out = out.div_(self.softcap).tanh_().mul_(self.softcap)
        return out


# ----------------------------------------------------------------------------------------------------------------------
# Dispatchers (public API)
# ----------------------------------------------------------------------------------------------------------------------
def _flat_valid(valid, n: int, device) -> torch.Tensor:
    if valid is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    if valid.numel() != n:
        raise ValueError(f"valid has {valid.numel()} entries for {n} token rows; it must have the logits' leading shape")
    return valid.reshape(n).to(device=device, dtype=torch.bool)


def _topk_target(teacher_ids, teacher_logw, teacher_log_tail, tail, n: int, vocab: int, valid) -> _Target:
    _check_tail(tail, teacher_log_tail)
    k = teacher_ids.shape[-1]
    if teacher_logw.shape != teacher_ids.shape:
        raise ValueError(f"teacher_logw {tuple(teacher_logw.shape)} must have the shape of teacher_ids "
                         f"{tuple(teacher_ids.shape)}")
    if not 1 <= k <= vocab or teacher_ids.numel() != n * k:
        raise ValueError(f"teacher_ids {tuple(teacher_ids.shape)} must be [..., k] with the logits' leading shape "
                         f"and 1 <= k <= vocab ({vocab})")
    ids = teacher_ids.reshape(n, k)
    # rows that do not count may hold padding ids: give them harmless distinct ids
    ids = torch.where(valid[:, None], ids, torch.arange(k, device=ids.device, dtype=ids.dtype))
    log_tail = None if tail != "bucket" else teacher_log_tail.reshape(n)
    return _Target(tail, ids, teacher_logw.reshape(n, k), log_tail)


def topk_kl_loss(student_logits, teacher_ids, teacher_logw, teacher_log_tail=None, *, tail="bucket",
                 temperature=1.0, valid=None, num_items=None, inplace=True, backend="auto", chunk_rows=None,
                 block_v=None):
    """Top-k forward KL (see module docstring) over materialised student logits ``[..., V]``.

    ``teacher_ids``/``teacher_logw`` ``[..., k]`` (distinct ids per row), ``teacher_log_tail [...]`` (bucket),
    ``valid [...]`` bool (rows that count), ``num_items``: the divisor (default: the number of valid rows).
    ``inplace=True`` overwrites ``student_logits`` with its gradient when it requires grad (the logits are consumed);
    pass ``inplace=False`` to keep them. Returns the scalar loss (fp32).
    """
    V = student_logits.shape[-1]
    z = student_logits.reshape(-1, V)
    n = z.shape[0]
    valid = _flat_valid(valid, n, z.device)
    tgt = _topk_target(teacher_ids, teacher_logw, teacher_log_tail, tail, n, V, valid)
    backend = _pick_backend(backend, z)
    scale = 1.0 / _normaliser(valid, num_items)
    chunk_rows = chunk_rows or default_chunk_rows(V, n)
    return LogitsKLFunction.apply(z, tgt, valid, float(temperature), scale, inplace, backend, chunk_rows, block_v)


def forward_kl_loss(student_logits, teacher_logits, *, temperature=1.0, valid=None, num_items=None, inplace=True,
                    backend="auto", chunk_rows=None, block_v=None):
    """Full-vocabulary ``T^2 KL(softmax(t/T) || softmax(z/T))`` with the same kernel machinery (logits form)."""
    V = student_logits.shape[-1]
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher_logits {tuple(teacher_logits.shape)} must match student_logits "
                         f"{tuple(student_logits.shape)} (truncate a padded teacher vocabulary first)")
    z = student_logits.reshape(-1, V)
    n = z.shape[0]
    valid = _flat_valid(valid, n, z.device)
    tgt = _Target("full", logits=teacher_logits.detach().reshape(n, V))
    backend = _pick_backend(backend, z)
    scale = 1.0 / _normaliser(valid, num_items)
    chunk_rows = chunk_rows or default_chunk_rows(V, n)
    return LogitsKLFunction.apply(z, tgt, valid, float(temperature), scale, inplace, backend, chunk_rows, block_v)


def _fused_linear(hidden, weight, bias, tgt, valid, temperature, num_items, softcap, backend, chunk_rows, block_v,
                  teacher_head=None):
    H = hidden.shape[-1]
    if weight.dim() != 2 or weight.shape[1] != H:
        raise ValueError(f"weight {tuple(weight.shape)} must be [vocab, hidden={H}] (the LM head's weight)")
    h = hidden.reshape(-1, H)
    n = h.shape[0]
    V = weight.shape[0]
    backend = _pick_backend(backend, h)
    scale = 1.0 / _normaliser(valid, num_items)
    chunk_rows = chunk_rows or default_chunk_rows(V, n)
    return FusedLinearKLFunction.apply(h, weight, bias, tgt, valid, float(temperature), scale, softcap, backend,
                                       chunk_rows, block_v, teacher_head)


def fused_linear_topk_kl_loss(hidden, weight, teacher_ids, teacher_logw, teacher_log_tail=None, *, bias=None,
                              tail="bucket", temperature=1.0, valid=None, num_items=None, softcap=None,
                              backend="auto", chunk_rows=None, block_v=None):
    """Top-k forward KL from student hidden states ``[..., H]`` and LM-head ``weight [V, H]`` (``bias [V]``).

    The logits exist one chunk of ``chunk_rows`` tokens at a time (default: at most ``KD_CHUNK_LOGITS`` logits);
    ``softcap`` applies ``c * tanh(logits / c)`` as the model does. Other arguments as :func:`topk_kl_loss`.
    """
    n = hidden.numel() // hidden.shape[-1]
    valid = _flat_valid(valid, n, hidden.device)
    tgt = _topk_target(teacher_ids, teacher_logw, teacher_log_tail, tail, n, weight.shape[0], valid)
    return _fused_linear(hidden, weight, bias, tgt, valid, temperature, num_items, softcap, backend, chunk_rows,
                         block_v)


def fused_linear_forward_kl_loss(hidden, weight, teacher_hidden, teacher_weight, *, bias=None, teacher_bias=None,
                                 temperature=1.0, valid=None, num_items=None, softcap=None, teacher_softcap=None,
                                 backend="auto", chunk_rows=None, block_v=None):
    """Full-vocabulary forward KL from student and teacher hidden states and LM heads, chunk by chunk of tokens.

    Both heads must have the same vocabulary (``weight [V, H]``, ``teacher_weight [V, Ht]``); the teacher side gets no
    gradient.
    """
    if teacher_weight.shape[0] != weight.shape[0]:
        raise ValueError(f"teacher_weight has {teacher_weight.shape[0]} vocabulary rows, the student's {weight.shape[0]}"
                         "; slice the teacher head to the shared vocabulary first")
    n = hidden.numel() // hidden.shape[-1]
    if teacher_hidden.numel() // teacher_hidden.shape[-1] != n:
        raise ValueError("teacher_hidden must have the student hidden states' token count")
    valid = _flat_valid(valid, n, hidden.device)
    head = _TeacherHead(teacher_hidden.reshape(n, -1), teacher_weight, teacher_bias, teacher_softcap)
    return _fused_linear(hidden, weight, bias, _Target("full"), valid, temperature, num_items, softcap, backend,
                         chunk_rows, block_v, teacher_head=head)


def kl_and_cross_entropy_sums(student_logits, *, teacher_logits=None, teacher_ids=None, teacher_logw=None,
                              teacher_log_tail=None, tail="bucket", temperature=1.0, valid=None, targets=None,
                              ce_weight=0.0, inplace=False, backend="auto"):
    """``(loss, kd, ce, num_tokens)`` summed over the counted rows, for a trainer's loss.

    ``kd``: the full-vocabulary forward KL against ``teacher_logits``, or else the top-k KL against ``teacher_ids`` /
    ``teacher_logw`` (/ ``teacher_log_tail``) with ``tail``; ``ce``: the student's cross-entropy on ``targets`` at
    ``T = 1`` through the same kernel (k = 1, ``renormalize``), computed before the KL so ``inplace`` may consume the
    logits. ``loss = kd + ce_weight * ce`` carries the gradient; ``kd`` and ``ce`` are detached fp32 (``ce`` is 0 when
    ``targets`` is None).
    """
    V = student_logits.shape[-1]
    z = student_logits.reshape(-1, V)
    valid = _flat_valid(valid, z.shape[0], z.device)
    n_tokens = int(valid.sum())
    ce = torch.zeros((), dtype=torch.float32, device=z.device)
    if targets is not None:
        ids = targets.reshape(-1, 1).to(z.device).clamp(min=0)
        ce = topk_kl_loss(z if ce_weight != 0.0 else z.detach(), ids, torch.zeros(ids.shape, device=z.device),
                          tail="renormalize", valid=valid, num_items=1, inplace=False, backend=backend)
    if teacher_logits is not None:
        kd = forward_kl_loss(z, teacher_logits.reshape(-1, V), temperature=temperature, valid=valid, num_items=1,
                             inplace=inplace, backend=backend)
    else:
        kd = topk_kl_loss(z, teacher_ids, teacher_logw, teacher_log_tail, tail=tail, temperature=temperature,
                          valid=valid, num_items=1, inplace=inplace, backend=backend)
    total = kd + ce_weight * ce if targets is not None and ce_weight != 0.0 else kd
    return total, kd.detach().float(), ce.detach().float(), n_tokens


__all__ = [
    "KD_CHUNK_LOGITS", "TAILS", "topk_kl_loss", "forward_kl_loss", "fused_linear_topk_kl_loss",
    "fused_linear_forward_kl_loss",
    "topk_kl_reference", "forward_kl_reference", "retemper_teacher_logprobs", "default_chunk_rows",
    "LogitsKLFunction", "FusedLinearKLFunction", "kl_and_cross_entropy_sums",
]
