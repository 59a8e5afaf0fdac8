"""Architecture search on SmolLM2-135M-Instruct at ~50% of its non-embedding parameters (issue 13, second half).

    .venv/bin/python benchmarks/search.py                     # defaults below; about 15 min on the 2-core CPU box
    .venv/bin/python benchmarks/search.py --short-steps 50 --long-steps 400 --batch 8    # where a GPU is lent

Teacher: the embedded SmolLM2-135M-Instruct GGUF. Data: ``../shared/data/c4_calib.jsonl``; its last 10% of documents
are held out (the evaluation blocks, never scored on or trained on); importance scores come from ``--calib-blocks``
blocks of the rest. Search space: hidden and intermediate sizes in multiples of 64, query/KV heads, all 30 layers,
within 5% of half the teacher's non-embedding parameters. Every candidate is ranked zero-shot (held-out LM loss
right after pruning); the top ``--top-n`` are distilled for ``--short-steps`` (the search's budget) and again, from
scratch, for ``--long-steps`` (the check), each with forward KL, the same training blocks in the same order and the
same seed. Prints every candidate's ranks, Kendall's tau between the rankings, whether the short-budget winner is the
long-budget winner, the winner's held-out perplexity and wall times.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CALIB = Path(__file__).resolve().parents[2] / "shared" / "data" / "c4_calib.jsonl"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=0.5, help="budget: fraction of the teacher's non-embedding params")
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--width-multiple", type=int, default=64)
    p.add_argument("--calib-blocks", type=int, default=32, help="blocks the importance scores are computed on")
    p.add_argument("--eval-blocks", type=int, default=8, help="held-out blocks every loss is measured on")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--top-n", type=int, default=3)
    p.add_argument("--short-steps", type=int, default=5)
    p.add_argument("--long-steps", type=int, default=15)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def distill_args(out_dir: str, steps: int, args):
    import torch

    from hf_minitron.distill import DistillationConfig

    return DistillationConfig(
        output_dir=out_dir, use_cpu=not torch.cuda.is_available(), bf16=False, max_steps=steps,
        per_device_train_batch_size=args.batch, learning_rate=args.lr, lr_scheduler_type="constant", weight_decay=0.0,
        report_to=[], save_strategy="no", max_length=args.seq, seed=args.seed, disable_tqdm=True,
        logging_steps=max(1, steps))


def main(argv=None) -> int:
    args = parse(argv)
    if not CALIB.is_file():
        print(f"{CALIB} is absent: this benchmark needs the workspace's shared/data folder; skipped", file=sys.stderr)
        return 0
    import torch

    torch.set_num_threads(args.threads)
    from hf_minitron import load_causal_lm
    from hf_minitron.data import load_texts, split_held_out, token_blocks
    from hf_minitron.importance import estimate_importance
    from hf_minitron.search import budget_from, distilled_losses, ranks, search_architectures

    t0 = time.perf_counter()
    teacher, tok = load_causal_lm("default")
    train_texts, held_texts = split_held_out(load_texts(CALIB), 0.1)
    held = token_blocks(held_texts, tok, args.seq, args.eval_blocks)
    calib = token_blocks(train_texts, tok, args.seq, args.calib_blocks)
    need = max(args.short_steps, args.long_steps) * args.batch
    train = token_blocks(train_texts, tok, args.seq, need)
    scores = estimate_importance(teacher, calib, batch_size=4, depth_criteria=("block_influence",))
    from hf_minitron.evaluation import mean_nll

    teacher_loss = mean_nll(teacher, held)
    t_setup = time.perf_counter() - t0
    print(f"setup {t_setup:.0f}s: {calib.shape[0]}x{args.seq} calibration tokens, {held.shape[0]}x{args.seq} "
          f"held-out, {train.shape[0]}x{args.seq} training; teacher held-out ppl {math.exp(teacher_loss):.2f}",
          flush=True)

    budget = budget_from(teacher, target_ratio=args.ratio)
    with tempfile.TemporaryDirectory() as tmp:
        t1 = time.perf_counter()
        outcome = search_architectures(
            teacher, scores, held, budget=budget, tolerance=args.tolerance, width_multiple=args.width_multiple,
            max_candidates=None, top_n=args.top_n, train_blocks=train[: args.short_steps * args.batch],
            distill_args=distill_args(f"{tmp}/short", args.short_steps, args), tokenizer=tok, progress=True)
        t_search = time.perf_counter() - t1
        top = sorted([c for c in outcome.candidates if c.distill_rank is not None], key=lambda c: c.zero_shot_rank)
        t2 = time.perf_counter()
        long = distilled_losses(teacher, tok, scores, top, train[: args.long_steps * args.batch], held,
                                distill_args(f"{tmp}/long", args.long_steps, args), progress=True)
        t_long = time.perf_counter() - t2
    long_ranks = ranks([loss for loss, _ in long])
    report(args, outcome, top, long, long_ranks, budget, teacher_loss,
           {"setup": t_setup, "search": t_search, "long": t_long})
    return 0


def report(args, outcome, top, long, long_ranks, budget, teacher_loss, seconds) -> None:
    from hf_minitron.search import kendall_tau

    print(f"\nbudget {budget:,} non-embedding params ({args.ratio:.0%} of {outcome.teacher_params:,}) +- "
          f"{args.tolerance:.0%}: {outcome.enumerated} candidates (width multiple {args.width_multiple}, all 30 layers)")
    print(f"distillation: top {args.top_n}, {args.short_steps} steps (short) and {args.long_steps} steps (long) of "
          f"{args.batch} x {args.seq} tokens, forward KL, lr {args.lr} constant, seed {args.seed}\n")
    long_of = {id(c): (loss, r) for c, (loss, _), r in zip(top, long, long_ranks)}
    print("| hidden | ffn | heads / kv | params (x budget) | zero-shot loss | rank | short-KD loss | rank "
          "| long-KD loss | rank |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in sorted(outcome.candidates, key=lambda c: c.zero_shot_rank):
        a = c.architecture
        short = f"{c.distill_loss:.4f} | {c.distill_rank}" if c.distill_rank else "— | —"
        lg = f"{long_of[id(c)][0]:.4f} | {long_of[id(c)][1]}" if id(c) in long_of else "— | —"
        print(f"| {a.hidden_size} | {a.intermediate_size} | {a.num_attention_heads} / {a.num_key_value_heads} | "
              f"{c.params / 1e6:.2f}M ({c.params / budget:.3f}) | {c.zero_shot_loss:.4f} | {c.zero_shot_rank} | "
              f"{short} | {lg} |")
    zs = [c.zero_shot_rank for c in top]
    short_r = [c.distill_rank for c in top]
    winner_short = top[short_r.index(1)]
    winner_long = top[long_ranks.index(1)]
    print(f"\nKendall tau (top {len(top)}): zero-shot vs short {_fmt(kendall_tau(zs, short_r))}, "
          f"zero-shot vs long {_fmt(kendall_tau(zs, long_ranks))}, short vs long {_fmt(kendall_tau(short_r, long_ranks))}")
    print(f"short-budget winner is the long-budget winner: {winner_short is winner_long}; zero-shot winner is the "
          f"long-budget winner: {top[0] is winner_long}")
    print(f"held-out perplexity: teacher {math.exp(teacher_loss):.2f}; chosen (short) after the short budget "
          f"{math.exp(winner_short.distill_loss):.2f}, after the long budget {math.exp(long_of[id(winner_short)][0]):.2f}")
    print(f"wall time: setup {seconds['setup']:.0f}s, zero-shot ranking {outcome.seconds['zero_shot']:.0f}s "
          f"({outcome.seconds['zero_shot'] / len(outcome.candidates):.1f}s/candidate), short distillation "
          f"{outcome.seconds.get('distill', 0):.0f}s, long distillation {seconds['long']:.0f}s")


def _fmt(tau) -> str:
    return "n/a" if tau is None else f"{tau:+.2f}"


if __name__ == "__main__":
    sys.exit(main())
