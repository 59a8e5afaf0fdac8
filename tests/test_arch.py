"""Adapters: their view matches each family's modules and config; tiny models are deterministic."""

import pytest
import torch

from hf_minitron.arch import SUPPORTED_MODEL_TYPES, UnsupportedArchitectureError, count_parameters, get_adapter
from hf_minitron.testing import TINY_FAMILIES, TINY_VOCAB, tiny_config, tiny_model


def test_every_family_has_an_adapter():
    assert set(TINY_FAMILIES) <= set(SUPPORTED_MODEL_TYPES)


def test_adapter_view_matches_model(tiny, family):
    a = get_adapter(tiny)
    a.check_consistent()
    s = a.sizes()
    assert (s.num_hidden_layers, s.hidden_size, s.intermediate_size) == (4, 64, 128)
    assert (s.num_attention_heads, s.num_key_value_heads, s.head_dim) == (4, 2, 16)
    assert a.num_layers == len(list(tiny.model.layers)) == 4
    for i in range(a.num_layers):
        attn, mlp = a.attention(i), a.mlp(i)
        # q/k/v slices tile their linears' rows exactly, and the row views are really the weights' rows.
        if attn.q.linear is attn.k.linear:
            assert attn.q.size + attn.k.size + attn.v.size == attn.q.linear.out_features
            assert attn.k.start == attn.q.size and attn.v.start == attn.q.size + attn.k.size
        assert attn.q.weight.shape == (4 * 16, 64) and attn.k.weight.shape == (2 * 16, 64)
        assert attn.o.weight.shape == (64, 4 * 16)
        assert mlp.up.weight.shape == (128, 64) and mlp.down.weight.shape == (64, 128)
        assert mlp.gate is not None and mlp.gate.weight.shape == (128, 64)
        for norm in a.hidden_norms(i):
            assert norm.weight.shape == (64,)
        for lin in a.hidden_readers(i):
            assert lin.in_features == 64
        for lin in a.hidden_writers(i):
            assert lin.out_features == 64
        assert all(m.layer_idx == i for m in a.layer_index_modules(i))
        if a.has_qk_norm:
            assert attn.q_norm.weight.shape == (16,) and attn.k_norm.weight.shape == (16,)
    assert a.final_norm.weight.shape == (64,)
    assert a.embed_tokens.weight.shape == (TINY_VOCAB, 64)
    assert a.tied_embeddings == bool(tiny.config.tie_word_embeddings)


def test_row_slice_is_what_forward_uses(family):
    """Zeroing the adapter's q rows of head 0 changes the output; zeroing v of a KV group changes it too."""
    model = tiny_model(family)
    a = get_adapter(model)
    ids = torch.randint(0, TINY_VOCAB, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        a.attention(1).v.weight.zero_()
        out = model(input_ids=ids).logits
    assert not torch.allclose(ref, out)


def test_norm_convention_matches_forward(family):
    """``effective_norm_weight`` is the per-channel factor the norm applies to a normalised input."""
    model = tiny_model(family)
    a = get_adapter(model)
    norm = a.hidden_norms(0)[0]
    x = torch.randn(3, 64)
    rms = x.pow(2).mean(-1, keepdim=True).add(norm.eps if hasattr(norm, "eps") else norm.variance_epsilon).rsqrt()
    with torch.no_grad():
        torch.testing.assert_close(norm(x), x * rms * a.effective_norm_weight(norm), rtol=1e-5, atol=1e-5)


def test_embedding_scale_matches_forward(family):
    model = tiny_model(family)
    a = get_adapter(model)
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        got = a.embed_tokens(ids)
    torch.testing.assert_close(got, a.embed_tokens.weight[ids] * a.embedding_scale())


def test_tiny_model_is_deterministic(family):
    m1, m2 = tiny_model(family, seed=3), tiny_model(family, seed=3)
    for (n1, p1), (n2, p2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    m3 = tiny_model(family, seed=4)
    assert not torch.equal(m1.lm_head.weight, m3.lm_head.weight)


def test_parameter_counts_by_hand():
    model = tiny_model("llama")  # tied; 4 layers, h=64, ffn=128, 4 heads / 2 kv of 16, vocab 259
    h, f, v, L = 64, 128, TINY_VOCAB, 4
    per_layer = h * 64 + 2 * h * 32 + 64 * h + 3 * h * f + 2 * h  # q, k+v, o, gate/up/down, two norms
    total = v * h + L * per_layer + h
    assert count_parameters(model) == (total, total - v * h)
    untied = tiny_model("mistral")
    assert count_parameters(untied) == (total + v * h, total - v * h)


def test_unsupported_model_type_lists_supported():
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("gpt2", n_layer=1, n_embd=32, n_head=2, vocab_size=50)
    model = AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(UnsupportedArchitectureError) as err:
        get_adapter(model)
    assert "gpt2" in str(err.value) and "llama" in str(err.value) and "phi3" in str(err.value)


def test_tiny_config_rejects_unknown_family():
    with pytest.raises(ValueError, match="family"):
        tiny_config("bloom")
