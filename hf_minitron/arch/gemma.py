"""Gemma 2 and Gemma 3 (text).

Conventions that differ from Llama:

- RMSNorm multiplies by ``1 + weight`` (``norm_weight_offset = 1``);
- the embedding output is scaled by ``sqrt(hidden_size)``, so hidden-size pruning changes that factor;
- four "sandwich" norms per layer (pre/post attention, pre/post feed-forward), all over the hidden size;
- attention scaling uses ``query_pre_attn_scalar`` (independent of head count), logits are soft-capped in attention
  (Gemma 2) and at the output (``final_logit_softcapping``); ``layer_types`` alternates sliding/full attention.
- Gemma 3 adds per-head ``q_norm``/``k_norm``.
"""

from .base import ArchAdapter


class Gemma2Adapter(ArchAdapter):
    family = "gemma2"
    model_types = ("gemma2",)
    norm_weight_offset = 1.0
    embedding_scale_power = 0.5
    hidden_norm_names = (
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    )


class Gemma3TextAdapter(Gemma2Adapter):
    family = "gemma3_text"
    model_types = ("gemma3_text",)
    has_qk_norm = True
