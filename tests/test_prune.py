"""prune_model: exact function preservation on every family when the removed units carry no signal (and the scores
rank exactly those units last), parameter counts of the target config, stock configs, reload, validation."""

import copy

import pytest
import torch
from conftest import random_ids

from hf_minitron.arch import count_parameters, get_adapter
from hf_minitron.importance import ScoresMismatchError, estimate_importance
from hf_minitron.pruning import plan_pruning, prune_model
from hf_minitron.testing import TINY_VOCAB, tiny_model

ATOL = 1e-5


def _zero_signal_model(family):
    """A tiny model in which MLP neurons 0..31, KV group 1 (and its query heads), hidden channels 0..15 and layer 2
    carry no signal: neurons' up rows and down columns are zero, the group's value rows are zero, the channels are
    zero wherever the residual stream is written (embedding columns, o/down rows), layer 2's o and down are zero."""
    model = tiny_model(family)
    a = get_adapter(model)
    with torch.no_grad():
        for i in range(a.num_layers):
            attn, mlp = a.attention(i), a.mlp(i)
            mlp.up.weight[:32] = 0
            mlp.down.weight[:, :32] = 0
            attn.v.weight[16:32] = 0
            if attn.v.bias is not None:
                attn.v.bias[16:32] = 0
            attn.o.weight[:16] = 0
            mlp.down.weight[:16] = 0
        a.embed_tokens.weight[:, :16] = 0
        a.attention(2).o.weight.zero_()
        a.mlp(2).down.weight.zero_()
    return model


def _target_param_count(model):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        reference = AutoModelForCausalLM.from_config(model.config)
    return count_parameters(reference)


def _check_stock_model(pruned, kept_layers, source):
    a = get_adapter(pruned)
    a.check_consistent()
    assert count_parameters(pruned) == _target_param_count(pruned)
    assert pruned.config.head_dim == get_adapter(source).sizes().head_dim
    for k, layer in enumerate(a.layers):
        assert all(m.layer_idx == k for m in a.layer_index_modules(k))
    src_types = getattr(source.config, "layer_types", None)
    if src_types is not None:
        assert pruned.config.layer_types == [src_types[i] for i in kept_layers]
    assert a.tied_embeddings == get_adapter(source).tied_embeddings


TARGETS = [
    dict(intermediate_size=96),
    dict(num_key_value_heads=1),
    dict(hidden_size=48),
    dict(num_hidden_layers=3, depth_criterion="block_influence"),
    dict(drop_layers=[2]),
    dict(hidden_size=48, intermediate_size=96, num_key_value_heads=1, num_hidden_layers=3,
         depth_criterion="block_influence"),
]


def test_pruning_units_without_signal_is_exact(family):
    model = _zero_signal_model(family)
    ids = random_ids(TINY_VOCAB, batch=3, seq=16, seed=5)
    scores = estimate_importance(model, ids, batch_size=2, depth_criteria=("block_influence",))
    # the scores rank exactly the silent units last
    assert scores.neurons[:, :32].max() == 0 and scores.neurons[:, 32:].min() > 0
    groups = scores.kv_group_scores(2)
    assert (groups[:, 1] == 0).all() and (groups[:, 0] > 0).all()
    assert scores.channels[:16].max() == 0 and scores.channels[16:].min() > 0
    bi = scores.depth["block_influence"]
    assert int(bi.argmin()) == 2 and bi[2] < 1e-6 < bi[[0, 1, 3]].min()

    with torch.no_grad():
        reference = model(input_ids=ids).logits
    for targets in TARGETS:
        pruned = prune_model(model, targets, scores)
        with torch.no_grad():
            got = pruned(input_ids=ids).logits
        torch.testing.assert_close(got, reference, atol=ATOL, rtol=0, msg=lambda m: f"{targets}: {m}")
        kept = [0, 1, 3] if ("num_hidden_layers" in targets or "drop_layers" in targets) else [0, 1, 2, 3]
        _check_stock_model(pruned, kept, model)
        s = get_adapter(pruned).sizes()
        assert s.hidden_size == targets.get("hidden_size", 64)
        assert s.intermediate_size == targets.get("intermediate_size", 128)
        assert (s.num_key_value_heads, s.num_attention_heads) == ((1, 2) if "num_key_value_heads" in targets else (2, 4))
        assert s.num_hidden_layers == len(kept)


def test_query_heads_are_removed_within_each_group(family):
    """Heads 1 and 2 (one in each KV group) have zero output-projection columns: pruning to 2 heads with those ranked
    last keeps both KV groups and is exact."""
    model = tiny_model(family)
    a = get_adapter(model)
    with torch.no_grad():
        for i in range(a.num_layers):
            a.attention(i).o.weight[:, 16:48] = 0  # heads 1 and 2 (head_dim 16)
    ids = random_ids(TINY_VOCAB, batch=2, seq=12, seed=6)
    scores = estimate_importance(model, ids, depth_criteria=())
    # activation scores do not see the output projection, so rank the silent heads last explicitly
    scores.heads[:, [1, 2]] = 0
    plan = plan_pruning(model, {"num_attention_heads": 2}, scores)
    assert all(plan.heads[i] == [0, 3] and plan.kv_groups[i] == [0, 1] for i in range(4))
    pruned = prune_model(model, {"num_attention_heads": 2}, scores)
    with torch.no_grad():
        torch.testing.assert_close(pruned(input_ids=ids).logits, model(input_ids=ids).logits, atol=ATOL, rtol=0)
    s = get_adapter(pruned).sizes()
    assert (s.num_attention_heads, s.num_key_value_heads, s.head_dim) == (2, 2, 16)
    _check_stock_model(pruned, [0, 1, 2, 3], model)


