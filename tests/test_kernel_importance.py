"""The masked |x|-mean accumulation kernel: Triton (under TRITON_INTERPRET=1) and the CPU path vs the reference."""

import pytest
import torch

from hf_minitron.kernels import importance as K

SHAPES = [(1, 1, 1), (3, 37, 200), (2, 65, 129), (4, 8, 300)]  # channels never a multiple of the 128 block
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _case(shape, dtype, mask_kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    b, s, _ = shape
    if mask_kind == "none":
        mask = None
    else:
        mask = torch.rand(b, s, generator=g) > 0.4
        mask[0] = False  # an all-masked row contributes nothing
        if b > 1:
            mask[-1] = True
        if mask_kind == "int":
            mask = mask.long()
    return x, mask


def _run(fn, x, mask):
    s = torch.full((x.shape[2],), 0.5)  # accumulates onto existing values
    q = torch.full((x.shape[2],), 0.25)
    fn(x, mask, s, q)
    return s, q


def _float64_reference(x, mask):
    """Independent float64 computation of the definition."""
    a = x.double().abs()
    m = torch.ones(x.shape[:2], dtype=torch.float64) if mask is None else mask.double()
    v = (a * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1)
    return 0.5 + v.sum(0), 0.25 + (v * v).sum(0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_kind", ["none", "bool", "int"])
def test_reference_and_cpu_path_match_float64(shape, dtype, mask_kind):
    x, mask = _case(shape, dtype, mask_kind)
    want = _float64_reference(x, mask)
    for fn in (K.abs_mean_accumulate_reference, K.abs_mean_accumulate):
        got = _run(fn, x, mask)
        torch.testing.assert_close(got[0].double(), want[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[1].double(), want[1], rtol=1e-5, atol=1e-5)


_INTERPRETED = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_kernel_importance import SHAPES, DTYPES, _case, _run
from hf_minitron.kernels import importance as K
from hf_minitron.kernels._triton import use_triton
checked = 0
for dtype in DTYPES:
    for i, shape in enumerate(SHAPES):
        for mask_kind in ("none", "bool", "int"):
            x, mask = _case(shape, dtype, mask_kind, seed=i)
            torch.testing.assert_close(_run(K.abs_mean_accumulate_triton, x, mask),
                                       _run(K.abs_mean_accumulate_reference, x, mask), rtol=1e-5, atol=1e-5)
            checked += 1
    x = torch.randn(40, 3, 130).to(dtype).transpose(0, 1)  # non-contiguous: the kernel follows the strides
    torch.testing.assert_close(_run(K.abs_mean_accumulate_triton, x, None),
                               _run(K.abs_mean_accumulate_reference, x, None), rtol=1e-5, atol=1e-5)
    assert use_triton(x)  # the dispatcher takes the Triton path on CPU tensors under TRITON_INTERPRET=1
    torch.testing.assert_close(_run(K.abs_mean_accumulate, x, None), _run(K.abs_mean_accumulate_reference, x, None),
                               rtol=1e-5, atol=1e-5)
    checked += 1
print("checked", checked)
"""


def test_triton_kernel_matches_reference_interpreted():
    """Triton reads TRITON_INTERPRET when it is imported, so the interpreted kernel runs in a fresh interpreter."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    code = _INTERPRETED.format(tests=str(Path(__file__).parent))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"checked {len(DTYPES) * (len(SHAPES) * 3 + 1)}" in proc.stdout


def test_bad_arguments_are_refused():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="mask shape"):
        K.abs_mean_accumulate(x, torch.ones(2, 4), torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="sum_out"):
        K.abs_mean_accumulate(x, None, torch.zeros(4, dtype=torch.float16), torch.zeros(4))
    with pytest.raises(ValueError, match=r"\[batch, seq, channels\]"):
        K.abs_mean_accumulate(torch.randn(3, 4), None, torch.zeros(4), torch.zeros(4))
