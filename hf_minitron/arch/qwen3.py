"""Qwen3: the Llama layout plus per-head RMSNorms (``q_norm``/``k_norm`` over ``head_dim``) before RoPE."""

from .base import ArchAdapter


class Qwen3Adapter(ArchAdapter):
    family = "qwen3"
    model_types = ("qwen3",)
    has_qk_norm = True
