"""``hf-minitron eval MODEL --data FILE``: held-out perplexity of one or more models on the same token blocks."""

from __future__ import annotations

import argparse
import json
import math

COMMAND = "eval"
HELP = "Held-out perplexity of one or more models on the same packed token blocks of a text file or dataset."
ORDER = 70


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hf-minitron eval", description=HELP)
    parser.add_argument("models", nargs="+", help="Hub ids, directories or .gguf files ('default': embedded SmolLM2)")
    parser.add_argument("--data", required=True, help="texts: .txt (one document per line), .json/.jsonl, or a datasets name")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--held-out-fraction", type=float, default=0.1,
                        help="evaluate on the last fraction of the documents (the slice training scripts hold out); 1 = all")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--num-blocks", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = parser.parse_args(argv)
    if not 0 < args.held_out_fraction <= 1:
        parser.error(f"--held-out-fraction={args.held_out_fraction}; must be in (0, 1]")

    from ..data import load_texts, split_held_out, token_blocks
    from ..evaluation import mean_nll
    from ..loading import load_causal_lm

    texts = load_texts(args.data, text_field=args.text_field)
    if args.held_out_fraction < 1:
        texts = split_held_out(texts, args.held_out_fraction)[1]
    blocks = None
    results = []
    for source in args.models:
        model, tokenizer = load_causal_lm(source)
        if blocks is None:
            blocks = token_blocks(texts, tokenizer, args.seq_len, args.num_blocks)
        nll = mean_nll(model, blocks, batch_size=args.batch_size)
        results.append({"model": source, "nll": nll, "perplexity": math.exp(nll),
                        "tokens": int(blocks.numel())})
        del model
    for r in results:
        print(json.dumps(r) if args.json else f"{r['model']}\tppl {r['perplexity']:.3f}\tnll {r['nll']:.4f}\t({r['tokens']} tokens)")
    return 0
