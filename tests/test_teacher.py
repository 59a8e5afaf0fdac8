"""The real SmolLM2-135M-Instruct teacher from its GGUF file."""

import json

import pytest
import torch

pytestmark = pytest.mark.real_model


def test_teacher_config(teacher):
    model, tok = teacher
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (30, 576, 9, 3)
    assert (c.intermediate_size, c.vocab_size, c.tie_word_embeddings) == (1536, 49152, True)
    assert getattr(model, "hf_quantizer", None) is None
    assert model.dtype == torch.float32


def test_teacher_saved_without_quantization_config(teacher_dir):
    config = json.loads((teacher_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert (teacher_dir / "model.safetensors").exists()


def test_teacher_answers_a_chat_prompt(teacher):
    model, tok = teacher
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_gguf_and_saved_copy_give_identical_logits(teacher_dir, teacher):
    """The session fixture saved the dequantized GGUF model; reloading the GGUF itself gives the same logits."""
    from hf_minitron.loading import default_teacher_gguf, load_causal_lm

    gguf_model, _ = load_causal_lm(default_teacher_gguf(), tokenizer=False)
    model, tok = teacher
    ids = tok("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(gguf_model(ids).logits, model(ids).logits)
