"""The Triton kernels of ``hf_minitron.kernels.topk_kl`` against the PyTorch path and the reference.

Runs compiled on a CUDA machine, or on CPU when ``TRITON_INTERPRET=1`` was set before the kernels were imported
(``tests/test_topk_kl.py`` launches this file that way in a subprocess); skipped otherwise.
"""

from __future__ import annotations

import pytest
import torch

from hf_minitron.kernels import topk_kl as K
from hf_minitron.kernels._triton import interpret_mode, triton_available

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    not triton_available() or not (torch.cuda.is_available() or interpret_mode()),
    reason="needs CUDA, or TRITON_INTERPRET=1 set before import (see test_topk_kl.py)")

# (rows, vocab, k, temperature, block_v): vocab not a multiple of the block, k=1, k=vocab, several blocks
CASES = [(6, 37, 5, 1.0, 16), (5, 37, 1, 2.0, 16), (4, 37, 37, 0.7, 16), (7, 100, 8, 1.5, 32)]


def _targets(t, k, tail):
    lp = torch.log_softmax(t.double(), dim=-1)
    vals, ids = lp.topk(k, dim=-1)
    tail_lm = torch.logsumexp(lp.scatter(-1, ids, float("-inf")), dim=-1)
    if tail == "sampled":  # weights of draws: any non-negative weights on distinct ids, some zero
        vals = vals + torch.log(torch.rand(vals.shape, dtype=vals.dtype) * 0.5 + 0.5)
        vals[:, k // 2:] = float("-inf") if k > 1 else vals[:, k // 2:]
    return ids.to(torch.int32), vals, tail_lm


def _check(out, ref, g_out, g_ref, dtype):
    assert torch.allclose(out.float().cpu(), ref.float().cpu(), rtol=1e-4, atol=1e-5), (float(out), float(ref))
    tol = 1e-5 if dtype == torch.float32 else 4 * 2 ** -8
    scale = max(float(g_ref.abs().max()), 1e-3)
    assert float((g_out.float().cpu() - g_ref.float().cpu()).abs().max()) <= tol * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("tail", K.TAILS)
def test_topk_kernel_matches_torch_path_and_reference(tail, case, dtype):
    n, V, k, T, block_v = case
    torch.manual_seed(n + V + k)
    z = (torch.randn(n, V) * 3).to(dtype)
    ids, logw, log_tail = _targets(torch.randn(n, V) * 3, k, tail)
    logw = logw.half()
    valid = torch.rand(n) > 0.3
    valid[0] = True
    z_ref = z.clone().requires_grad_()
    ref = K.topk_kl_reference(z_ref, ids, logw, log_tail, tail=tail, temperature=T, valid=valid)
    ref.backward()
    grads = {}
    for backend in ("triton", "torch"):
        zb = z.clone().to(DEVICE).requires_grad_()
        out = K.topk_kl_loss(zb, ids.to(DEVICE), logw.to(DEVICE), log_tail.to(DEVICE), tail=tail, temperature=T,
                             valid=valid.to(DEVICE), inplace=False, backend=backend, block_v=block_v)
        out.backward()
        _check(out, ref, zb.grad, z_ref.grad, dtype)
        grads[backend] = zb.grad.float().cpu()
    assert (grads["triton"][~valid] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_full_vocab_kernel_matches_reference(dtype):
    torch.manual_seed(0)
    z = (torch.randn(2, 5, 70) * 2).to(dtype)
    t = (torch.randn(2, 5, 70) * 2).to(dtype)
    valid = torch.rand(2, 5) > 0.3
    z_ref = z.clone().requires_grad_()
    ref = K.forward_kl_reference(z_ref, t, temperature=1.3, valid=valid, num_items=9)
    ref.backward()
    zb = z.to(DEVICE).requires_grad_()
    out = K.forward_kl_loss(zb, t.to(DEVICE), temperature=1.3, valid=valid.to(DEVICE), num_items=9, inplace=False,
                            backend="triton", block_v=32)
    out.backward()
    _check(out, ref, zb.grad, z_ref.grad, dtype)


def test_fused_linear_with_kernel_matches_reference():
    torch.manual_seed(1)
    n, H, V, k = 9, 8, 45, 4
    h, W = torch.randn(n, H), torch.randn(V, H)
    ids, logw, log_tail = _targets(torch.randn(n, V) * 2, k, "bucket")
    ref_in = [x.clone().requires_grad_() for x in (h, W)]
    ref = K.topk_kl_reference(ref_in[0] @ ref_in[1].t(), ids, logw, log_tail, temperature=2.0)
    ref.backward()
    ins = [x.clone().to(DEVICE).requires_grad_() for x in (h, W)]
    out = K.fused_linear_topk_kl_loss(ins[0], ins[1], ids.to(DEVICE), logw.to(DEVICE), log_tail.to(DEVICE),
                                      temperature=2.0, backend="triton", chunk_rows=4, block_v=16)
    out.backward()
    for a, r in zip(ins, ref_in):
        _check(out, ref, a.grad, r.grad, torch.float32)


def test_no_grad_call_leaves_logits_untouched():
    torch.manual_seed(2)
    z = torch.randn(4, 37).to(DEVICE)
    ids, logw, log_tail = _targets(torch.randn(4, 37), 6, "bucket")
    before = z.clone()
    out = K.topk_kl_loss(z, ids.to(DEVICE), logw.to(DEVICE), log_tail.to(DEVICE), backend="triton", block_v=16)
    assert torch.equal(z, before)
    assert torch.allclose(out.cpu(), K.topk_kl_reference(before.cpu(), ids, logw, log_tail).float(), rtol=1e-5)


def test_distillation_loss_routes_forward_kl_through_the_kernel(monkeypatch):
    """DistillationTrainer's dispatch point sends full-vocabulary forward KL to the kernel where Triton runs."""
    pytest.importorskip("trl")
    from hf_minitron.distill import losses

    calls = []
    routed = K.kl_and_cross_entropy_sums
    monkeypatch.setattr(K, "kl_and_cross_entropy_sums", lambda *a, **kw: calls.append(1) or routed(*a, **kw))

    torch.manual_seed(3)
    z = (torch.randn(2, 5, 40) * 2).to(DEVICE)
    t = (torch.randn(2, 5, 40) * 2).to(DEVICE)
    targets = torch.randint(0, 40, (2, 5), device=DEVICE)
    mask = torch.rand(2, 5, device=DEVICE) > 0.3
    mask[0, 0] = True
    zk = z.clone().requires_grad_()
    parts = losses.distillation_loss(zk, t, mask, kind="forward_kl", temperature=1.5, targets=targets, ce_weight=0.3)
    parts.loss.backward()
    zr = z.clone().cpu().double().requires_grad_()
    kd = K.forward_kl_reference(zr, t.cpu(), temperature=1.5, valid=mask.cpu(), num_items=1)
    ce = torch.nn.functional.cross_entropy(zr[mask.cpu()], targets.cpu()[mask.cpu()], reduction="sum")
    (kd + 0.3 * ce).backward()
    assert calls and parts.num_tokens == int(mask.sum())
    assert float(parts.kd) == pytest.approx(float(kd), rel=1e-5)
    assert float(parts.ce) == pytest.approx(float(ce), rel=1e-5)
    assert torch.allclose(zk.grad.double().cpu(), zr.grad, atol=1e-5)
