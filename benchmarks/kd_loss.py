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


# --- top-k and fused-linear paths (hf_minitron.kernels.topk_kl) ---------------------------------------------------
# These variants start where a model is before its logits exist: the student's last hidden states [tokens, hidden]
# and LM head [vocab, hidden], and the teacher's top-k statistics (ids, log-probs, tail mass, as an offline teacher
# cache holds them) or its hidden states and head. "eager_linear" is the eager PyTorch baseline from the same inputs
# plus the teacher's [tokens, vocab] logits: logits = h W^T, log_softmax of both, kl_div. Gradients flow to h and W.

def eager_linear(inp):
    """Eager PyTorch: full student logits, log_softmax of student and teacher logits, kl_div."""
    log_q = torch.log_softmax(inp["hidden"] @ inp["weight"].t(), dim=-1)
    log_p = torch.log_softmax(inp["teacher_logits"], dim=-1)
    per_token = torch.nn.functional.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    return per_token[inp["mask"]].sum()


def eager_topk(inp):
    """Eager PyTorch top-k KL (bucket tail): full student logits and log_softmax, gather, tail by logsumexp."""
    from hf_minitron.kernels.topk_kl import topk_kl_reference

    return topk_kl_reference(inp["hidden"] @ inp["weight"].t(), inp["ids"], inp["logprobs"], inp["tail"],
                             valid=inp["mask"], num_items=1)


def topk_logits(inp):
    """Ours over materialised logits: h W^T, then the top-k kernel path (gradient written over the logits)."""
    from hf_minitron.kernels.topk_kl import topk_kl_loss

    return topk_kl_loss(inp["hidden"] @ inp["weight"].t(), inp["ids"], inp["logprobs"], inp["tail"],
                        valid=inp["mask"], num_items=1)


def fused_topk(inp):
    """Ours, fused-linear top-k: the logits exist one token chunk at a time."""
    from hf_minitron.kernels.topk_kl import fused_linear_topk_kl_loss

    return fused_linear_topk_kl_loss(inp["hidden"], inp["weight"], inp["ids"], inp["logprobs"], inp["tail"],
                                     valid=inp["mask"], num_items=1)


def fused_fkl(inp):
    """Ours, fused-linear full-vocabulary forward KL from the teacher's hidden states and head (chunked both sides)."""
    from hf_minitron.kernels.topk_kl import fused_linear_forward_kl_loss

    return fused_linear_forward_kl_loss(inp["hidden"], inp["weight"], inp["teacher_hidden"], inp["teacher_weight"],
                                        valid=inp["mask"], num_items=1)


LINEAR_VARIANTS = {"eager_linear": eager_linear, "eager_topk": eager_topk, "topk_logits": topk_logits,
                   "fused_topk": fused_topk, "fused_fkl": fused_fkl}


def run_linear_variant(name: str, tokens: int, vocab: int, hidden: int, k: int, repeat: int, seed: int = 0) -> dict:
    """Like ``run_variant`` for the hidden-state variants. Teacher statistics are built chunk by chunk (no
    ``[tokens, vocab]`` tensor) except the teacher logits the eager baseline needs."""
    gen = torch.Generator().manual_seed(seed)
    scale = 4.0 / hidden ** 0.5  # logits of std ~4, as a trained LM head gives
    h = torch.randn(tokens, hidden, generator=gen).requires_grad_(True)
    w = (scale * torch.randn(vocab, hidden, generator=gen)).requires_grad_(True)
    th = torch.randn(tokens, hidden, generator=gen)
    tw = scale * torch.randn(vocab, hidden, generator=gen)
    mask = torch.rand(tokens, generator=gen) > 0.05
    ids = torch.empty(tokens, k, dtype=torch.int32)
    logprobs = torch.empty(tokens, k, dtype=torch.float16)
    tail = torch.empty(tokens)
    with torch.no_grad():
        for a in range(0, tokens, 512):
            lp = torch.log_softmax(th[a:a + 512] @ tw.t(), dim=-1)
            vals, top = lp.topk(k, dim=-1)
            ids[a:a + 512], logprobs[a:a + 512] = top, vals
            tail[a:a + 512] = torch.logsumexp(lp.scatter_(-1, top, float("-inf")), dim=-1)
            del lp
        teacher_logits = th @ tw.t() if name == "eager_linear" else None
    inp = {"hidden": h, "weight": w, "teacher_hidden": th, "teacher_weight": tw, "mask": mask, "ids": ids,
           "logprobs": logprobs, "tail": tail, "teacher_logits": teacher_logits}
    fn = LINEAR_VARIANTS[name]
    warm = {**inp, **{key: inp[key][:4] for key in ("hidden", "teacher_hidden", "mask", "ids", "logprobs", "tail")}}
    warm["hidden"] = warm["hidden"].detach().requires_grad_(True)
    if teacher_logits is not None:
        warm["teacher_logits"] = teacher_logits[:4]
    fn(warm).backward()  # imports and first-call setup stay out of the measurement
    base = _rss_bytes()
    reset_ok = _reset_peak()
    times, value = [], None
    for _ in range(repeat):
        h.grad = w.grad = None
        start = time.perf_counter()
        loss = fn(inp)
        loss.backward()
        times.append(time.perf_counter() - start)
        value = loss.item()
        del loss
    peak = _peak_bytes(reset_ok)
    grad_norm = (h.grad.double().norm() ** 2 + w.grad.double().norm() ** 2).sqrt().item()
    return {"variant": name, "seconds": min(times), "peak_bytes": peak, "base_bytes": base,
            "loss_peak_bytes": peak - base, "loss": value, "grad_norm": grad_norm}


