"""Shared fixtures: offline Hub, tiny models of every family, the real SmolLM2 teacher, ../shared data."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from hf_minitron.testing import TINY_FAMILIES, tiny_model, tiny_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(params=TINY_FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny(family):
    return tiny_model(family)


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


def _teacher_gguf():
    from hf_minitron.loading import ModelSourceError, default_teacher_gguf

    try:
        return default_teacher_gguf()
    except ModelSourceError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory) -> Path:
    """The real SmolLM2-135M-Instruct teacher, dequantized once per session and saved as a plain HF checkpoint.

    Loading the GGUF takes ~25 s; tests that need the teacher reload this directory (~1 s) instead.
    """
    from hf_minitron.loading import load_causal_lm, save_model

    model, tok = load_causal_lm(_teacher_gguf())
    out = tmp_path_factory.mktemp("teacher") / "smollm2-135m-instruct"
    save_model(model, tok, out)
    return out


@pytest.fixture(scope="session")
def teacher(teacher_dir):
    """``(model, tokenizer)`` of the real teacher in fp32 eval mode (shared: do not modify it in place)."""
    from hf_minitron.loading import load_causal_lm

    model, tok = load_causal_lm(teacher_dir)
    return model.eval(), tok


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent: tests with real text data need the workspace's shared/data folder")
    return SHARED_DATA


def random_ids(vocab: int, batch: int = 2, seq: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))
