"""Cost of activation-importance scoring vs a bare forward pass (SmolLM2-135M-Instruct, CPU by default).

    python benchmarks/importance.py [--model DIR] [--num-samples 4] [--seq-len 256] [--rounds 2]

Times, on the same packed calibration batches, (a) a bare forward of the whole model (``use_cache=False``, no grad),
(a') a bare forward of the decoder alone (no LM head), (b) the scoring pass (the decoder with the default hooks: width
scores + Block Influence; it never runs the LM head) and (c) width scores only, interleaved batch by batch for
``--rounds`` rounds; prints tokens/s and the ratios (target <= 1.10 against the bare forward; the ratio against the
bare decoder is the hooks' own cost). Then reports the opt-in depth passes separately: the LM-loss criterion (one pass
per layer over ``--loss-num-samples`` blocks, the loss through the LM head in token chunks) and the contiguous-block
search for ``--block-size`` layers (one pass per start position), as seconds and as multiples of a bare forward over
the same blocks.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch

from hf_minitron.arch import get_adapter
from hf_minitron.data import load_texts, token_blocks
from hf_minitron.importance import estimate_importance
from hf_minitron.loading import load_causal_lm

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@torch.no_grad()
def bare_forward(model, blocks, batch_size):
    for start in range(0, blocks.shape[0], batch_size):
        model(input_ids=blocks[start : start + batch_size], use_cache=False)


@torch.no_grad()
def bare_decoder(model, blocks, batch_size):
    decoder = get_adapter(model).decoder
    for start in range(0, blocks.shape[0], batch_size):
        decoder(input_ids=blocks[start : start + batch_size], use_cache=False)


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model dir / Hub id / .gguf (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--calib", default=str(SHARED / "c4_calib.jsonl"))
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--loss-num-samples", type=int, default=1)
    p.add_argument("--block-size", type=int, default=15)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--skip-depth", action="store_true", help="only the scoring-pass table")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok = load_causal_lm(args.model, device=args.device)
    model.eval()
    blocks = token_blocks(load_texts(args.calib), tok, args.seq_len, args.num_samples).to(args.device)
    tokens = blocks.numel()
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"device {args.device}; {blocks.shape[0]} blocks x {args.seq_len} tokens, batch {args.batch_size}")

    bare_forward(model, blocks[: args.batch_size], args.batch_size)  # warm-up
    # Interleave the three passes batch by batch so that load changes on a shared machine hit them alike.
    b = d = s = w = 0.0
    kw = dict(batch_size=args.batch_size, num_samples=None)
    for _ in range(args.rounds):
        for start in range(0, blocks.shape[0], args.batch_size):
            batch = blocks[start : start + args.batch_size]
            b += timed(lambda: bare_forward(model, batch, args.batch_size))
            d += timed(lambda: bare_decoder(model, batch, args.batch_size))
            s += timed(lambda: estimate_importance(model, batch, depth_criteria=("block_influence",), **kw))
            w += timed(lambda: estimate_importance(model, batch, depth_criteria=(), **kw))
    tokens *= args.rounds
    print("| pass | tokens/s | time (s) | vs bare forward | vs bare decoder |\n|---|---|---|---|---|")
    print(f"| bare forward (decoder + LM head) | {tokens / b:.0f} | {b:.2f} | 1.00x | {b / d:.3f}x |")
    print(f"| bare decoder | {tokens / d:.0f} | {d:.2f} | {d / b:.3f}x | 1.00x |")
    print(f"| scoring: width + Block Influence (default) | {tokens / s:.0f} | {s:.2f} | {s / b:.3f}x | {s / d:.3f}x |")
    print(f"| scoring: width only | {tokens / w:.0f} | {w:.2f} | {w / b:.3f}x | {w / d:.3f}x |")

    if args.skip_depth:
        return
    sub = blocks[: args.loss_num_samples]
    sub_bare = min(timed(lambda: bare_forward(model, sub, args.batch_size)) for _ in range(2))
    L = model.config.num_hidden_layers
    t_loss = timed(lambda: estimate_importance(model, sub, depth_criteria=("lm_loss",), loss_num_samples=None, **kw))
    t_block = timed(lambda: estimate_importance(model, sub, depth_criteria=("block",), block_sizes=(args.block_size,),
                                                loss_num_samples=None, **kw))
    print(f"\noptional depth passes over {sub.shape[0]} block(s) ({sub.numel()} tokens); bare forward {sub_bare:.2f} s")
    print("| criterion | extra passes | time (s) | vs bare forward over the same blocks |\n|---|---|---|---|")
    print(f"| lm_loss (scoring pass + one pass per layer) | {L} | {t_loss:.1f} | {t_loss / sub_bare:.1f}x |")
    print(f"| block search, {args.block_size} layers (scoring pass + one pass per start) | {L - args.block_size + 1} "
          f"| {t_block:.1f} | {t_block / sub_bare:.1f}x |")


if __name__ == "__main__":
    main()
