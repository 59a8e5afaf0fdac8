"""Shared helpers for deciding whether a Triton kernel can run."""

from __future__ import annotations

import importlib.util
import os

import torch


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpret_mode() -> bool:
    """``TRITON_INTERPRET=1``: Triton kernels run on CPU tensors through the interpreter (tests only)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(tensor: torch.Tensor) -> bool:
    """Dispatch rule: Triton on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``."""
    if not triton_available():
        return False
    return tensor.is_cuda or interpret_mode()