@pytest.mark.parametrize("family", ["gemma3_text", "phi3", "qwen2"])
def test_saved_checkpoint_reloads_identically(family, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(family)
    ids = random_ids(TINY_VOCAB, batch=2, seq=12, seed=7)
    scores = estimate_importance(model, ids, block_sizes=(1,))
    targets = dict(hidden_size=40, intermediate_size=80, num_attention_heads=2, num_key_value_heads=1,
                   num_hidden_layers=3)
    pruned = prune_model(model, targets, scores, out_dir=tmp_path / "out", tokenizer=tokenizer)
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, pruned(input_ids=ids).logits, atol=1e-6, rtol=0)
    assert get_adapter(reloaded).tied_embeddings == get_adapter(model).tied_embeddings
    prompt = ids[:1, :5]
    with torch.no_grad():  # KV-cache generation works with the renumbered layers
        a = pruned.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
        b = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(a, b) and a.shape[1] == 11
    assert (tmp_path / "out" / "tokenizer_config.json").is_file()


def test_source_model_is_untouched_and_shares_no_storage():
    model = tiny_model("qwen3")
    before = copy.deepcopy(model.state_dict())
    scores = estimate_importance(model, random_ids(TINY_VOCAB), depth_criteria=("block_influence",))
    pruned = prune_model(model, {"num_hidden_layers": 3, "depth_criterion": "block_influence"}, scores)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    source_ptrs = {p.data_ptr() for p in model.parameters()}
    assert not any(p.data_ptr() in source_ptrs for p in pruned.parameters())


def test_depth_criteria_choose_the_layers_their_scores_say():
    model = tiny_model("llama")
    scores = estimate_importance(model, random_ids(TINY_VOCAB, batch=3), depth_criteria=("block_influence", "lm_loss"),
                                 block_sizes=(2,))
    plan = plan_pruning(model, {"num_hidden_layers": 2}, scores)  # default: Block Influence (see DEPTH_PREFERENCE)
    assert plan.depth_criterion == "block_influence"
    assert plan.dropped_layers == sorted(scores.depth["block_influence"].argsort()[:2].tolist())
    plan = plan_pruning(model, {"num_hidden_layers": 2, "depth_criterion": "block"}, scores)
    start = int(scores.block_losses[2].argmin())
    assert plan.dropped_layers == [start, start + 1]
    plan = plan_pruning(model, {"num_hidden_layers": 3, "depth_criterion": "lm_loss"}, scores)
    assert plan.dropped_layers == [int(scores.depth["lm_loss"].argmin())]
    only_loss = estimate_importance(model, random_ids(TINY_VOCAB, batch=3), depth_criteria=("lm_loss",))
    assert plan_pruning(model, {"num_hidden_layers": 3}, only_loss).depth_criterion == "lm_loss"


@pytest.mark.parametrize("targets, error, match", [
    (dict(hidden_size=65), ValueError, "targets.hidden_size=65 is larger"),
    (dict(intermediate_size=0), ValueError, "targets.intermediate_size=0"),
    (dict(hidden_size=32.0), TypeError, "targets.hidden_size"),
    (dict(num_attention_heads=3), ValueError, "targets.num_attention_heads=3 is not a multiple"),
    (dict(num_attention_heads=4, num_key_value_heads=1), ValueError, "4 query heads per KV group"),
    (dict(drop_layers=[1, 7]), ValueError, r"targets.drop_layers has unknown layer index\(es\) \[7\]"),
    (dict(drop_layers=[1, 1]), ValueError, "repeats"),
    (dict(drop_layers=[0], num_hidden_layers=2), ValueError, "targets.num_hidden_layers=2"),
    (dict(num_hidden_layers=2, depth_criterion="block"), ValueError, r"block_sizes=\(2,\)"),
    (dict(hidden_layers=2), ValueError, "unknown pruning target"),
    (dict(hidden_size=50), ValueError, "hidden_size=50.*do not give a valid llama config: The hidden size"),  # LlamaConfig: hidden % heads
])
def test_bad_targets_fail_before_any_work(targets, error, match, tmp_path):
    model = tiny_model("llama")
    scores = estimate_importance(model, random_ids(TINY_VOCAB), depth_criteria=("block_influence",))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(error, match=match):
        prune_model(model, targets, scores, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_missing_or_foreign_scores_and_busy_out_dir(tmp_path):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="targets.intermediate_size needs importance scores"):
        prune_model(model, {"intermediate_size": 64})
    with pytest.raises(ValueError, match="targets.num_hidden_layers needs importance scores"):
        prune_model(model, {"num_hidden_layers": 2})
    assert get_adapter(prune_model(model, {"drop_layers": [3]})).num_layers == 3  # explicit layers need no scores
    other = estimate_importance(tiny_model("llama", seed=5), random_ids(TINY_VOCAB), depth_criteria=())
    with pytest.raises(ScoresMismatchError):
        prune_model(model, {"intermediate_size": 64}, other)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        prune_model(model, {"drop_layers": [3]}, out_dir=busy)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]


def test_bf16_model_prunes_in_bf16():
    model = tiny_model("gemma2", dtype=torch.bfloat16)
    ids = random_ids(TINY_VOCAB, batch=2, seq=12, seed=8)
    scores = estimate_importance(model, ids, depth_criteria=("block_influence",))
    pruned = prune_model(model, {"hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 3}, scores)
    assert {p.dtype for p in pruned.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        logits = pruned(input_ids=ids).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    assert count_parameters(pruned) == _target_param_count(pruned)
