"""Forward+backward of the distillation loss: eager PyTorch vs hf-minitron's chunked path, side by side.

    .venv/bin/python benchmarks/kd_loss.py                      # 8192 tokens, vocab 49152, fp32, CPU
    .venv/bin/python benchmarks/kd_loss.py --tokens 2048 --variants eager,chunked

Each variant runs in its own subprocess (so one variant's allocations never hide another's peak). A subprocess builds
the ``[tokens, vocab]`` student and teacher logits, records its resident memory, runs forward+backward ``--repeat``
times and reports the best time and its peak resident memory (the kernel's VmHWM, reset once the inputs exist). "loss
peak" is that peak above the memory held right after the inputs were built: what the loss itself costs (its working
memory and the gradient it returns); "process peak" includes the inputs. The ratios are eager / variant.

To add a variant, register a function ``(student, teacher, mask) -> scalar loss`` in ``VARIANTS`` (it must give the
same sum over counted tokens as "eager"; the script checks the values agree).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch


def eager(student, teacher, mask):
    """The textbook path: log_softmax of the full student and teacher logits, then kl_div (sum over counted tokens)."""
    log_q = torch.log_softmax(student.float(), dim=-1)
    log_p = torch.log_softmax(teacher.float(), dim=-1)
    per_token = torch.nn.functional.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    return per_token[mask].sum()


def chunked(student, teacher, mask):
    """hf-minitron's dispatch (token-chunked fp32 math, gradient computed chunk by chunk)."""
    from hf_minitron.distill.losses import distillation_loss

    return distillation_loss(student, teacher, mask, kind="forward_kl").loss


VARIANTS = {"eager": eager, "chunked": chunked}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0); False where unavailable."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_bytes(reset_ok: bool) -> int:
    if reset_ok:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_variant(name: str, tokens: int, vocab: int, dtype: str, repeat: int, seed: int = 0) -> dict:
    """Run one variant in this process and return its measurements."""
    fn = VARIANTS[name]
    warm = torch.randn(4, vocab, requires_grad=True)  # imports and first-call setup stay out of the measurement
    fn(warm, torch.randn(4, vocab), torch.ones(4, dtype=torch.bool)).backward()
    gen = torch.Generator().manual_seed(seed)
    dt = getattr(torch, dtype)
    student = (2.0 * torch.randn(tokens, vocab, generator=gen)).to(dt).requires_grad_(True)
    teacher = (2.0 * torch.randn(tokens, vocab, generator=gen)).to(dt)
    mask = torch.rand(tokens, generator=gen) > 0.05  # a few ignored positions, as padding would give
    base = _rss_bytes()
    reset_ok = _reset_peak()  # the peak from here on is what the loss costs on top of its inputs
    times, value = [], None
    for _ in range(repeat):
        student.grad = None
        start = time.perf_counter()
        loss = fn(student, teacher, mask)
        loss.backward()
        times.append(time.perf_counter() - start)
        value = loss.item()
        del loss
    peak = _peak_bytes(reset_ok)  # before the float64 check below, which makes its own copy
    grad_norm = student.grad.double().norm().item()
    return {"variant": name, "seconds": min(times), "peak_bytes": peak, "base_bytes": base,
            "loss_peak_bytes": peak - base, "loss": value, "grad_norm": grad_norm}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads in every variant (default: torch's)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(run_variant(args.worker, args.tokens, args.vocab, args.dtype, args.repeat)))
        return 0

    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    print(f"kd loss forward+backward: {args.tokens} tokens x vocab {args.vocab}, {args.dtype}, CPU, "
          f"{torch.get_num_threads()} threads, best of {args.repeat}")
    results = []
    for name in names:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--tokens", str(args.tokens),
               "--vocab", str(args.vocab), "--dtype", args.dtype, "--repeat", str(args.repeat),
               "--threads", str(torch.get_num_threads())]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    ref = results[0]
    gib = 1024**3
    print(f"{'variant':<12}{'time s':>9}{'loss peak GiB':>15}{'process peak GiB':>18}{'time ratio':>12}"
          f"{'loss-peak ratio':>17}{'process-peak ratio':>20}")
    for r in results:
        print(f"{r['variant']:<12}{r['seconds']:>9.3f}{r['loss_peak_bytes'] / gib:>15.2f}{r['peak_bytes'] / gib:>18.2f}"
              f"{ref['seconds'] / r['seconds']:>12.2f}{ref['loss_peak_bytes'] / max(r['loss_peak_bytes'], 1):>17.2f}"
              f"{ref['peak_bytes'] / r['peak_bytes']:>20.2f}")
        rel = abs(r["loss"] - ref["loss"]) / max(abs(ref["loss"]), 1e-12)
        grel = abs(r["grad_norm"] - ref["grad_norm"]) / max(ref["grad_norm"], 1e-12)
        if rel > 1e-4 or grel > 1e-3:
            print(f"  WARNING: {r['variant']} disagrees with {ref['variant']}: loss rel diff {rel:.2e}, "
                  f"grad-norm rel diff {grel:.2e}")
    print("ratios are eager / variant (higher is better for the variant)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
