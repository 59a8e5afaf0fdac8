"""Peak memory of importance scoring with the default settings (SmolLM2-135M-Instruct, CPU), next to the estimate.

    python benchmarks/importance_memory.py [--num-samples 8] [--packing] [--threads 1]

Each run is its own process: it loads the model, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``),
runs :func:`estimate_importance` with the default ``batch_size``, ``seq_len`` and ``depth_criteria`` on
``../shared/data/c4_calib.jsonl``, and reports its peak resident memory (``VmHWM``) during scoring and over the whole
process (loading included). ``--num-samples`` caps the number of samples (the default 1024 would take hours on a CPU;
the peak is reached by the largest batch, so one full batch measures it): with the default documents
(``packing=False``) the batch is the longest documents, each cut at ``seq_len``; ``--packing`` scores full blocks of
``seq_len`` tokens, the largest batch the defaults can form. Printed next to :func:`scoring_memory`'s estimate for
the batch the run really formed.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GIB = 1 << 30


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def child(args) -> dict:
    import torch

    from hf_minitron.importance import estimate_importance, scoring_memory
    from hf_minitron.loading import load_causal_lm

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_causal_lm(args.model)
    defaults = {k: v.default for k, v in inspect.signature(estimate_importance).parameters.items()
                if v.default is not inspect.Parameter.empty}
    after_load = _status_kib("VmRSS") * 1024
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
        f.write("5")
    t0 = time.perf_counter()
    scores = estimate_importance(model, args.calib, tokenizer=tok, num_samples=args.num_samples, packing=args.packing)
    seconds = time.perf_counter() - t0
    scoring_peak = _status_kib("VmHWM") * 1024
    cal, settings = scores.manifest["calibration"], scores.manifest["settings"]
    est = scoring_memory(model, settings["batch_size"], cal["seq_len"])
    return {"batch_size": settings["batch_size"], "seq_len_default": defaults["seq_len"], "longest_row": cal["seq_len"],
            "depth_criteria": settings["depth_criteria"], "packing": cal["packing"], "samples": cal["samples"],
            "tokens": cal["tokens"], "seconds": seconds, "rss_after_load": after_load, "scoring_peak": scoring_peak,
            "process_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "estimate_total": est.total, "estimate_transient": est.transient, "estimate_weights": est.weights}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model dir / Hub id / .gguf (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--calib", default=str(SHARED / "c4_calib.jsonl"))
    p.add_argument("--num-samples", type=int, default=8, help="cap on the samples scored (one default batch)")
    p.add_argument("--packing", action="store_true", help="packed blocks of seq_len tokens (the largest batch)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    cmd = [sys.executable, __file__, "--child", "--calib", args.calib, "--num-samples", str(args.num_samples)]
    cmd += (["--model", args.model] if args.model else []) + (["--packing"] if args.packing else [])
    cmd += ["--threads", str(args.threads)] if args.threads else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    r = json.loads(out)
    runtime = r["rss_after_load"] - r["estimate_weights"]  # interpreter, libraries, tokenizer
    print(f"defaults: batch_size {r['batch_size']}, seq_len {r['seq_len_default']}, depth_criteria "
          f"{r['depth_criteria']}, packing {r['packing']}; scored {r['samples']} samples, {r['tokens']:,} tokens "
          f"(largest batch {r['batch_size']} x {r['longest_row']}) in {r['seconds']:.0f} s")
    print("| | measured GiB | estimate GiB |\n|---|---|---|")
    load, weights = r["rss_after_load"] / GIB, r["estimate_weights"] / GIB
    print(f"| RSS after loading the model | {load:.2f} | weights {weights:.2f} |")
    print(f"| peak RSS while scoring | {r['scoring_peak'] / GIB:.2f} | {(r['estimate_total'] + runtime) / GIB:.2f} "
          "(estimate + the runtime's own RSS) |")
    print(f"| scoring peak above the loaded model | {(r['scoring_peak'] - r['rss_after_load']) / GIB:.2f} | "
          f"{r['estimate_transient'] / GIB:.2f} |")
    print(f"| peak RSS of the process (loading included) | {r['process_peak'] / GIB:.2f} | - |")


if __name__ == "__main__":
    main()
