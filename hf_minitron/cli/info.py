"""``hf-minitron info MODEL``: the architecture summary and parameter counts of a model."""

from __future__ import annotations

import argparse
import json

# `hf-minitron info` (not a stage: it only reads a model)
HELP = "Show a model's architecture: layers, hidden, heads, KV heads, head_dim, ffn, vocab, parameter counts."
ORDER = 0


def format_summary(summary: dict) -> str:
    width = max(len(k) for k in summary)
    lines = []
    for key, value in summary.items():
        shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hf-minitron info", description=HELP)
    parser.add_argument("model", nargs="?", default="default",
                        help="Hub id, local directory or .gguf file (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)

    from ..arch import get_adapter
    from ..loading import check_model_source, load_causal_lm

    check_model_source(args.model, trust_remote_code=args.trust_remote_code, need_tokenizer=False)

    model, _ = load_causal_lm(args.model, tokenizer=False, trust_remote_code=args.trust_remote_code)
    summary = {"model": args.model, **get_adapter(model).summary()}
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0
