"""The real teacher (SmolLM2-135M-Instruct): score a few calibration texts, prune to hidden 384 / ffn 1024 / 20
layers, save, reload, generate.

transformers' LlamaConfig requires ``hidden_size % num_attention_heads == 0`` even with an explicit ``head_dim``, so
hidden 384 with the teacher's 9 heads is not a stock config: the target also keeps 6 of the 9 query heads (2 per KV
group), and the 9-head request is refused up front with an error naming the constraint."""

import pytest
import torch

from hf_minitron.arch import count_parameters, get_adapter
from hf_minitron.importance import estimate_importance
from hf_minitron.pruning import prune_model

pytestmark = pytest.mark.real_model

TEXTS = [
    "The capital of France is Paris. It is known for the Eiffel Tower and its museums.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "In 1969, Apollo 11 landed on the Moon and Neil Armstrong took the first steps on its surface.",
] * 3


def test_teacher_prune_save_reload_generate(teacher, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = teacher
    scores = estimate_importance(model, TEXTS, tokenizer=tok, seq_len=64, num_samples=3, batch_size=3,
                                 depth_criteria=("block_influence",))
    assert scores.heads.shape == (30, 9) and scores.neurons.shape == (30, 1536) and scores.channels.shape == (576,)
    assert (scores.depth["block_influence"] > 0).all() and (scores.heads > 0).all()
    targets = dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=20)
    with pytest.raises(ValueError, match="multiple of the number of attention heads"):
        prune_model(model, targets, scores, out_dir=tmp_path / "student")
    assert not (tmp_path / "student").exists()
    targets["num_attention_heads"] = 6
    pruned = prune_model(model, targets, scores, out_dir=tmp_path / "student", tokenizer=tok)
    s = get_adapter(pruned).sizes()
    assert (s.hidden_size, s.intermediate_size, s.num_hidden_layers) == (384, 1024, 20)
    assert (s.num_attention_heads, s.num_key_value_heads, s.head_dim, s.tie_word_embeddings) == (6, 3, 64, True)
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path / "student", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert count_parameters(reloaded) == count_parameters(pruned)
    assert count_parameters(pruned)[0] < 0.55 * count_parameters(model)[0]
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, pruned(ids).logits, atol=1e-5, rtol=0)
        out = reloaded.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 8
    assert isinstance(tok.decode(out[0, ids.shape[1]:]), str)
