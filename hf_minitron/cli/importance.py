"""``hf-minitron importance MODEL --calib FILE --out SCORES_DIR``: score heads, neurons, channels and layers."""

from __future__ import annotations

import argparse

COMMAND = "importance"
HELP = "Estimate activation-based importance (heads, neurons, embedding channels, layers) on calibration data."
ORDER = 20


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()] if text else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hf-minitron importance", description=HELP)
    parser.add_argument("model", help="Hub id, local directory or .gguf file ('default': the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--calib", required=True, help="calibration texts: .txt (one per line), .json/.jsonl, or a datasets name")
    parser.add_argument("--out", required=True, help="directory for importance.safetensors + manifest.json")
    parser.add_argument("--text-field", default="text", help="record field holding the text (json/jsonl/datasets)")
    parser.add_argument("--num-samples", type=int, default=1024, help="packed calibration blocks (default: 1024)")
    parser.add_argument("--seq-len", type=int, default=4096, help="tokens per block (default: 4096)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--depth-criteria", default="block_influence,lm_loss",
                        help="comma list of block_influence, lm_loss, block (default: block_influence,lm_loss)")
    parser.add_argument("--block-sizes", type=_ints, default=[],
                        help="comma list of layer counts for the contiguous-block search, e.g. 8,12")
    parser.add_argument("--loss-num-samples", type=int, default=64, help="blocks used by the LM-loss depth passes")
    parser.add_argument("--aggregation", default="mean,l2", help="SEQ,BATCH aggregation, each mean|l2|var")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    parser.add_argument("--device", default=None, help="e.g. cuda, cpu (default: where the model loads)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)

    from ..loading import check_output_dir, load_causal_lm

    try:
        out = check_output_dir(args.out, overwrite=args.overwrite, name="--out", fix="pass --overwrite")
    except FileExistsError as e:
        parser.error(str(e))
    criteria = [c.strip() for c in args.depth_criteria.split(",") if c.strip()]

    from ..importance import DEPTH_CRITERIA, Aggregation, estimate_importance

    bad = [c for c in criteria if c not in DEPTH_CRITERIA]
    if bad:
        parser.error(f"--depth-criteria: unknown {bad}; choose from {', '.join(DEPTH_CRITERIA)}")
    if "block" in criteria and not args.block_sizes:
        parser.error("--depth-criteria block needs --block-sizes, e.g. --block-sizes 8")
    try:
        aggregation = Aggregation.parse(args.aggregation)
    except (ValueError, TypeError) as err:
        parser.error(f"--aggregation: {err}")
    model, tokenizer = load_causal_lm(args.model, dtype=args.dtype, device=args.device,
                                      trust_remote_code=args.trust_remote_code)
    scores = estimate_importance(
        model, args.calib, tokenizer=tokenizer, batch_size=args.batch_size, seq_len=args.seq_len,
        num_samples=args.num_samples, depth_criteria=criteria, block_sizes=args.block_sizes,
        loss_num_samples=args.loss_num_samples, aggregation=aggregation, text_field=args.text_field, progress=True,
    )
    path = scores.save(out, overwrite=args.overwrite)
    cal = scores.manifest["calibration"]
    print(f"scored {cal['samples']} samples ({cal['tokens']:,} tokens); scores written to {path}")
    if scores.base_loss is not None:
        print(f"calibration LM loss: {scores.base_loss:.4f}")
    for name, values in scores.depth.items():
        print(f"{name}: least important layers first: {values.argsort().tolist()}")
    for n, losses in scores.block_losses.items():
        start = int(losses.argmin())
        print(f"block search, {n} layers: drop {start}..{start + n - 1} (loss {float(losses[start]):.4f})")
    return 0
