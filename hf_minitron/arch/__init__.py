"""Architecture adapters: one per model family, all behind :class:`ArchAdapter`."""

from __future__ import annotations

from .base import ArchAdapter, AttentionView, MLPView, RowSlice, Sizes, count_parameters
from .gemma import Gemma2Adapter, Gemma3TextAdapter
from .llama import LlamaAdapter, MistralAdapter, Qwen2Adapter
from .phi3 import Phi3Adapter
from .qwen3 import Qwen3Adapter

ADAPTERS: tuple[type[ArchAdapter], ...] = (
    LlamaAdapter,
    MistralAdapter,
    Qwen2Adapter,
    Qwen3Adapter,
    Gemma2Adapter,
    Gemma3TextAdapter,
    Phi3Adapter,
)
_BY_MODEL_TYPE = {t: a for a in ADAPTERS for t in a.model_types}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_BY_MODEL_TYPE))


class UnsupportedArchitectureError(ValueError):
    """The model type has no adapter."""


def adapter_class(model_type: str) -> type[ArchAdapter]:
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"Model type {model_type!r} is not supported. Supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}."
        ) from None


def get_adapter(model) -> ArchAdapter:
    """The adapter for ``model`` (a ``*ForCausalLM``; a PEFT wrapper is unwrapped)."""
    from ..loading import get_base_model

    base = get_base_model(model)
    config = getattr(base, "config", None)
    if config is None:
        raise UnsupportedArchitectureError(f"{type(model).__name__} has no .config; pass a transformers causal LM.")
    return adapter_class(config.model_type)(base)


__all__ = [
    "ADAPTERS", "SUPPORTED_MODEL_TYPES", "ArchAdapter", "AttentionView", "MLPView", "RowSlice", "Sizes",
    "UnsupportedArchitectureError", "adapter_class", "count_parameters", "get_adapter",
]
