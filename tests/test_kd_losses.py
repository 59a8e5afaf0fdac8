"""Distillation losses against an independent float64 reference (value and gradient)."""

from __future__ import annotations

import math

import pytest
import torch

from hf_minitron.distill.intermediate import HiddenProjections, hidden_state_loss, intermediate_loss, parse_layer_map
from hf_minitron.distill.losses import distillation_loss


def reference_loss(student, teacher, mask, kind, temperature, beta=0.5, targets=None, ce_weight=0.0):
    """Float64 textbook definitions, written independently of the library (full tensors, no chunking)."""
    s, t = student.double(), teacher.double()
    log_q = torch.log_softmax(s / temperature, dim=-1)
    log_p = torch.log_softmax(t / temperature, dim=-1)
    p, q = log_p.exp(), log_q.exp()
    if kind == "forward_kl":
        per_token = (p * (log_p - log_q)).sum(-1)
    elif kind == "reverse_kl":
        per_token = (q * (log_q - log_p)).sum(-1)
    else:
        log_m = (beta * p + (1 - beta) * q).log()
        per_token = beta * (p * (log_p - log_m)).sum(-1) + (1 - beta) * (q * (log_q - log_m)).sum(-1)
    per_token = per_token * temperature**2
    total = (per_token * mask).sum()
    if targets is not None and ce_weight:
        nll = -torch.log_softmax(s, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        total = total + ce_weight * (nll * mask).sum()
    return total


def _random_case(seed, shape=(3, 11), vocab=53, dtype=torch.float32, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    student = (scale * torch.randn(*shape, vocab, generator=gen)).to(dtype)
    teacher = (scale * torch.randn(*shape, vocab, generator=gen)).to(dtype)
    mask = torch.rand(*shape, generator=gen) > 0.3
    targets = torch.randint(0, vocab, shape, generator=gen)
    targets[~mask] = -100
    return student, teacher, mask, targets


def _check(student, teacher, mask, targets, *, kind, temperature, beta=0.5, ce_weight=0.0, chunk_size=None,
           atol=1e-5):
    s_ours = student.clone().requires_grad_(True)
    out = distillation_loss(s_ours, teacher, mask, kind=kind, temperature=temperature, beta=beta,
                            targets=targets if ce_weight else None, ce_weight=ce_weight, chunk_size=chunk_size)
    out.loss.backward()
    s_ref = student.double().clone().requires_grad_(True)
    ref = reference_loss(s_ref, teacher, mask, kind, temperature, beta, targets, ce_weight)
    ref.backward()
    assert out.num_tokens == int(mask.sum())
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-5)
    assert s_ours.grad.dtype == student.dtype
    assert torch.allclose(s_ours.grad.double(), s_ref.grad, atol=atol, rtol=1e-4), \
        (s_ours.grad.double() - s_ref.grad).abs().max()
    # ignored positions get exactly no gradient
    assert torch.count_nonzero(s_ours.grad[~mask]) == 0
    return out


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.5, 0.7])
def test_loss_matches_float64_reference(kind, temperature):
    student, teacher, mask, targets = _random_case(seed=10 * len(kind) + int(10 * temperature))
    threads = torch.get_num_threads()
    # 7 does not divide the number of counted tokens; 1 and a chunk larger than everything are the edge cases
    for chunk_size in (7, 1, 10_000):
        _check(student, teacher, mask, targets, kind=kind, temperature=temperature, beta=0.3, chunk_size=chunk_size)
    assert torch.get_num_threads() == threads  # the CPU chunk workers leave the caller's thread count alone


@pytest.mark.parametrize("kind", ["forward_kl", "jsd"])
def test_ce_weight_adds_student_cross_entropy(kind):
    student, teacher, mask, targets = _random_case(seed=5)
    out = _check(student, teacher, mask, targets, kind=kind, temperature=2.0, ce_weight=0.4, chunk_size=5)
    # the logged parts are the pieces of the total
    nll = -torch.log_softmax(student.double(), -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    assert out.ce.item() == pytest.approx((nll * mask).sum().item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(out.kd.item() + 0.4 * out.ce.item(), rel=1e-5)


def test_zero_divergence_for_identical_logits_and_known_value():
    student, _, mask, _ = _random_case(seed=1)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        out = distillation_loss(student, student.clone(), mask, kind=kind)
        assert abs(out.loss.item()) < 1e-4
    # hand-computed: two tokens over a 2-symbol vocabulary, p = (1/2, 1/2), q = (e/(1+e), 1/(1+e))
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 0.0]])
    q1 = math.e / (1 + math.e)
    expected = 0.5 * math.log(0.5 / q1) + 0.5 * math.log(0.5 / (1 - q1))
    assert distillation_loss(s, t, kind="forward_kl").loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_use_fp32_math(dtype):
    student, teacher, mask, targets = _random_case(seed=3, dtype=dtype)
    # the reference sees exactly the rounded low-precision values; the result must match it to fp32 accuracy,
    # which a loss computed in bf16/fp16 would not
    s = student.clone().requires_grad_(True)
    out = distillation_loss(s, teacher, mask, kind="forward_kl", temperature=1.5, chunk_size=4)
    out.loss.backward()
    s_ref = student.double().requires_grad_(True)
    ref = reference_loss(s_ref, teacher, mask, "forward_kl", 1.5)
    ref.backward()
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert s.grad.dtype == dtype
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3  # the gradient is stored in the logits' dtype
    assert torch.allclose(s.grad.double(), s_ref.grad, atol=tol, rtol=tol)


