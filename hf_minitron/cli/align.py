"""``hf-minitron align dpo|steerlm MODEL --data FILE --out DIR``: align the distilled student on TRL.

``dpo`` runs TRL's ``DPOTrainer`` on preference pairs (TRL prompt/chosen/rejected or sharegpt
conversations/chosen/rejected); ``steerlm`` runs attribute-conditioned SFT (SteerLM) on prompt/response data with
integer 0-4 attribute columns. ``--config recipe.yaml`` reads option defaults from a YAML file (keys = option names);
flags on the command line win. The result is a plain HF checkpoint written atomically (LoRA merged back).
"""

from __future__ import annotations

import argparse
import json
import sys

COMMAND = "align"
HELP = "Align the student: DPO on preference pairs or SteerLM attribute-conditioned SFT (TRL), LoRA or full."
ORDER = 60

# stage -> (learning rate for full fine-tuning, learning rate with LoRA)
DEFAULT_LR = {"correct": (2e-5, 1e-4), "dpo": (5e-7, 5e-5), "steerlm": (2e-5, 1e-4)}


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Options every training stage shares: model, data, output, optimisation, LoRA, YAML recipe."""
    parser.add_argument("model", nargs="?", default="default",
                        help="Hub id, local directory or .gguf file (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--data", help="training data: .json/.jsonl (or .txt for correct-teacher)")
    parser.add_argument("--out", help="output directory for the trained checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--config", help="YAML recipe whose keys set option defaults (e.g. recipes/align_dpo.yaml)")
    parser.add_argument("--limit", type=int, help="use only the first N records")
    parser.add_argument("--max-steps", type=int, default=-1, help="optimizer steps (overrides --epochs when > 0)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, help="learning rate (default depends on the stage and on --lora)")
    parser.add_argument("--batch-size", type=int, default=4, help="per-device batch size (pairs for DPO)")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=512, help="truncate sequences to this many tokens")
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--lora-dropout", type=float, default=0.0)
    parser.add_argument("--trust-remote-code", action="store_true")


def parse_with_recipe(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """Parse ``argv``; a ``--config`` YAML file supplies defaults for any option not given on the command line."""
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        import yaml

        with open(args.config, encoding="utf-8") as fh:
            recipe = yaml.safe_load(fh) or {}
        if not isinstance(recipe, dict):
            parser.error(f"--config {args.config}: expected a mapping of option names to values")
        known = {a.dest for a in parser._actions}
        defaults = {}
        for key, value in recipe.items():
            dest = str(key).replace("-", "_")
            if dest not in known or dest == "config":
                parser.error(f"--config {args.config}: unknown option {key!r}")
            defaults[dest] = value
        parser.set_defaults(**defaults)
        args = parser.parse_args(argv)
    for required in ("data", "out"):
        if getattr(args, required, None) is None:
            parser.error(f"--{required} is required (on the command line or in --config)")
    return args


def settings_from_args(args, stage: str, lora: bool):
    from ..alignment.training import LoraSettings, TrainSettings

    lr = args.lr if args.lr is not None else DEFAULT_LR[stage][int(lora)]
    settings = TrainSettings(
        learning_rate=lr, num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
        max_length=args.max_length, warmup_steps=args.warmup_steps, seed=args.seed,
        logging_steps=args.logging_steps, gradient_checkpointing=args.gradient_checkpointing)
    lora_settings = LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout) if lora else None
    return settings, lora_settings


def check_out_dir(parser, args) -> None:
    from ..loading import check_output_dir

    try:
        check_output_dir(args.out, overwrite=args.overwrite, name="--out", fix="pass --overwrite")
    except FileExistsError as e:
        parser.error(str(e))


def build_parser(method: str) -> argparse.ArgumentParser:
    """The option parser of ``hf-minitron align METHOD``."""
    if method == "dpo":
        parser = argparse.ArgumentParser(prog="hf-minitron align dpo", description=(
            "DPO (TRL DPOTrainer) on prompt/chosen/rejected or sharegpt conversations/chosen/rejected pairs."))
        add_common_args(parser)
        parser.add_argument("--beta", type=float, default=0.1, help="DPO temperature")
        parser.add_argument("--reference", choices=["model", "precomputed"], default="model",
                            help="reference = frozen student before DPO, or its log-probs precomputed once")
        parser.add_argument("--held-out", type=float, default=0.0,
                            help="fraction of pairs (the last ones) held out; prints their reward margin before/after")
    elif method == "steerlm":
        parser = argparse.ArgumentParser(prog="hf-minitron align steerlm", description=(
            "SteerLM attribute-conditioned SFT on prompt/response data with integer 0-4 attribute columns."))
        add_common_args(parser)
        parser.add_argument("--attributes", default="helpsteer",
                            help="'helpsteer' (helpfulness,correctness,coherence,complexity,verbosity), 'oasst' "
                                 "(quality,toxicity,humor,creativity) or a comma-separated list, in the order used")
        parser.add_argument("--prompt-field", default="prompt")
        parser.add_argument("--response-field", default="response")
        parser.add_argument("--annotate-verbosity", action="store_true",
                            help="label 'verbosity' from response-length quintiles before training")
    else:
        raise ValueError(f"unknown align method {method!r}")
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter (merged back) instead of all weights")
    return parser


METHODS = {"dpo": "DPO on preference pairs (TRL DPOTrainer)", "steerlm": "SteerLM attribute-conditioned SFT"}


def run_dpo(parser, args) -> dict:
    from ..alignment.data import load_preference_data, load_records
    from ..alignment.dpo import preference_logps, preference_stats, train_dpo
    from ..data import split_held_out
    from ..loading import load_causal_lm, save_model

    records = load_records(args.data, limit=args.limit)
    train_records, held = split_held_out(records, args.held_out) if args.held_out > 0 else (records, [])
    load_preference_data(records)  # validate every row before loading the model
    model, tok = load_causal_lm(args.model, trust_remote_code=args.trust_remote_code)
    settings, lora = settings_from_args(args, "dpo", args.lora)
    report = {"pairs_train": len(train_records), "pairs_held_out": len(held)}
    kw = dict(beta=args.beta, max_length=args.max_length)
    if held:  # the student before DPO is the reference: keep its log-probs, not a copy of the model
        ref_logps = preference_logps(model, tok, held, max_length=args.max_length)
        report["held_out_before"] = preference_stats(model, None, tok, held, reference_logps=ref_logps,
                                                     **kw).summary()
    model = train_dpo(model, tok, train_records, beta=args.beta, reference=args.reference, settings=settings,
                      lora=lora)
    if held:
        report["held_out_after"] = preference_stats(model, None, tok, held, reference_logps=ref_logps,
                                                    **kw).summary()
    save_model(model, tok, args.out, overwrite=args.overwrite)
    return report


def run_steerlm(parser, args) -> dict:
    from ..alignment.data import load_records
    from ..alignment.steerlm import annotate_attributes, resolve_attributes, steerlm_dataset, train_steerlm
    from ..loading import load_causal_lm, save_model

    records = load_records(args.data, limit=args.limit)
    model, tok = load_causal_lm(args.model, trust_remote_code=args.trust_remote_code)
    if args.annotate_verbosity:
        if "verbosity" not in resolve_attributes(args.attributes):
            parser.error("--annotate-verbosity needs 'verbosity' among --attributes")
        records = list(annotate_attributes(records, "verbosity", tokenizer=tok, prompt_field=args.prompt_field,
                                           response_field=args.response_field))
    steerlm_dataset(records, tok, attributes=args.attributes, prompt_field=args.prompt_field,
                    response_field=args.response_field)  # validate before training
    settings, lora = settings_from_args(args, "steerlm", args.lora)
    model = train_steerlm(model, tok, records, attributes=args.attributes, settings=settings, lora=lora,
                          prompt_field=args.prompt_field, response_field=args.response_field)
    save_model(model, tok, args.out, overwrite=args.overwrite)
    return {"examples": len(records), "attributes": list(resolve_attributes(args.attributes))}


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in METHODS:
        lines = ["usage: hf-minitron align {dpo,steerlm} MODEL --data FILE --out DIR [options]", "", HELP, ""]
        lines += [f"  {name:<8} {text}" for name, text in METHODS.items()]
        lines += ["", "Run 'hf-minitron align METHOD --help' for its options."]
        if not argv or argv[0] in {"-h", "--help"}:
            print("\n".join(lines))
            return 0
        print(f"hf-minitron align: unknown method {argv[0]!r}; choose dpo or steerlm", file=sys.stderr)
        return 2
    parser = build_parser(argv[0])
    args = parse_with_recipe(parser, argv[1:])
    check_out_dir(parser, args)
    from ..alignment.data import AlignmentDataError

    try:
        report = run_dpo(parser, args) if argv[0] == "dpo" else run_steerlm(parser, args)
    except (AlignmentDataError, FileNotFoundError) as err:
        print(f"hf-minitron align {argv[0]}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"out": args.out, **report}, indent=2))
    return 0
