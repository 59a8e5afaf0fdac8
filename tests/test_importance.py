"""estimate_importance: scores equal an independent float64 computation from captured activations; padding never
counts; depth scores equal the LM loss of the model with the layers really removed; save/load and validation."""

import copy

import pytest
import torch
from conftest import random_ids

from hf_minitron.arch import get_adapter
from hf_minitron.evaluation import mean_nll
from hf_minitron.importance import (Aggregation, ImportanceScores, ScoresMismatchError, estimate_importance,
                                    model_identity)
from hf_minitron.pruning import prune_model
from hf_minitron.testing import TINY_VOCAB, tiny_model


def _capture(model, ids, mask=None):
    """Full activations at the scoring points, via our own hooks: o_proj inputs, down inputs, hidden-norm outputs,
    layer inputs/outputs."""
    a = get_adapter(model)
    got = {"o": [], "down": [], "norms": [], "layer_in": [], "layer_out": []}
    handles = []
    for i in range(a.num_layers):
        handles.append(a.attention(i).o.register_forward_pre_hook(lambda m, args: got["o"].append(args[0].double())))
        handles.append(a.mlp(i).down.register_forward_pre_hook(lambda m, args: got["down"].append(args[0].double())))
        for norm in a.hidden_norms(i):
            handles.append(norm.register_forward_hook(lambda m, args, out: got["norms"].append(out.double())))
        handles.append(a.layers[i].register_forward_pre_hook(
            lambda m, args, kwargs: got["layer_in"].append((args[0] if args else kwargs["hidden_states"]).double()),
            with_kwargs=True))
        handles.append(a.layers[i].register_forward_hook(lambda m, args, out: got["layer_out"].append(out.double())))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    for h in handles:
        h.remove()
    return got


def _channel_scores(x, mask, agg: Aggregation):
    m = torch.ones(x.shape[:2], dtype=torch.float64) if mask is None else mask.double()
    n = m.sum(1, keepdim=True)
    if agg.seq == "mean":
        v = (x.abs() * m[..., None]).sum(1) / n
    elif agg.seq == "l2":
        v = ((x * x) * m[..., None]).sum(1).sqrt()
    else:
        mean = (x * m[..., None]).sum(1) / n
        v = (((x - mean[:, None]) ** 2) * m[..., None]).sum(1) / n
    if agg.batch == "l2":
        return v.norm(dim=0)
    if agg.batch == "mean":
        return v.mean(0)
    return v.var(0, unbiased=False)


