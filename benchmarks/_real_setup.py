"""Shared setup of the real-model checks (distill_real.py, topk_real.py): teacher, data blocks, 15-layer student."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "wiki_train.txt"
CALIB = REPO.parent / "shared" / "data" / "c4_calib.jsonl"
DROP_CHOICES = ("contiguous", "block_influence")


def teacher_and_blocks(steps: int, batch: int, seq: int, held_out_blocks: int):
    """``(teacher, tokenizer, train [steps*batch, seq], held [held_out_blocks, seq])`` from wiki_train.txt with the last
    10% of the articles held out, or ``None`` (after printing why) when the data is absent or too short."""
    if not DATA.is_file():
        print(f"{DATA} is absent: this check needs the workspace's shared/data folder", file=sys.stderr)
        return None
    from hf_minitron import load_causal_lm
    from hf_minitron.data import load_texts, split_held_out, token_blocks

    teacher, tok = load_causal_lm()
    teacher.eval()
    train_texts, held_texts = split_held_out(load_texts(DATA), 0.1)
    n_train = steps * batch
    train = token_blocks(train_texts, tok, seq, n_train)
    held = token_blocks(held_texts, tok, seq, held_out_blocks)
    if train.shape[0] < n_train:
        print(f"the data gives only {train.shape[0]} training blocks of {seq} tokens", file=sys.stderr)
        return None
    return teacher, tok, train, held


def fifteen_layer_drop(teacher) -> list[int]:
    """Layers to drop for the 15-layer student: keep 0..13 and the last layer (a contiguous block before the last)."""
    n_layers = teacher.config.num_hidden_layers
    return list(range(n_layers - 16, n_layers - 1))


def block_influence_drop(teacher, tokenizer, n_drop: int = 15, num_samples: int = 32, seq_len: int = 256) -> list[int]:
    """The ``n_drop`` layers the library's default depth criterion (Block Influence, scored on ``num_samples`` blocks
    of ``seq_len`` tokens of c4_calib.jsonl) drops: what ``hf-minitron importance`` + ``prune --num_hidden_layers``
    would give."""
    from hf_minitron.data import load_texts, token_blocks
    from hf_minitron.importance import estimate_importance

    calib = token_blocks(load_texts(CALIB), tokenizer, seq_len, num_samples)
    scores = estimate_importance(teacher, calib, batch_size=4, depth_criteria=("block_influence",))
    return sorted(scores.layers_to_drop(n_drop, "block_influence"))


def student_drop(teacher, tokenizer, how: str) -> list[int]:
    """Layers to drop for the 15-layer student: ``contiguous`` (14..28) or ``block_influence`` (the library default)."""
    if how == "contiguous":
        return fifteen_layer_drop(teacher)
    if how == "block_influence":
        return block_influence_drop(teacher, tokenizer)
    raise ValueError(f"--drop-by {how!r}: choose from {DROP_CHOICES}")


@dataclass
class RealCheck:
    """What every real-model check starts from: the teacher, its data and the 15-layer student before training."""

    teacher: object
    tokenizer: object
    train: torch.Tensor            # [steps * batch, seq] training blocks
    held: torch.Tensor             # [held_out_blocks, seq] held-out blocks
    student: object                # the pruned student (eval mode, untrained)
    ppl_teacher: float
    ppl_student: float


def real_check_setup(args, drop_by: str = "contiguous") -> RealCheck | None:
    """Seed with ``args.seed``, load the teacher and ``args.steps * args.batch`` training blocks of ``args.seq`` tokens
    (plus ``args.held_out_blocks`` held-out ones), prune the student by ``drop_by``, measure both held-out perplexities
    and print one setup line. ``None`` (after printing why) when the data is absent or too short."""
    import torch

    from hf_minitron import prune_model
    from hf_minitron.evaluation import perplexity

    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    setup = teacher_and_blocks(args.steps, args.batch, args.seq, args.held_out_blocks)
    if setup is None:
        return None
    teacher, tok, train, held = setup
    drop = student_drop(teacher, tok, drop_by)
    student = prune_model(teacher, {"drop_layers": drop})
    check = RealCheck(teacher, tok, train, held, student, perplexity(teacher, held), perplexity(student, held))
    n_layers = teacher.config.num_hidden_layers
    print(f"setup {time.perf_counter() - t0:.0f}s: teacher {n_layers} layers, student {n_layers - len(drop)} layers "
          f"(dropped {drop}, {drop_by}), {train.shape[0]} x {args.seq} training tokens, {held.shape[0]} x {args.seq} "
          f"held-out tokens; held-out ppl teacher {check.ppl_teacher:.2f}, student {check.ppl_student:.2f}", flush=True)
    return check
