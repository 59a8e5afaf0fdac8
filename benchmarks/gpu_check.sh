#!/usr/bin/env bash
# GPU check of the fused top-k / forward-KL kernels (hf_minitron.kernels.topk_kl) on a CUDA machine, offline.
#
#   benchmarks/gpu_check.sh WHEEL_DIR            # run from anywhere; the repository is this script's parent folder
#
# 1. Builds .venv-gpu (or uses $GPU_CHECK_PYTHON, an interpreter that already has a CUDA torch, triton, pytest and
#    setuptools) and installs
#    ONLY from WHEEL_DIR (pip --no-index): torch (a CUDA build), triton, numpy, pytest, setuptools, wheel; optional:
#    transformers, trl and their deps (for the distillation-routing test), liger-kernel (for the Liger comparison).
#    The project itself is installed editable with --no-deps. Nothing is fetched from the network.
# 2. Runs the kernel tests compiled on the GPU (TRITON_INTERPRET unset): tests/test_topk_kl_triton.py and the PyTorch
#    path tests of tests/test_topk_kl.py.
# 3. Benchmarks forward+backward of the loss at 16384 tokens, vocab 128256, hidden 4096, bf16 (override with TOKENS,
#    VOCAB, HIDDEN, TOPK, REPEAT): eager PyTorch, ours, and Liger-Kernel's KL-divergence and fused-linear JSD losses
#    when liger-kernel is installed (skipped otherwise). Prints time, peak memory above the inputs, speed-up over eager,
#    and, for the losses over materialised logits, the achieved memory bandwidth as a fraction of the GPU's peak
#    (theoretical from the memory clock and bus width, and of a measured device-to-device copy).
#    Targets (issue 5): >= 3x faster than eager; logits-form loss within 1.5x of its bytes-moved limit
#    (about 6 bytes per vocabulary entry per token in bf16: two reads and one write).
set -euo pipefail

WHEELS="${1:-}"
if [[ -z "$WHEELS" || ! -d "$WHEELS" ]]; then
    echo "usage: $0 WHEEL_DIR   (a folder of .whl files: torch with CUDA, triton, numpy, pytest, setuptools, wheel;" >&2
    echo "       optional: liger-kernel, transformers, trl and their dependencies)" >&2
    exit 2
fi
WHEELS="$(cd "$WHEELS" && pwd)"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
unset TRITON_INTERPRET

if [[ -n "${GPU_CHECK_PYTHON:-}" ]]; then
    PY="$GPU_CHECK_PYTHON"
else
    VENV="${VENV:-$REPO/.venv-gpu}"
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    PY="$VENV/bin/python"
    "$PY" -m pip install --no-index --find-links "$WHEELS" torch triton numpy pytest setuptools wheel
fi
PIP=("$PY" -m pip install --no-index --find-links "$WHEELS")
"${PIP[@]}" --no-deps --no-build-isolation -e "$REPO"
for optional in liger-kernel transformers trl; do
    if ls "$WHEELS" | grep -i "^${optional//-/[-_]}-" >/dev/null; then
        "${PIP[@]}" "$optional" || echo "note: $optional could not be installed from $WHEELS (missing dependencies?)"
    else
        echo "note: no $optional wheel in $WHEELS: the checks that need it are skipped"
    fi
done

"$PY" - <<'EOF'
import torch, triton
assert torch.cuda.is_available(), "no CUDA device visible to torch: this check needs a GPU and a CUDA build of torch"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}, "
      f"{torch.cuda.get_device_name(0)}")
EOF

echo "== kernel tests, compiled (TRITON_INTERPRET unset) =="
status=0  # a failing test is reported at the end; the benchmark still runs
"$PY" -m pytest -q -p no:cacheprovider tests/test_topk_kl_triton.py || status=1
"$PY" -m pytest -q -p no:cacheprovider tests/test_topk_kl.py -k "not interpreter" || status=1

echo "== loss benchmark: ${TOKENS:-16384} tokens, vocab ${VOCAB:-128256}, hidden ${HIDDEN:-4096}, bf16 =="
"$PY" - <<'EOF'
import os
import statistics

import torch

from hf_minitron.kernels import topk_kl as K

N = int(os.environ.get("TOKENS", 16384))
V = int(os.environ.get("VOCAB", 128256))
H = int(os.environ.get("HIDDEN", 4096))
TOPK = int(os.environ.get("TOPK", 64))
REPEAT = int(os.environ.get("REPEAT", 5))
dev = torch.device("cuda")
dt = torch.bfloat16
GIB = 2 ** 30

