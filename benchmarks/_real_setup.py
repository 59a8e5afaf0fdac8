"""Shared setup of the real-model checks (distill_real.py, topk_real.py): teacher, data blocks, 15-layer student."""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
