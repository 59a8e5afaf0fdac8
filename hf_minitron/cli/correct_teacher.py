"""``hf-minitron correct-teacher MODEL --data CORPUS --out DIR``: fine-tune the teacher on the distillation corpus.

LoRA (default; the adapter is merged back into the weights) or full fine-tuning with TRL's ``SFTTrainer``, on plain
text (``.txt`` one document per line, ``.json``/``.jsonl`` with ``--text-field``) or chat data (``messages`` or
sharegpt ``conversations``). Writes a standard HF checkpoint atomically. ``--config recipe.yaml`` sets defaults.
"""

from __future__ import annotations

import argparse
import json
import sys

from .align import add_common_args, check_out_dir, parse_with_recipe, settings_from_args

COMMAND = "correct-teacher"
HELP = "Correct the teacher: LoRA (merged back) or full fine-tuning on the distillation corpus with TRL SFTTrainer."
ORDER = 10


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-minitron correct-teacher", description=HELP)
    add_common_args(parser)
    parser.add_argument("--method", choices=["lora", "full"], default="lora",
                        help="lora: train an adapter and merge it into the weights; full: train every weight")
    parser.add_argument("--text-field", default="text", help="field holding the text in .json/.jsonl records")
    parser.add_argument("--assistant-only-loss", action="store_true",
                        help="chat data: train only on the assistant turns (TRL assistant_only_loss)")
    parser.add_argument("--held-out", type=float, default=0.0,
                        help="fraction of documents (the last ones) held out; prints their loss before/after")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_with_recipe(parser, argv)
    check_out_dir(parser, args)

    from ..alignment.correction import correct_teacher
    from ..alignment.data import AlignmentDataError, load_sft_data
    from ..data import split_held_out, token_blocks
    from ..evaluation import mean_nll
    from ..loading import load_causal_lm

    try:  # validate every record before loading the model
        data = load_sft_data(args.data, text_field=args.text_field, limit=args.limit)
    except (AlignmentDataError, FileNotFoundError, ValueError) as err:
        print(f"hf-minitron correct-teacher: error: {err}", file=sys.stderr)
        return 2
    train, held = (split_held_out(list(data), args.held_out) if args.held_out > 0 else (list(data), []))
    if held and "text" not in held[0]:
        parser.error("--held-out measures loss on plain-text data; chat data has no 'text' field")
    model, tok = load_causal_lm(args.model, trust_remote_code=args.trust_remote_code)
    report = {"records_train": len(train), "records_held_out": len(held)}
    blocks = None
    if held:
        blocks = token_blocks([r["text"] for r in held], tok, min(args.max_length, 256))
        report["held_out_nll_before"] = mean_nll(model, blocks, 4)
    settings, lora = settings_from_args(args, "correct", args.method == "lora")
    model = correct_teacher(model, train, tokenizer=tok, method=args.method, settings=settings, lora=lora,
                            assistant_only_loss=args.assistant_only_loss, out_dir=args.out, overwrite=args.overwrite)
    if blocks is not None:
        report["held_out_nll_after"] = mean_nll(model, blocks, 4)
    print(json.dumps({"out": args.out, **report}, indent=2))
    return 0
