"""Perplexity after pruning SmolLM2-135M-Instruct, before any recovery training.

    python benchmarks/prune_quality.py [--model DIR] [--num-samples 8] [--loss-num-samples 2] [--eval-blocks 4]

Calibration: ``../shared/data/c4_calib.jsonl`` packed into ``--num-samples`` blocks of ``--seq-len`` tokens (width
scores and Block Influence); the LM-loss and contiguous-block criteria use the first ``--loss-num-samples`` of them.
Evaluation: held-out perplexity on the last 10% of the articles of ``../shared/data/wiki_train.txt``
(``--eval-blocks`` blocks). Rows: the teacher; dropping ``--drop`` of the 30 layers by each depth criterion; width
pruning of the MLP to the same parameter count as the depth-pruned models.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch

from hf_minitron.arch import count_parameters, get_adapter
from hf_minitron.data import load_texts, split_held_out, token_blocks
from hf_minitron.evaluation import perplexity
from hf_minitron.importance import estimate_importance
from hf_minitron.loading import load_causal_lm
from hf_minitron.pruning import DEPTH_PREFERENCE, prune_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model dir / Hub id / .gguf (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--calib", default=str(SHARED / "c4_calib.jsonl"))
    p.add_argument("--eval", default=str(SHARED / "wiki_train.txt"))
    p.add_argument("--num-samples", type=int, default=8)
    p.add_argument("--loss-num-samples", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--eval-blocks", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--drop", type=int, default=15)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    model, tok = load_causal_lm(args.model)
    model.eval()
    calib = token_blocks(load_texts(args.calib), tok, args.seq_len, args.num_samples)
    _, held_out = split_held_out(load_texts(args.eval), 0.1)
    eval_blocks = token_blocks(held_out, tok, args.seq_len, args.eval_blocks)
    scores = estimate_importance(model, calib, batch_size=args.batch_size, depth_criteria=("block_influence", "lm_loss"),
                                 block_sizes=(args.drop,), loss_num_samples=args.loss_num_samples, progress=True)
    L = get_adapter(model).num_layers
    keep = L - args.drop
    default = next(c for c in DEPTH_PREFERENCE if c in scores.available_depth_criteria(args.drop))

    rows = [("teacher", "-", L, count_parameters(model)[0], perplexity(model, eval_blocks, args.batch_size))]
    depth_params = None
    for criterion in ("block_influence", "lm_loss", "block"):
        dropped = scores.layers_to_drop(args.drop, criterion)
        pruned = prune_model(model, {"num_hidden_layers": keep, "depth_criterion": criterion}, scores)
        depth_params = count_parameters(pruned)[0]
        label = f"depth: {criterion}" + (" (default)" if criterion == default else "")
        rows.append((label, f"drop {dropped}", keep, depth_params, perplexity(pruned, eval_blocks, args.batch_size)))
        del pruned
    s = get_adapter(model).sizes()
    per_neuron = 3 * s.hidden_size * L  # gate + up rows and a down column in every layer
    ffn = s.intermediate_size - round((count_parameters(model)[0] - depth_params) / per_neuron)
    pruned = prune_model(model, {"intermediate_size": ffn}, scores)
    rows.append(("width: MLP", f"intermediate_size {s.intermediate_size} -> {ffn}", L, count_parameters(pruned)[0],
                 perplexity(pruned, eval_blocks, args.batch_size)))

    print(f"\ncalibration: {calib.shape[0]} x {args.seq_len} tokens of c4_calib (LM-loss/block criteria: first "
          f"{args.loss_num_samples}); eval: {eval_blocks.shape[0]} x {args.seq_len} held-out wiki_train tokens; "
          f"{time.perf_counter() - t0:.0f} s in all")
    print("| model | pruning | layers | parameters | held-out ppl |\n|---|---|---|---|---|")
    for label, what, layers, params, ppl in rows:
        print(f"| {label} | {what} | {layers} | {params / 1e6:.1f}M | {ppl:.1f} |")


if __name__ == "__main__":
    main()