try:
    from liger_kernel.transformers.fused_linear_jsd import LigerFusedLinearJSD
    from liger_kernel.transformers.kl_div import LigerKLDIVLoss
except Exception as err:  # not installed, or an incompatible version
    LigerKLDIVLoss = LigerFusedLinearJSD = None
    print(f"liger-kernel unavailable ({type(err).__name__}: {err}): Liger rows skipped")


def peak_bandwidth():
    """(theoretical bytes/s from the memory clock and bus width or None, measured device-to-device copy bytes/s)."""
    prop = torch.cuda.get_device_properties(0)
    clock_khz = getattr(prop, "memory_clock_rate", None)
    bus_bits = getattr(prop, "memory_bus_width", None)
    theo = 2 * clock_khz * 1e3 * bus_bits / 8 if clock_khz and bus_bits else None  # double data rate
    a = torch.empty(2 * GIB // 2, dtype=dt, device=dev)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        b.copy_(a)
    end.record()
    torch.cuda.synchronize()
    copy = 10 * 2 * a.numel() * a.element_size() / (start.elapsed_time(end) / 1e3)
    del a, b
    return theo, copy


def bench(name, setup, step):
    """setup() -> state (not timed); step(state) -> loss (forward + backward timed). Returns (ms, peak GiB, loss)."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    try:
        times, loss = [], None
        for i in range(REPEAT + 1):  # the first run compiles / warms up
            state = setup()
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = step(state)
            end.record()
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / GIB
            loss = float(out)
            if i:
                times.append(start.elapsed_time(end))
            del state, out
        return statistics.median(times), peak, loss
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None, None, None


g = torch.Generator(device=dev).manual_seed(0)
theo, copy = peak_bandwidth()
print(f"peak memory bandwidth: theoretical {theo / 1e9:.0f} GB/s" if theo else "peak bandwidth: theoretical unknown",
      f"| measured copy {copy / 1e9:.0f} GB/s")

# ---- losses over materialised logits [N, V] --------------------------------------------------------------------
z_src = (2 * torch.randn(N, V, generator=g, device=dev)).to(dt)
t_src = (2 * torch.randn(N, V, generator=g, device=dev)).to(dt)
valid = torch.ones(N, dtype=torch.bool, device=dev)
with torch.no_grad():
    lp = torch.log_softmax(t_src.float(), -1)
    vals, ids = lp.topk(TOPK, -1)
    tail = torch.logsumexp(lp.scatter_(-1, ids, float("-inf")), -1)
    del lp
ids, vals = ids.to(torch.int32), vals.to(torch.float16)


def fresh_logits():
    return {"z": z_src.clone().requires_grad_()}


def eager_fkl(s):
    log_q = torch.log_softmax(s["z"].float(), -1)
    log_p = torch.log_softmax(t_src.float(), -1)
    loss = torch.nn.functional.kl_div(log_q, log_p, reduction="sum", log_target=True)
    loss.backward()
    return loss.detach()


def ours_fkl(s):
    loss = K.forward_kl_loss(s["z"], t_src, num_items=1)  # a leaf: its data is overwritten with the gradient
    loss.backward()
    return loss.detach()


def eager_topk(s):
    loss = K.topk_kl_reference(s["z"], ids, vals, tail, tail="bucket", num_items=1)
    loss.backward()
    return loss.detach()


def ours_topk(s):
    loss = K.topk_kl_loss(s["z"], ids, vals, tail, tail="bucket", num_items=1)
    loss.backward()
    return loss.detach()


def liger_kl(s):
    log_q = torch.log_softmax(s["z"].float(), -1)
    log_p = torch.log_softmax(t_src.float(), -1)
    loss = LigerKLDIVLoss(reduction="sum", log_target=True)(log_q, log_p)
    loss.backward()
    return loss.detach()


rows = [("eager forward KL", eager_fkl, None), ("ours forward KL", ours_fkl, 10),
        ("eager top-k KL (k=%d)" % TOPK, eager_topk, None), ("ours top-k KL (k=%d)" % TOPK, ours_topk, 6)]
if LigerKLDIVLoss is not None:
    rows.append(("liger KLDiv (+log_softmax)", liger_kl, None))
results = {}
print(f"\nlogits form, {N} x {V} bf16 logits, forward+backward, median of {REPEAT}")
print(f"{'variant':<30}{'ms':>9}{'peak GiB':>10}{'vs eager':>10}{'GB/s':>8}{'of theo':>9}{'of copy':>9}  loss")
for name, fn, bytes_per_entry in rows:
    ms, peak, loss = bench(name, fresh_logits, fn)
    results[name] = ms
    if ms is None:
        print(f"{name:<30}   out of memory")
        continue
    eager_ms = results.get("eager forward KL") if "top-k" not in name else results.get(f"eager top-k KL (k={TOPK})")
    speed = f"{eager_ms / ms:.2f}x" if eager_ms else "-"
    bw = ""
    if bytes_per_entry:
        gbs = bytes_per_entry * N * V / (ms / 1e3) / 1e9
        bw = f"{gbs:>8.0f}{gbs * 1e9 / theo:>9.2f}" if theo else f"{gbs:>8.0f}{'-':>9}"
        bw += f"{gbs * 1e9 / copy:>9.2f}"
    print(f"{name:<30}{ms:>9.2f}{peak:>10.2f}{speed:>10}{bw:>26}  {loss:.6g}")
del z_src, t_src

# ---- fused-linear form: hidden states [N, H] and LM heads [V, H] ----------------------------------------------------
h_src = torch.randn(N, H, generator=g, device=dev).to(dt)
w_src = (torch.randn(V, H, generator=g, device=dev) / H ** 0.5).to(dt)
th = torch.randn(N, H, generator=g, device=dev).to(dt)
tw = (torch.randn(V, H, generator=g, device=dev) / H ** 0.5).to(dt)
with torch.no_grad():
    lp = torch.log_softmax((th @ tw.t()).float(), -1)
    vals, ids = lp.topk(TOPK, -1)
    tail = torch.logsumexp(lp.scatter_(-1, ids, float("-inf")), -1)
    del lp
ids, vals = ids.to(torch.int32), vals.to(torch.float16)


def fresh_hidden():
    return {"h": h_src.clone().requires_grad_(), "w": w_src.clone().requires_grad_()}


def eager_linear_fkl(s):
    log_q = torch.log_softmax((s["h"] @ s["w"].t()).float(), -1)
    with torch.no_grad():
        log_p = torch.log_softmax((th @ tw.t()).float(), -1)
    loss = torch.nn.functional.kl_div(log_q, log_p, reduction="sum", log_target=True)
    loss.backward()
    return loss.detach()


def ours_linear_fkl(s):
    loss = K.fused_linear_forward_kl_loss(s["h"], s["w"], th, tw, num_items=1)
    loss.backward()
    return loss.detach()


def ours_linear_topk(s):
    loss = K.fused_linear_topk_kl_loss(s["h"], s["w"], ids, vals, tail, tail="bucket", num_items=1)
    loss.backward()
    return loss.detach()


def liger_linear_jsd(s):
    try:
        jsd = LigerFusedLinearJSD(jsd_beta=0.0)  # beta=0: forward KL in recent Liger versions
        loss = jsd(s["h"], s["w"], th, tw)
    except (AssertionError, ValueError):
        jsd = LigerFusedLinearJSD(jsd_beta=0.5)  # older versions need 0 < beta < 1
        loss = jsd(s["h"], s["w"], th, tw)
    loss.backward()
    return loss.detach()


rows = [("eager linear+forward KL", eager_linear_fkl), ("ours fused-linear forward KL", ours_linear_fkl),
        (f"ours fused-linear top-k (k={TOPK})", ours_linear_topk)]
if LigerFusedLinearJSD is not None:
    rows.append(("liger fused-linear JSD", liger_linear_jsd))
print(f"\nfused-linear form, hidden {N} x {H}, head {V} x {H}, bf16, forward+backward, median of {REPEAT}")
print(f"{'variant':<36}{'ms':>9}{'peak GiB':>10}{'vs eager':>10}  loss (liger JSD is mean-reduced)")
eager_ms = None
for name, fn in rows:
    ms, peak, loss = bench(name, fresh_hidden, fn)
    if ms is None:
        print(f"{name:<36}   out of memory")
        continue
    eager_ms = eager_ms or (ms if name.startswith("eager") else None)
    speed = f"{eager_ms / ms:.2f}x" if eager_ms else "-"
    print(f"{name:<36}{ms:>9.2f}{peak:>10.2f}{speed:>10}  {loss:.6g}")
print("\nbytes-moved model: forward KL reads student and teacher twice and writes the gradient (10 B/entry in bf16);"
      " top-k reads the student twice and writes the gradient (6 B/entry). 'of theo' >= 0.67 meets the 1.5x target.")
EOF
if [[ $status -ne 0 ]]; then
    echo "gpu_check: kernel tests FAILED (see above)" >&2
fi
exit $status