def linear_main(args) -> int:
    """Second table: the hidden-state variants, ratios against eager_linear (top-k rows also against eager_topk)."""
    names = [n.strip() for n in args.linear_variants.split(",") if n.strip()]
    if not names:
        return 0
    unknown = [n for n in names if n not in LINEAR_VARIANTS]
    if unknown:
        print(f"unknown linear variants {unknown}; choose from {sorted(LINEAR_VARIANTS)}", file=sys.stderr)
        return 1
    print(f"\nfrom hidden states: {args.tokens} tokens x hidden {args.hidden}, head {args.vocab} x {args.hidden}, "
          f"teacher top-{args.top_k} (bucket tail) or full logits, {torch.get_num_threads()} threads, "
          f"best of {args.repeat}")
    results = {}
    for name in names:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--tokens", str(args.tokens),
               "--vocab", str(args.vocab), "--hidden", str(args.hidden), "--top-k", str(args.top_k),
               "--repeat", str(args.repeat), "--threads", str(torch.get_num_threads())]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = results.get("eager_linear") or next(iter(results.values()))
    gib = 1024**3
    print(f"{'variant':<14}{'time s':>9}{'loss peak GiB':>15}{'process peak GiB':>18}{'time ratio':>12}"
          f"{'loss-peak ratio':>17}  loss")
    for r in results.values():
        print(f"{r['variant']:<14}{r['seconds']:>9.3f}{r['loss_peak_bytes'] / gib:>15.2f}{r['peak_bytes'] / gib:>18.2f}"
              f"{ref['seconds'] / r['seconds']:>12.2f}{ref['loss_peak_bytes'] / max(r['loss_peak_bytes'], 1):>17.2f}"
              f"  {r['loss']:.6g}")
    topk = [r for n, r in results.items() if n in ("eager_topk", "topk_logits", "fused_topk")]
    if topk and max(r["loss"] for r in topk) - min(r["loss"] for r in topk) > 1e-4 * abs(topk[0]["loss"]):
        print("  WARNING: the top-k variants disagree on the loss value")
    print("ratios are eager_linear / variant; the top-k rows compute the top-k loss, the others the full forward KL")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads in every variant (default: torch's)")
    parser.add_argument("--hidden", type=int, default=576, help="hidden size of the hidden-state variants")
    parser.add_argument("--top-k", type=int, default=64, help="teacher ids per token of the top-k variants")
    parser.add_argument("--linear-variants", default=",".join(LINEAR_VARIANTS),
                        help="hidden-state (top-k / fused-linear) variants; '' skips them")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker in LINEAR_VARIANTS:
        print(json.dumps(run_linear_variant(args.worker, args.tokens, args.vocab, args.hidden, args.top_k,
                                            args.repeat)))
        return 0
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
    return linear_main(args)


if __name__ == "__main__":
    sys.exit(main())
