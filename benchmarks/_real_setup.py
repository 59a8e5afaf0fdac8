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
