"""Deterministic tiny models and a byte-level tokenizer, one per adapter family, for tests and examples.

``tiny_model("llama")`` builds a 4-layer random model (hidden 64, 4 heads / 2 KV heads, head_dim 16, ffn 128) whose
norm weights are perturbed away from their init so that norm conventions matter. ``tiny_tokenizer()`` is a
byte-level tokenizer (256 bytes + 3 specials) with a ChatML chat template, matching ``TINY_VOCAB``.
"""

from __future__ import annotations

import torch

TINY_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3")
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TINY_VOCAB = 256 + len(SPECIAL_TOKENS)

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.1,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

_FAMILY_CONFIG = {
    "llama": dict(tie_word_embeddings=True, head_dim=16),
    "mistral": dict(tie_word_embeddings=False, head_dim=16, sliding_window=None),
    "qwen2": dict(tie_word_embeddings=False),
    "qwen3": dict(tie_word_embeddings=True, head_dim=16),
    "gemma2": dict(
        tie_word_embeddings=True, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
        final_logit_softcapping=30.0, attn_logit_softcapping=50.0, hidden_activation="gelu_pytorch_tanh",
    ),
    "gemma3_text": dict(
        tie_word_embeddings=True, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
        final_logit_softcapping=30.0, hidden_activation="gelu_pytorch_tanh",
        layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
    ),
    "phi3": dict(tie_word_embeddings=False, original_max_position_embeddings=256),
}


def tiny_config(family: str = "llama", **overrides):
    """A transformers config of ``family`` with tiny sizes; ``overrides`` replace any field."""
    from transformers import AutoConfig

    if family not in _FAMILY_CONFIG:
        raise ValueError(f"family={family!r}; choose one of {', '.join(TINY_FAMILIES)}")
    kwargs = {**_COMMON, "vocab_size": TINY_VOCAB, **_FAMILY_CONFIG[family], **overrides}
    if "layer_types" in kwargs and len(kwargs["layer_types"]) != kwargs["num_hidden_layers"]:
        kwargs.pop("layer_types")
    return AutoConfig.for_model(family, **kwargs)


def tiny_model(family: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A deterministic random ``*ForCausalLM`` of ``family`` in eval mode (same ``seed`` → same weights)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(family, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # move norms off their init so the norm convention (w vs 1+w) is exercised
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model.to(dtype).eval()


def tiny_tokenizer():
    """A byte-level ``PreTrainedTokenizerFast`` (no merges) with ChatML specials and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.name_or_path = "hf-minitron/tiny-byte-tokenizer"
    return fast