@pytest.mark.parametrize("family", ["llama", "phi3", "gemma3_text"])
@pytest.mark.parametrize("agg", [("mean", "l2"), ("l2", "mean"), ("var", "var")])
def test_width_scores_match_float64_reference(family, agg):
    agg = Aggregation(*agg)
    model = tiny_model(family)
    s = get_adapter(model).sizes()
    ids = random_ids(TINY_VOCAB, batch=5, seq=16, seed=1)
    scores = estimate_importance(model, ids, batch_size=2, aggregation=agg, depth_criteria=("block_influence",))
    cap = _capture(model, ids)
    L = s.num_hidden_layers
    per_channel = [_channel_scores(x, None, agg) for x in cap["o"]]
    heads = torch.stack([c.view(s.num_attention_heads, s.head_dim).norm(dim=-1) for c in per_channel])
    neurons = torch.stack([_channel_scores(x, None, agg) for x in cap["down"]])
    channels = torch.stack([_channel_scores(x, None, agg) for x in cap["norms"]]).sum(0)
    assert len(cap["norms"]) == L * len(get_adapter(model).hidden_norms(0))
    torch.testing.assert_close(scores.heads.double(), heads, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(scores.neurons.double(), neurons, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(scores.channels.double(), channels, rtol=1e-4, atol=1e-6)
    cos = torch.stack([torch.nn.functional.cosine_similarity(x, y, dim=-1).mean()
                       for x, y in zip(cap["layer_in"], cap["layer_out"])])
    torch.testing.assert_close(scores.depth["block_influence"].double(), 1 - cos, rtol=1e-4, atol=1e-6)
    assert scores.manifest["calibration"]["samples"] == 5 and scores.manifest["calibration"]["tokens"] == 80


def _padded_loader(tokenizer, texts, batch_size):
    enc = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(e) for e in enc)
    ids = torch.full((len(enc), width), tokenizer.pad_token_id)
    mask = torch.zeros(len(enc), width, dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    return [{"input_ids": ids[i : i + batch_size], "attention_mask": mask[i : i + batch_size]}
            for i in range(0, len(enc), batch_size)], ids, mask


def test_padding_never_counts(tokenizer):
    """Right-padded batches with an attention mask score exactly like the same texts fed one by one, unpadded."""
    model = tiny_model("qwen3")
    texts = ["short text", "a somewhat longer calibration text here", "mid length one", "x" * 30, "tail"]
    loader, ids, mask = _padded_loader(tokenizer, texts, batch_size=3)
    kw = dict(depth_criteria=("block_influence", "lm_loss"), block_sizes=(2,))
    padded = estimate_importance(model, loader, **kw)
    alone = estimate_importance(model, [{"input_ids": torch.tensor([tokenizer(t, add_special_tokens=False)["input_ids"]])}
                                        for t in texts], **kw)
    for name in ("heads", "neurons", "channels"):
        torch.testing.assert_close(getattr(padded, name), getattr(alone, name), rtol=1e-4, atol=1e-6)
    for name in ("block_influence", "lm_loss"):
        torch.testing.assert_close(padded.depth[name], alone.depth[name], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(padded.block_losses[2], alone.block_losses[2], rtol=1e-5, atol=1e-5)
    assert padded.base_loss == pytest.approx(alone.base_loss, rel=1e-5)
    assert padded.manifest["calibration"]["tokens"] == int(mask.sum())
    # the same batch without its mask does count the padding, and the scores move
    unmasked = estimate_importance(model, [ids], **kw)
    assert not torch.allclose(unmasked.neurons, alone.neurons, rtol=1e-3)


def test_lm_loss_and_block_scores_equal_loss_of_really_pruned_models():
    model = tiny_model("gemma2")
    ids = random_ids(TINY_VOCAB, batch=4, seq=16, seed=2)
    scores = estimate_importance(model, ids, batch_size=3, depth_criteria=("lm_loss",), block_sizes=(2,),
                                 loss_num_samples=3)
    subset = ids[:3]
    base = mean_nll(model, subset)
    assert scores.base_loss == pytest.approx(base, rel=1e-5)
    for i in (0, 2):
        dropped = mean_nll(prune_model(model, {"drop_layers": [i]}), subset)
        assert float(scores.depth["lm_loss"][i]) == pytest.approx(dropped - base, abs=2e-5)
    for j in range(3):
        dropped = mean_nll(prune_model(model, {"drop_layers": [j, j + 1]}), subset)
        assert float(scores.block_losses[2][j]) == pytest.approx(dropped, rel=1e-5)
    assert "block" in scores.available_depth_criteria(2) and "block" not in scores.available_depth_criteria(1)


def test_text_calibration_is_packed_with_the_tokenizer(tokenizer):
    from hf_minitron.data import fingerprint, token_blocks

    model = tiny_model("llama")
    texts = ["the quick brown fox jumps over the lazy dog " * 3, "hello world, calibration " * 4]
    scores = estimate_importance(model, texts, tokenizer=tokenizer, seq_len=32, num_samples=3, packing=True,
                                 depth_criteria=("block_influence",))
    blocks = token_blocks(texts, tokenizer, 32, 3)
    assert scores.manifest["calibration"]["fingerprint"] == fingerprint(blocks)
    assert scores.manifest["calibration"]["seq_len"] == 32 and scores.manifest["calibration"]["packing"] is True
    same = estimate_importance(model, blocks, depth_criteria=("block_influence",))
    torch.testing.assert_close(scores.channels, same.channels)
    with pytest.raises(ValueError, match="tokenizer"):
        estimate_importance(model, texts, seq_len=32)


def test_bf16_model_scores_in_fp32_and_agree_with_fp32():
    ids = random_ids(TINY_VOCAB, batch=4, seq=16, seed=3)
    ref = estimate_importance(tiny_model("mistral"), ids, depth_criteria=("block_influence",))
    low = estimate_importance(tiny_model("mistral", dtype=torch.bfloat16), ids, depth_criteria=("block_influence",))
    for name in ("heads", "neurons", "channels"):
        got, want = getattr(low, name), getattr(ref, name)
        assert got.dtype == torch.float32 and torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=0.05, atol=1e-3)
    assert low.manifest["model"]["weights_fingerprint"] == ref.manifest["model"]["weights_fingerprint"]


def test_save_load_roundtrip_and_manifest_checks(tmp_path):
    model = tiny_model("phi3")
    ids = random_ids(TINY_VOCAB, batch=3, seq=12, seed=4)
    scores = estimate_importance(model, ids, block_sizes=(1, 3))
    scores.save(tmp_path / "scores")
    loaded = ImportanceScores.load(tmp_path / "scores", model=model)
    for name in ("heads", "neurons", "channels"):
        assert torch.equal(getattr(loaded, name), getattr(scores, name))
    assert loaded.depth.keys() == scores.depth.keys() and loaded.block_losses.keys() == {1, 3}
    assert all(torch.equal(loaded.depth[k], scores.depth[k]) for k in scores.depth)
    assert loaded.base_loss == pytest.approx(scores.base_loss)
    assert loaded.manifest["model"] == model_identity(model)
    assert loaded.manifest["settings"]["block_sizes"] == [1, 3]
    with pytest.raises(FileExistsError, match="not empty"):
        scores.save(tmp_path / "scores")
    with pytest.raises(ScoresMismatchError, match="weights_fingerprint"):
        ImportanceScores.load(tmp_path / "scores", model=tiny_model("phi3", seed=1))
    with pytest.raises(ScoresMismatchError, match="model_type"):
        ImportanceScores.load(tmp_path / "scores", model=tiny_model("llama"))
    with pytest.raises(ScoresMismatchError, match="sizes"):
        ImportanceScores.load(tmp_path / "scores", model=tiny_model("phi3", intermediate_size=96))
    with pytest.raises(FileNotFoundError, match="no importance scores"):
        ImportanceScores.load(tmp_path)


def test_bad_arguments_fail_before_any_forward():
    model = tiny_model("llama")
    ids = random_ids(TINY_VOCAB)
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(1))
    with pytest.raises(ValueError, match="depth_criteria"):
        estimate_importance(model, ids, depth_criteria=("cosine",))
    with pytest.raises(ValueError, match="block_sizes"):
        estimate_importance(model, ids, depth_criteria=("block",))
    with pytest.raises(ValueError, match="block_sizes"):
        estimate_importance(model, ids, block_sizes=(4,))
    with pytest.raises(ValueError, match="aggregation.seq"):
        estimate_importance(model, ids, aggregation=("max", "l2"))
    with pytest.raises(ValueError, match="batch_size"):
        estimate_importance(model, ids, batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        estimate_importance(model, ids, batch_size="max")
    assert calls == []


def test_scoring_leaves_the_model_unchanged():
    model = tiny_model("qwen2")
    before = copy.deepcopy(model.state_dict())
    model.train()
    estimate_importance(model, random_ids(TINY_VOCAB), block_sizes=(2,))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    a = get_adapter(model)
    assert all(not layer._forward_hooks and not layer._forward_pre_hooks for layer in a.layers)
    assert all("forward" not in vars(layer) for layer in a.layers)
