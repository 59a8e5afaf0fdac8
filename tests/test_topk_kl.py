"""Top-k / full-vocabulary KL: the chunked PyTorch path and the fused-linear form against the plain reference,
float64 gradcheck, numerics at the tails, temperature handling, and the Triton kernels under TRITON_INTERPRET=1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_minitron.kernels import topk_kl as K

TESTS = Path(__file__).resolve().parent


def teacher_topk(teacher_logits, k, temperature=1.0):
    """(ids int32, log-probs, log tail mass) of a teacher, computed in float64."""
    lp = torch.log_softmax(teacher_logits.double() / temperature, dim=-1)
    vals, ids = lp.topk(k, dim=-1)
    tail = torch.logsumexp(lp.scatter(-1, ids, float("-inf")), dim=-1)
    return ids.to(torch.int32), vals, tail


def sampled_targets(teacher_logits, k, seed=0):
    """Distinct ids with weights count/k from k draws of the teacher, padded with unused ids of weight 0."""
    p = torch.softmax(teacher_logits.double(), -1)
    draws = torch.multinomial(p, k, replacement=True, generator=torch.Generator().manual_seed(seed))
    ids, logw = [], []
    for row, d in zip(p, draws):
        u, c = d.unique(return_counts=True)
        pad = [i for i in range(p.shape[-1]) if i not in set(u.tolist())][: k - len(u)]
        ids.append(torch.cat([u, torch.tensor(pad, dtype=u.dtype)]))
        logw.append(torch.cat([(c.double() / k).log(), torch.full((len(pad),), float("-inf"), dtype=torch.float64)]))
    return torch.stack(ids).to(torch.int32), torch.stack(logw)


def targets(tail, t, k):
    if tail == "sampled":
        ids, logw = sampled_targets(t, k)
        return ids, logw, None
    return teacher_topk(t, k)


def grads_close(a, b, dtype):
    tol = 1e-5 if dtype == torch.float32 else 4 * 2 ** -8
    scale = max(float(b.abs().max()), 1e-3)
    assert float((a.float() - b.float()).abs().max()) <= tol * scale


CASES = [  # (rows, vocab, k, temperature, chunk_rows)
    (9, 37, 5, 1.0, 4),
    (6, 37, 1, 2.0, 5),
    (5, 37, 37, 0.7, 2),
    (12, 100, 8, 1.5, 7),
]


@pytest.mark.parametrize("tail", K.TAILS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_path_matches_reference(tail, case, dtype):
    n, V, k, T, chunk = case
    g = torch.Generator().manual_seed(n * V + k)
    z = (torch.randn(n, V, generator=g) * 3).to(dtype)
    t = torch.randn(n, V, generator=g) * 3
    ids, logw, log_tail = targets(tail, t, k)
    logw = logw.to(torch.float16)  # as stored in the cache
    valid = torch.rand(n, generator=g) > 0.3
    valid[0] = True
    z_ref = z.clone().requires_grad_()
    ref = K.topk_kl_reference(z_ref, ids, logw, log_tail, tail=tail, temperature=T, valid=valid)
    ref.backward()
    z_out = z.clone().requires_grad_()
    out = K.topk_kl_loss(z_out, ids, logw, log_tail, tail=tail, temperature=T, valid=valid, inplace=False,
                         backend="torch", chunk_rows=chunk)
    out.backward()
    assert torch.allclose(out, ref.float(), rtol=1e-5, atol=1e-6)
    grads_close(z_out.grad, z_ref.grad, dtype)
    assert (z_out.grad[~valid] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_full_vocab_forward_kl_matches_reference(dtype):
    g = torch.Generator().manual_seed(1)
    z = (torch.randn(3, 4, 50, generator=g) * 2).to(dtype)
    t = (torch.randn(3, 4, 50, generator=g) * 2).to(dtype)
    valid = torch.rand(3, 4, generator=g) > 0.3
    z_ref = z.clone().requires_grad_()
    ref = K.forward_kl_reference(z_ref, t, temperature=2.0, valid=valid, num_items=17)
    ref.backward()
    z_out = z.clone().requires_grad_()
    out = K.forward_kl_loss(z_out, t, temperature=2.0, valid=valid, num_items=17, inplace=False, backend="torch",
                            chunk_rows=5)
    out.backward()
    assert torch.allclose(out, ref.float(), rtol=1e-5, atol=1e-6)
    grads_close(z_out.grad, z_ref.grad, dtype)


@pytest.mark.parametrize("tail", K.TAILS)
def test_fused_linear_matches_reference(tail):
    g = torch.Generator().manual_seed(2)
    n, H, V, k = 13, 8, 41, 6
    h, W, b = torch.randn(n, H, generator=g), torch.randn(V, H, generator=g), torch.randn(V, generator=g)
    t = torch.randn(n, V, generator=g) * 2
    ids, logw, log_tail = targets(tail, t, k)
    valid = torch.rand(n, generator=g) > 0.25
    for cap in (None, 4.0):
        ref_in = [x.clone().requires_grad_() for x in (h, W, b)]
        z = ref_in[0] @ ref_in[1].t() + ref_in[2]
        if cap:
            z = cap * torch.tanh(z / cap)
        ref = K.topk_kl_reference(z, ids, logw, log_tail, tail=tail, temperature=1.5, valid=valid)
        ref.backward()
        ins = [x.clone().requires_grad_() for x in (h, W, b)]
        out = K.fused_linear_topk_kl_loss(ins[0], ins[1], ids, logw, log_tail, bias=ins[2], tail=tail,
                                          temperature=1.5, valid=valid, softcap=cap, backend="torch", chunk_rows=4)
        out.backward()
        assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6)
        for a, r in zip(ins, ref_in):
            grads_close(a.grad, r.grad, torch.float32)


def test_fused_linear_forward_kl_matches_reference():
    g = torch.Generator().manual_seed(3)
    n, H, Ht, V = 10, 6, 9, 33
    h, W = torch.randn(n, H, generator=g), torch.randn(V, H, generator=g)
    th, tW = torch.randn(n, Ht, generator=g), torch.randn(V, Ht, generator=g)
    valid = torch.rand(n, generator=g) > 0.3
    ref_in = [x.clone().requires_grad_() for x in (h, W)]
    ref = K.forward_kl_reference(ref_in[0] @ ref_in[1].t(), 3.0 * torch.tanh(th @ tW.t() / 3.0), temperature=0.8,
                                 valid=valid)
    ref.backward()
    ins = [x.clone().requires_grad_() for x in (h, W)]
    out = K.fused_linear_forward_kl_loss(ins[0], ins[1], th, tW, teacher_softcap=3.0, temperature=0.8, valid=valid,
                                         backend="torch", chunk_rows=3)
    out.backward()
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6)
    for a, r in zip(ins, ref_in):
        grads_close(a.grad, r.grad, torch.float32)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(5, 13, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randn(5, 13, dtype=torch.float64, generator=g)
    ids, logw, log_tail = teacher_topk(t, 4)
    valid = torch.tensor([True, False, True, True, True])
    for tail in K.TAILS:
        fn = lambda z: K.topk_kl_loss(z, ids, logw, log_tail, tail=tail, temperature=1.7, valid=valid,  # noqa: E731
                                      inplace=False, backend="torch", chunk_rows=2)
        assert torch.autograd.gradcheck(fn, (z,))
    assert torch.autograd.gradcheck(
        lambda z: K.forward_kl_loss(z, t, temperature=0.7, valid=valid, inplace=False, backend="torch", chunk_rows=2),
        (z,))
    h = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    W = torch.randn(13, 4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda h, W: K.fused_linear_topk_kl_loss(h, W, ids, logw, log_tail, softcap=3.0, valid=valid,
                                                 backend="torch", chunk_rows=2), (h, W))


def test_tail_term_is_exact_when_student_tail_is_below_float_resolution():
    """A confident student (tail mass ~e^-60) against a teacher with tail mass 1e-3: 1 - sum(q_topk) is 0 in any
    float format (log 0 = -inf loss); the masked log-sum-exp gives the float64 reference in bf16 and fp32."""
    V, k = 64, 4
    z = torch.zeros(2, V)
    z[:, :k] = 60.0
    t = torch.zeros(2, V)
    t[:, :k] = torch.tensor([12.0, 11.0, 10.0, 9.0])
    ids, logw, log_tail = teacher_topk(t, k)
    ref = K.topk_kl_reference(z.double(), ids, logw, log_tail, tail="bucket")
    assert 0.0 < float(ref) < float("inf")
    for dtype in (torch.float32, torch.bfloat16):
        zz = z.to(dtype).detach().clone().requires_grad_()
        out = K.topk_kl_loss(zz, ids, logw.half(), log_tail, tail="bucket", inplace=False, backend="torch")
        out.backward()
        assert torch.isfinite(out) and abs(out.item() - ref.item()) < 1e-2 * float(ref)
        assert torch.isfinite(zz.grad).all()


def test_bf16_identical_distributions_give_zero_kl_and_gradient():
    g = torch.Generator().manual_seed(5)
    z = (torch.randn(16, 300, generator=g) * 4).to(torch.bfloat16)
    zz = z.clone().requires_grad_()
    out = K.forward_kl_loss(zz, z, backend="torch", inplace=False)
    out.backward()
    assert abs(out.item()) < 1e-6 and float(zz.grad.abs().max()) < 1e-6


def test_inplace_logits_receive_their_gradient():
    g = torch.Generator().manual_seed(6)
    W = torch.randn(20, 5, generator=g, requires_grad=True)
    h = torch.randn(7, 5, generator=g)
    t = torch.randn(7, 20, generator=g)
    ids, logw, log_tail = teacher_topk(t, 3)
    logits = h @ W.t()
    loss = K.topk_kl_loss(logits, ids, logw, log_tail, backend="torch")  # consumes `logits`
    loss.backward()
    W_ref = W.detach().clone().requires_grad_()
    ref_logits = h @ W_ref.t()
    K.topk_kl_reference(ref_logits, ids, logw, log_tail).backward()
    assert torch.allclose(W.grad, W_ref.grad, atol=1e-6)
    # the consumed logits tensor now holds d loss / d logits
    z_ref = (h @ W.detach().t()).requires_grad_()
    K.topk_kl_reference(z_ref, ids, logw, log_tail).backward()
    assert torch.allclose(logits.detach(), z_ref.grad, atol=1e-6)


def test_retemper_renormalize_is_exact_and_other_tails_refuse():
    g = torch.Generator().manual_seed(7)
    t = torch.randn(6, 30, generator=g) * 3
    z = torch.randn(6, 30, generator=g)
    ids, logw_cache, _ = teacher_topk(t, 5, temperature=1.0)
    ids2, logw_T, _ = teacher_topk(t, 5, temperature=2.0)
    assert torch.equal(ids, ids2)  # tempering keeps the order
    moved = K.retemper_teacher_logprobs(logw_cache, cache_temperature=1.0, temperature=2.0, tail="renormalize")
    a = K.topk_kl_loss(z.clone(), ids, moved, tail="renormalize", temperature=2.0, backend="torch")
    b = K.topk_kl_reference(z, ids, logw_T, tail="renormalize", temperature=2.0)
    assert torch.allclose(a.double(), b.double(), rtol=1e-5)
    for tail in ("bucket", "sampled"):
        with pytest.raises(ValueError, match="cache-teacher --temperature 2.0"):
            K.retemper_teacher_logprobs(logw_cache, cache_temperature=1.0, temperature=2.0, tail=tail)


def test_bad_inputs_are_refused():
    z = torch.randn(4, 10)
    ids = torch.zeros(4, 3, dtype=torch.int32)
    with pytest.raises(ValueError, match="tail"):
        K.topk_kl_loss(z, ids, torch.zeros(4, 3), tail="top")
    with pytest.raises(ValueError, match="teacher_log_tail"):
        K.topk_kl_loss(z, ids, torch.zeros(4, 3), tail="bucket")
    with pytest.raises(ValueError, match="k <= vocab"):
        K.topk_kl_loss(z, torch.zeros(4, 11, dtype=torch.int32), torch.zeros(4, 11), tail="renormalize")
    with pytest.raises(ValueError, match="num_items"):
        K.topk_kl_loss(z, ids, torch.zeros(4, 3), tail="renormalize", num_items=0)
    with pytest.raises(ValueError, match="weight"):
        K.fused_linear_topk_kl_loss(torch.randn(4, 5), torch.randn(10, 6), ids, torch.zeros(4, 3), tail="sampled")


def test_kernels_import_without_trl():
    code = ("import sys; sys.modules['trl'] = None\n"
            "import torch\n"
            "import hf_minitron.kernels.topk_kl as K\n"
            "z = torch.randn(3, 9, requires_grad=True)\n"
            "K.forward_kl_loss(z, torch.randn(3, 9), backend='torch', inplace=False).backward()\n"
            "assert 'trl' not in sys.modules or sys.modules['trl'] is None\n"
            "print('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


@pytest.mark.skipif(not K.triton_available(), reason="triton is not installed")
def test_triton_kernels_under_interpreter():
    """Runs tests/test_topk_kl_triton.py in a subprocess with TRITON_INTERPRET=1 (read when the kernels are decorated,
    i.e. when hf_minitron.kernels.topk_kl is first imported, so it must be set before that import)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore",
                          str(TESTS / "test_topk_kl_triton.py")], capture_output=True, text=True, env=env,
                         timeout=600, cwd=TESTS.parent)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "skipped" not in res.stdout, res.stdout[-2000:]
