"""Calibration rows, Block Influence against an independent ShortGPT computation, the LM-head-free scoring pass,
chunked LM loss, and the memory estimate / refusal."""

import inspect

import pytest
import torch
from conftest import random_ids

from hf_minitron import importance
from hf_minitron.arch import get_adapter
from hf_minitron.importance import (ScoringMemoryError, calibration_documents, estimate_importance, fit_batch_size,
                                    lm_nll_sum, scoring_memory)
from hf_minitron.testing import TINY_VOCAB, tiny_model

DOCS = ["the quick brown fox jumps over the lazy dog", "hi", "a much longer calibration document " * 3,
        "mid length text, with punctuation!", "x" * 25, "tail end"]


def shortgpt_block_influence(model, docs: list[torch.Tensor]) -> torch.Tensor:
    """ShortGPT's Block Influence, written from the paper: each document alone, ``output_hidden_states=True``, per layer
    ``1 - cos(h_i, h_{i+1})`` averaged over the document's tokens, then over the documents. The final norm is replaced
    by the identity so that ``h_L`` is the last layer's own output (HF applies the final norm to it)."""
    decoder = get_adapter(model).decoder
    norm, decoder.norm = decoder.norm, torch.nn.Identity()
    try:
        per_doc = []
        for ids in docs:
            with torch.no_grad():
                hs = model(input_ids=ids[None], output_hidden_states=True).hidden_states
            hs = [h[0].double() for h in hs]
            per_doc.append(torch.stack([1 - torch.cosine_similarity(a, b, dim=-1).mean() for a, b in zip(hs, hs[1:])]))
    finally:
        decoder.norm = norm
    return torch.stack(per_doc).mean(0)


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen3"])
def test_block_influence_equals_per_document_shortgpt_reference(family, tokenizer):
    model = tiny_model(family)
    docs = calibration_documents(DOCS, tokenizer, seq_len=40, num_samples=None)
    assert [d.numel() for d in docs] == [min(len(tokenizer(t)["input_ids"]), 40) for t in DOCS]
    want = shortgpt_block_influence(model, docs)
    # batches of 4 documents, right-padded: the padding and the batching change nothing
    got = estimate_importance(model, DOCS, tokenizer=tokenizer, seq_len=40, batch_size=4).depth["block_influence"]
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
    assert torch.equal(torch.argsort(got), torch.argsort(want.float()))


def test_documents_score_like_each_document_alone(tokenizer):
    model = tiny_model("mistral")
    kw = dict(depth_criteria=("block_influence", "lm_loss"), loss_num_samples=None)
    docs = estimate_importance(model, DOCS, tokenizer=tokenizer, seq_len=40, batch_size=3, **kw)
    alone = estimate_importance(model, [d[None] for d in calibration_documents(DOCS, tokenizer, 40, None)], **kw)
    for name in ("heads", "neurons", "channels"):
        torch.testing.assert_close(getattr(docs, name), getattr(alone, name), rtol=1e-4, atol=1e-6)
    for name in ("block_influence", "lm_loss"):
        torch.testing.assert_close(docs.depth[name], alone.depth[name], rtol=1e-4, atol=1e-5)
    cal = docs.manifest["calibration"]
    assert cal["packing"] is False and cal["samples"] == len(DOCS) and cal["seq_len"] == 40
    assert docs.manifest["settings"]["packing"] is False
    fewer = estimate_importance(model, DOCS, tokenizer=tokenizer, seq_len=40, num_samples=2)
    assert fewer.manifest["calibration"]["samples"] == 2


def test_default_scoring_pass_never_runs_the_lm_head():
    model = tiny_model("llama")
    rows = []
    get_adapter(model).lm_head.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[:-1].numel()))
    ids = random_ids(TINY_VOCAB, batch=4, seq=16, seed=5)
    scores = estimate_importance(model, ids)
    assert rows == [] and list(scores.depth) == ["block_influence"]
    assert inspect.signature(estimate_importance).parameters["depth_criteria"].default == ("block_influence",)
    estimate_importance(model, ids, depth_criteria=("lm_loss",), loss_num_samples=2)
    chunk = importance.loss_chunk_tokens(model.config.vocab_size)
    assert rows and max(rows) <= chunk  # the LM loss projects token chunks, never [batch, seq, vocab]


@pytest.mark.parametrize("family", ["gemma2", "phi3"])
def test_chunked_nll_equals_full_logits_cross_entropy(family):
    model = tiny_model(family)
    ids = random_ids(TINY_VOCAB, batch=3, seq=12, seed=6)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.double()  # softcapped by the model (gemma2)
        hidden = get_adapter(model).decoder(input_ids=ids, attention_mask=mask)[0]
    keep = (mask[:, 1:] * mask[:, :-1]).bool()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1][keep], ids[:, 1:][keep], reduction="sum")
    for chunk in (1, 5, None):
        total, count = lm_nll_sum(get_adapter(model), hidden, ids, mask, chunk_tokens=chunk)
        assert count == int(keep.sum()) == 11 + 6 + 2
        assert total == pytest.approx(float(nll), rel=1e-5)


def test_memory_estimate_and_auto_batch():
    model = tiny_model("qwen2")
    m1, m4 = scoring_memory(model, 1, 64), scoring_memory(model, 4, 64)
    assert m1.weights == m4.weights == sum(p.numel() * 4 for p in model.parameters())
    assert m4.activations == 4 * m1.activations and m1.logits == 0
    assert scoring_memory(model, 1, 64, lm_loss=True).logits > 0
    assert scoring_memory(model, 1, 64, torch.bfloat16).activations < m1.activations
    assert fit_batch_size(model, 64, available=int(m4.transient / 0.8) + 1) == 4
    assert fit_batch_size(model, 64, available=1) == 1
    ids = random_ids(TINY_VOCAB, batch=5, seq=16, seed=7)
    auto = estimate_importance(model, ids, batch_size="auto")
    assert auto.manifest["settings"]["batch_size"] == fit_batch_size(model, 16)
    torch.testing.assert_close(auto.neurons, estimate_importance(model, ids, batch_size=2).neurons)


def test_too_large_batch_refuses_before_any_forward(monkeypatch, tokenizer):
    model = tiny_model("llama")
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(1))
    get_adapter(model).decoder.register_forward_pre_hook(lambda m, args: calls.append(1))
    need = scoring_memory(model, 8, 4096).transient
    monkeypatch.setattr(importance, "available_memory", lambda device=None: need // 2)
    ids = random_ids(TINY_VOCAB, batch=8, seq=4096, seed=8)
    with pytest.raises(ScoringMemoryError, match=r"batch_size=8 x seq_len=4096 needs about .* GiB .* available") as err:
        estimate_importance(model, ids, batch_size=8)
    assert isinstance(err.value, ValueError) and "batch_size=" in str(err.value).split("pass ")[1]
    loader = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]
    with pytest.raises(ScoringMemoryError, match="batch_size=8"):
        estimate_importance(model, loader)
    assert calls == []
