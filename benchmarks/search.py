"""Architecture search on SmolLM2-135M-Instruct at ~50% of its non-embedding parameters (issue 13, second half).

    .venv/bin/python benchmarks/search.py --bf16          # about 15 min on the 2-core CPU box (AVX512-BF16)
    .venv/bin/python benchmarks/search.py --short-steps 50 --long-steps 400 --batch 16    # where a GPU is lent

Same teacher, data, importance scores, optimizer and held-out windows as ``benchmarks/minitron_table.py`` (its
functions build them, from the same arguments), so the search's winner can be compared with variant (1) of the table
at the same number of tokens. Search space: hidden and intermediate sizes in multiples of ``--width-multiple``,
query/KV heads, all 30 layers, within ``--tolerance`` of ``--ratio`` of the teacher's non-embedding parameters.

1. zero-shot: every candidate pruned with the saved scores and ranked by the LM loss on the calibration blocks right
   after pruning (what ``choose_widths`` and the table's variant (1) use; Model Optimizer stops here);
2. short budget: the ``--top-n`` best distilled for ``--short-steps`` each (forward KL) and re-ranked on the same
   calibration blocks (the search stage's choice);
3. check: the ``--long-top`` best of (2) distilled again from the pruned weights for ``--long-steps`` and measured
   on the held-out windows (a check, not a selection). ``--long-steps`` defaults to the table's first evaluation point
   (49 steps of 4 x 256 at 300k tokens and 6 points), where variant (1)'s held-out perplexity was measured.

Every distillation starts from the same seed and sees the table's training blocks in the table's order (the full
block set goes to the Trainer, so the seeded sampler yields the same batches). Writes ``--out`` (Markdown) and a JSON
of every number beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import minitron_table as table  # the table's data, scores and optimizer settings (this script's folder is on the path)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--top-n", type=int, default=6, help="zero-shot best distilled for the short budget")
    p.add_argument("--short-steps", type=int, default=16, help="optimizer steps of the short budget")
    p.add_argument("--long-top", type=int, default=3, help="short-budget best distilled again for the long budget")
    p.add_argument("--long-steps", type=int, default=None,
                   help="optimizer steps of the long budget (default: the table's first evaluation point)")
    p.add_argument("--width-multiple", type=int, default=64)
    p.add_argument("--table-json", default="benchmarks/results/minitron_table.json",
                   help="the table's JSON: variant (1)'s curve is read from it for the comparison")
    p.add_argument("--out", default="benchmarks/results/search.md")
    args, rest = p.parse_known_args(argv)
    targs = table.parse(rest)  # --tokens, --batch, --seq, --lr, --bf16, --threads, --calib-samples, ... as the table's
    for name in ("top_n", "short_steps", "long_top", "long_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args, targs


def distill_config(targs, data, steps: int, out_dir: str):
    """Variant (1)'s trainer settings (the table's warm-up, computed from the table's full budget) for ``steps``."""
    from hf_minitron.distill import DistillationConfig

    fields = table.trainer_fields(targs, steps, Path(out_dir))
    fields["warmup_steps"] = table.warmup(targs, data.facts["steps"])
    return DistillationConfig(**fields, kd_loss="forward_kl")


