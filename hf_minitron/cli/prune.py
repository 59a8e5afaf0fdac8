"""``hf-minitron prune MODEL --scores DIR --hidden-size N ... --out DIR``: prune to a target architecture."""

from __future__ import annotations

import argparse
import json

COMMAND = "prune"
HELP = "Prune a model to a target architecture (width and/or depth) using saved importance scores."
ORDER = 30


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hf-minitron prune", description=HELP)
    parser.add_argument("model", help="Hub id, local directory or .gguf file ('default': the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--scores", default=None, help="directory written by `hf-minitron importance`")
    parser.add_argument("--out", required=True, help="output directory (a standard Hugging Face checkpoint)")
    parser.add_argument("--hidden-size", type=int)
    parser.add_argument("--intermediate-size", type=int)
    parser.add_argument("--num-heads", type=int, dest="num_attention_heads")
    parser.add_argument("--num-kv-heads", type=int, dest="num_key_value_heads")
    depth = parser.add_mutually_exclusive_group()
    depth.add_argument("--num-layers", type=int, dest="num_hidden_layers")
    depth.add_argument("--drop-layers", default=None, help="comma list of layer indices to remove, e.g. 10,11,12")
    parser.add_argument("--depth-criterion", default=None,
                        help="block_influence, lm_loss or block (default: the best one the scores hold)")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)

    targets = {k: getattr(args, k) for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                             "num_key_value_heads", "num_hidden_layers")
               if getattr(args, k) is not None}
    if args.drop_layers is not None:
        try:
            targets["drop_layers"] = [int(x) for x in args.drop_layers.split(",") if x.strip()]
        except ValueError:
            parser.error(f"--drop-layers {args.drop_layers!r}: give comma-separated layer indices, e.g. 10,11")
    if args.depth_criterion:
        targets["depth_criterion"] = args.depth_criterion
    if not targets:
        parser.error("no target given: pass at least one of --hidden-size, --intermediate-size, --num-heads, "
                     "--num-kv-heads, --num-layers, --drop-layers")

    from ..arch import get_adapter
    from ..importance import ImportanceScores
    from ..loading import load_causal_lm
    from ..pruning import plan_pruning, prune_model

    model, tokenizer = load_causal_lm(args.model, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    try:
        scores = ImportanceScores.load(args.scores, model=model) if args.scores else None
        plan = plan_pruning(model, targets, scores)
    except (ValueError, TypeError, FileNotFoundError) as err:
        parser.error(str(err))
    pruned = prune_model(model, targets, scores, out_dir=args.out, tokenizer=tokenizer, overwrite=args.overwrite)
    before, after = get_adapter(model).summary(), get_adapter(pruned).summary()
    print(json.dumps({"dropped_layers": plan.dropped_layers, "depth_criterion": plan.depth_criterion,
                      "before": before, "after": after}, indent=2))
    print(f"pruned model written to {args.out}")
    return 0
