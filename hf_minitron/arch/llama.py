"""Llama family: Llama 2/3, SmolLM, TinyLlama, and the layout-identical Mistral and Qwen2 (Qwen2 adds q/k/v bias)."""

from .base import ArchAdapter


class LlamaAdapter(ArchAdapter):
    family = "llama"
    model_types = ("llama",)


class MistralAdapter(ArchAdapter):
    family = "mistral"
    model_types = ("mistral",)


class Qwen2Adapter(ArchAdapter):
    family = "qwen2"
    model_types = ("qwen2",)