def variant_1_at(path: Path, tokens: int):
    """Variant (1)'s held-out NLL at ``tokens`` from the table's JSON, or ``None``."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    run = record.get("runs", {}).get("1")
    point = next((c for c in run["curve"] if c[0] == tokens), None) if run else None
    return None if point is None else {"nll": point[1], "architecture": run["architecture"],
                                       "command": " ".join(record["command"])}


def main(argv=None) -> int:
    args, targs = parse(argv)
    if not table.shared_data_present():
        return 0
    import torch

    if targs.threads:
        torch.set_num_threads(targs.threads)
    from hf_minitron import load_causal_lm
    from hf_minitron.search import budget_from, distilled_losses, kendall_tau, ranks, search_architectures

    t0 = time.perf_counter()
    machine = table.machine_facts()
    teacher, tok = load_causal_lm("default", device="cuda" if torch.cuda.is_available() else None)
    teacher.eval()
    data = table.load_data(tok, targs)
    budget = budget_from(teacher, target_ratio=targs.ratio)
    scores = table.score(teacher, data, tok, targs, 0)
    teacher_nll = table.held_out_nll(teacher, data)[0]
    long_steps = args.long_steps or table.eval_steps(data.facts["steps"], targs.eval_points)[0]
    per_step = targs.batch * targs.seq
    seconds = {"setup": time.perf_counter() - t0}
    print(f"setup {seconds['setup']:.0f}s; teacher held-out ppl {math.exp(teacher_nll):.2f}", flush=True)

    with tempfile.TemporaryDirectory(prefix="search-bench-") as tmp:
        outcome = search_architectures(
            teacher, scores, data.search, budget=budget, tolerance=targs.tolerance, width_multiple=args.width_multiple,
            max_candidates=None, top_n=args.top_n, train_blocks=data.train,
            distill_args=distill_config(targs, data, args.short_steps, f"{tmp}/short"), tokenizer=tok, progress=True)
        top = sorted([c for c in outcome.candidates if c.distill_rank is not None], key=lambda c: c.distill_rank)
        checked = top[: args.long_top]
        t = time.perf_counter()
        long = distilled_losses(teacher, tok, scores, checked, data.train, data.held,
                                distill_config(targs, data, long_steps, f"{tmp}/long"), progress=True)
        seconds["long"] = time.perf_counter() - t
    seconds.update(outcome.seconds)
    seconds["total"] = time.perf_counter() - t0
    long_ranks = ranks([loss for loss, _ in long])
    result = {
        "budget": budget, "enumerated": outcome.enumerated, "teacher_nll": teacher_nll,
        "short": {"steps": args.short_steps, "tokens": args.short_steps * per_step},
        "long": {"steps": long_steps, "tokens": long_steps * per_step},
        "candidates": [c.to_dict(budget) for c in sorted(outcome.candidates, key=lambda c: c.zero_shot_rank)],
        "long_check": [{**c.architecture.targets(), "held_out_nll": loss, "rank": r, "seconds": s}
                       for c, (loss, s), r in zip(checked, long, long_ranks)],
        "kendall_tau": {
            "zero_shot_vs_short": kendall_tau([c.zero_shot_rank for c in top], [c.distill_rank for c in top]),
            "zero_shot_vs_long": kendall_tau([c.zero_shot_rank for c in checked], long_ranks),
            "short_vs_long": kendall_tau([c.distill_rank for c in checked], long_ranks)},
        "short_winner_is_long_winner": long_ranks[0] == 1,
        "zero_shot_winner_is_short_winner": top[0].zero_shot_rank == 1,
        "variant_1": variant_1_at(table.REPO / args.table_json, long_steps * per_step),
        "seconds": seconds, "machine": machine, "command": sys.argv, "args": vars(args), "table_args": vars(targs)}
    out = Path(args.out) if Path(args.out).is_absolute() else table.REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(result, outcome, checked, long, long_ranks))
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    print(out.read_text())
    return 0


def _tau(value) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def markdown(result, outcome, checked, long, long_ranks) -> str:
    budget, m, sec = result["budget"], result["machine"], result["seconds"]
    long_of = {id(c): (loss, r) for c, (loss, _), r in zip(checked, long, long_ranks)}
    lines = ["# Architecture search: SmolLM2-135M-Instruct at 50% of its non-embedding parameters", "",
             f"Command: `.venv/bin/python {' '.join(result['command'])}`", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, device {m['device']}; "
             f"torch {m['torch']}, transformers {m['transformers']}, trl {m['trl']}, commit {m['commit']}. Wall time "
             f"{sec['total'] / 60:.1f} min: setup {sec['setup']:.0f} s, zero-shot ranking {sec['zero_shot']:.0f} s "
             f"({sec['zero_shot'] / len(outcome.candidates):.1f} s per candidate), short distillation "
             f"{sec.get('distill', 0):.0f} s, long check {sec['long']:.0f} s.", "",
             f"{result['enumerated']} architectures within ±5% of {budget:,} non-embedding parameters (all 30 layers). "
             f"Zero-shot: LM loss on the calibration blocks right after pruning. Short: "
             f"{result['short']['tokens']:,} tokens of forward-KL distillation each, re-ranked on the calibration "
             f"blocks. Long check: {result['long']['tokens']:,} tokens, held-out windows (those of the table).", "",
             "| hidden | ffn | heads / kv | params (× budget) | zero-shot loss | rank | short-KD loss | rank | "
             "long-KD held-out ppl | rank |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in sorted(outcome.candidates, key=lambda c: c.zero_shot_rank):
        a = c.architecture
        short = f"{c.distill_loss:.4f} | {c.distill_rank}" if c.distill_rank else "— | —"
        lg = f"{math.exp(long_of[id(c)][0]):.2f} | {long_of[id(c)][1]}" if id(c) in long_of else "— | —"
        lines.append(f"| {a.hidden_size} | {a.intermediate_size} | {a.num_attention_heads} / {a.num_key_value_heads} "
                     f"| {c.params / 1e6:.2f}M ({c.params / budget:.3f}) | {c.zero_shot_loss:.4f} | "
                     f"{c.zero_shot_rank} | {short} | {lg} |")
    tau = result["kendall_tau"]
    winner = checked[0]
    lines += ["", f"- Kendall tau: zero-shot vs short (top {len([c for c in outcome.candidates if c.distill_rank])}) "
              f"{_tau(tau['zero_shot_vs_short'])}; zero-shot vs long (top {len(checked)}) "
              f"{_tau(tau['zero_shot_vs_long'])}; short vs long {_tau(tau['short_vs_long'])}.",
              f"- The zero-shot winner is the short-budget winner: {result['zero_shot_winner_is_short_winner']}. "
              f"The short-budget winner is the long-budget winner: {result['short_winner_is_long_winner']}.",
              f"- Held-out perplexity: teacher {math.exp(result['teacher_nll']):.2f}; the search's choice "
              f"({winner.architecture.hidden_size} / {winner.architecture.intermediate_size} / "
              f"{winner.architecture.num_attention_heads} / {winner.architecture.num_key_value_heads}) after "
              f"{result['long']['tokens']:,} tokens {math.exp(long_of[id(winner)][0]):.2f}."]
    v1 = result["variant_1"]
    if v1:
        a = v1["architecture"]
        lines.append(f"- Variant (1) of the table (zero-shot widths {a['hidden_size']} / {a['intermediate_size']} / "
                     f"{a['num_attention_heads']} / {a['num_key_value_heads']}, the same data order, optimizer and "
                     f"windows) at the same {result['long']['tokens']:,} tokens: {math.exp(v1['nll']):.2f}.")
    else:
        lines.append("- Variant (1) of the table: no table JSON with a point at this token count, no comparison.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