def test_shared_vocab_truncation():
    student, teacher, mask, _ = _random_case(seed=4, vocab=40)
    padded_teacher = torch.cat([teacher, 5.0 + torch.randn(*teacher.shape[:-1], 8)], dim=-1)
    s = student.clone().requires_grad_(True)
    out = distillation_loss(s, padded_teacher, mask, vocab_size=40, chunk_size=6)
    out.loss.backward()
    s_ref = student.double().requires_grad_(True)
    ref = reference_loss(s_ref, teacher, mask, "forward_kl", 1.0)
    ref.backward()
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(s.grad.double(), s_ref.grad, atol=1e-5)
    # a student with padding rows: the extra columns get no gradient
    padded_student = torch.cat([student, torch.randn(*student.shape[:-1], 8)], dim=-1).requires_grad_(True)
    out = distillation_loss(padded_student, teacher, mask, vocab_size=40, chunk_size=6)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.count_nonzero(padded_student.grad[..., 40:]) == 0
    assert torch.allclose(padded_student.grad[..., :40].double(), s_ref.grad, atol=1e-5)


def test_teacher_gets_no_gradient_and_no_grad_mode_works():
    student, teacher, mask, _ = _random_case(seed=6)
    t = teacher.clone().requires_grad_(True)
    s = student.clone().requires_grad_(True)
    distillation_loss(s, t, mask).loss.backward()
    assert t.grad is None and s.grad is not None
    with torch.no_grad():
        value = distillation_loss(student, teacher, mask).loss.item()
    assert value == pytest.approx(reference_loss(student, teacher, mask, "forward_kl", 1.0).item(), rel=1e-5)


def test_bad_arguments_are_refused():
    student, teacher, mask, targets = _random_case(seed=7)
    with pytest.raises(ValueError, match="kd_loss"):
        distillation_loss(student, teacher, mask, kind="kl")
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(student, teacher, mask, temperature=0)
    with pytest.raises(ValueError, match="beta"):
        distillation_loss(student, teacher, mask, kind="jsd", beta=1.0)
    with pytest.raises(ValueError, match="vocabulary"):
        distillation_loss(student, teacher[..., :-1], mask)
    with pytest.raises(ValueError, match="leading"):
        distillation_loss(student, teacher[:, :-1], mask)
    with pytest.raises(ValueError, match="targets"):
        distillation_loss(student, teacher, None, targets=targets)  # -100 at counted positions


# --- intermediate states ---------------------------------------------------------------------------------------

def test_hidden_state_losses_match_reference():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(9, 16, generator=gen), torch.randn(9, 16, generator=gen)
    s64, t64 = s.double(), t.double()
    cos = (s64 * t64).sum(-1) / (s64.norm(dim=-1) * t64.norm(dim=-1))
    assert hidden_state_loss(s, t, "cosine").item() == pytest.approx((1 - cos).sum().item(), rel=1e-5)
    assert hidden_state_loss(s, t, "mse").item() == pytest.approx(((s64 - t64) ** 2).mean(-1).sum().item(), rel=1e-5)
    with pytest.raises(ValueError, match="intermediate_loss"):
        hidden_state_loss(s, t, "l1")


def test_intermediate_loss_selects_rows_and_projects():
    gen = torch.Generator().manual_seed(1)
    student_states = [torch.randn(2, 5, 8, generator=gen) for _ in range(3)]
    teacher_states = [torch.randn(2, 5, 12, generator=gen) for _ in range(5)]
    rows = torch.tensor([0, 3, 4, 7])
    proj = HiddenProjections([1, 2], 8, 12)
    got = intermediate_loss(student_states, teacher_states, rows, [(1, 2), (2, 4)], proj, "mse")
    expected = 0.0
    for s_idx, t_idx in [(1, 2), (2, 4)]:
        hs = student_states[s_idx].reshape(-1, 8)[rows].double() @ proj.maps[str(s_idx)].weight.double().T
        ht = teacher_states[t_idx].reshape(-1, 12)[rows].double()
        expected += ((hs - ht) ** 2).mean(-1).sum().item() / 2
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert len(HiddenProjections([1], 8, 8).maps) == 0  # equal sizes: no projection


def test_parse_layer_map():
    assert parse_layer_map("1:2, 3:6", 4, 8) == [(1, 2), (3, 6)]
    assert parse_layer_map({2: 4}, 4, 8) == [(2, 4)]
    assert parse_layer_map("auto", 3, 6) == [(1, 2), (2, 4), (3, 6)]
    assert parse_layer_map(None, 3, 6) == []
    for bad, match in [("1-2", "student:teacher"), ("5:2", "student index 5"), ("1:9", "teacher index 9"),
                       ("1:2,1:3", "twice"), ("a:b", "integers")]:
        with pytest.raises(ValueError, match=match):
            parse_layer_map(bad, 4, 8)
