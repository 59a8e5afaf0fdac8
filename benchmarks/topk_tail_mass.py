"""How much of the teacher's mass lies outside its top-k, and the gradient noise of each sampled-cache layout.

    .venv/bin/python benchmarks/topk_tail_mass.py              # 8 training blocks of 256 tokens of wiki_train.txt

For SmolLM2-135M-Instruct's next-token distributions ``p``, prints the mean mass outside the top-k (what ``bucket``
lumps into one class) and, per exact-head size ``h``, the bound ``p_rest(h)^2 / (k - h)`` on the summed variance of a
``sampled`` cache's weights (``h = 0``: plain random-sampling KD, variance ``(1 - sum p^2) / k``).
"""

from __future__ import annotations

import argparse
import sys

from _real_setup import teacher_and_blocks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    args = p.parse_args(argv)

    import torch

    setup = teacher_and_blocks(1, args.blocks, args.seq, 1)
    if setup is None:
        return 2
    teacher, _, train, _ = setup
    with torch.no_grad():
        probs = torch.softmax(teacher(input_ids=train).logits.double(), -1).reshape(-1, teacher.config.vocab_size)
    top = probs.topk(args.k, dim=-1).values                                  # [tokens, k]
    print(f"{probs.shape[0]} tokens; mean teacher mass outside the top-{args.k}: {(1 - top.sum(-1)).mean():.4f}")
    print(f"plain sampling, {args.k} draws: variance {((1 - (probs * probs).sum(-1)) / args.k).mean():.5f}")
    for h in range(args.k // 8, args.k, args.k // 8):
        rest = 1 - top[:, :h].sum(-1)
        print(f"exact head {h:3d} + {args.k - h:3d} draws: p_rest {rest.mean():.4f}, "
              f"variance bound {(rest ** 2 / (args.k - h)).mean():.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
