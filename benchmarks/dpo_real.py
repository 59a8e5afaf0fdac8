"""Real-model DPO check: a few dozen LoRA DPO steps on ../shared/data/dpo_en.json raise SmolLM2-135M-Instruct's
implicit reward margin on held-out pairs of the same file.

    .venv/bin/python benchmarks/dpo_real.py   # defaults: 32 LoRA steps, batch 1, lr 2e-4, 96 tokens, 16 held out

The reference is the model before DPO (its held-out log-probs are kept, not a copy of the model). Pairs whose
rendered prompt exceeds ``--max-prompt-tokens`` are skipped so that every pair keeps some response tokens after
truncation to ``--max-length``. Prints one JSON object with the held-out margin/accuracy/log-probs before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dpo_en.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct GGUF")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--max-prompt-tokens", type=int, default=64)
    parser.add_argument("--held-out", type=int, default=16, help="number of pairs (the last usable ones) held out")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch

    from hf_minitron.alignment import load_preference_data, preference_logps, preference_stats, train_dpo
    from hf_minitron.loading import load_causal_lm
    from hf_minitron.stages.dpo import DPOStageConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tok = load_causal_lm(args.model)
    pairs = load_preference_data(args.data)
    prompt_len = [len(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)
                      ["input_ids"]) for p in pairs["prompt"]]
    usable = [i for i, n in enumerate(prompt_len) if n <= args.max_prompt_tokens]
    train_idx, held_idx = usable[: -args.held_out], usable[-args.held_out:]
    train, held = pairs.select(train_idx), pairs.select(held_idx)
    load_s = time.perf_counter() - t0

    kw = dict(beta=args.beta, max_length=args.max_length)
    t1 = time.perf_counter()
    ref_logps = preference_logps(model, tok, held, max_length=args.max_length)
    before = preference_stats(model, None, tok, held, reference_logps=ref_logps, **kw).summary()
    eval_s = time.perf_counter() - t1

    config = DPOStageConfig(beta=args.beta, reference="model", use_lora=True, lora_r=args.lora_r,
                            lora_alpha=2 * args.lora_r, max_steps=args.steps, learning_rate=args.lr,
                            per_device_train_batch_size=args.batch_size, max_length=args.max_length, logging_steps=10,
                            seed=0)
    t2 = time.perf_counter()
    aligned = train_dpo(model, tok, train, config)
    train_s = time.perf_counter() - t2
    after = preference_stats(aligned, None, tok, held, reference_logps=ref_logps, **kw).summary()

    report = {
        "model": args.model or "SmolLM2-135M-Instruct (embedded GGUF, dequantized fp32)",
        "data": str(args.data), "usable_pairs": len(usable), "train_pairs": len(train), "held_out_pairs": len(held),
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "beta": args.beta, "lora_r": args.lora_r,
        "max_length": args.max_length, "threads": torch.get_num_threads(),
        "held_out_before": before, "held_out_after": after,
        "seconds": {"load": round(load_s, 1), "eval": round(eval_s, 1), "train": round(train_s, 1)},
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
