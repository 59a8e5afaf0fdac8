"""Text loading, packing into blocks, evaluation windows, and perplexity against a hand computation."""

import json
import math

import pytest
import torch

from hf_minitron.data import fingerprint, load_texts, split_held_out, token_blocks
from hf_minitron.errors import ConfigError
from hf_minitron.evaluation import eval_windows, evaluate_perplexity, mean_nll, perplexity
from hf_minitron.testing import TINY_VOCAB, tiny_model


def test_load_texts_from_files(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\n\nsecond doc\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "x"}) + "\n" + json.dumps({"text": "y"}) + "\n")
    (tmp_path / "c.json").write_text(json.dumps([{"body": "p"}, {"body": "q"}]))
    assert load_texts(tmp_path / "a.txt") == ["first doc", "second doc"]
    assert load_texts(str(tmp_path / "b.jsonl")) == ["x", "y"]
    assert load_texts(tmp_path / "c.json", text_field="body") == ["p", "q"]
    assert load_texts(["a", " ", "b"], limit=1) == ["a"]
    with pytest.raises(ValueError, match="no field 'text'"):
        load_texts(tmp_path / "c.json")
    with pytest.raises(ValueError, match="does not exist"):
        load_texts(tmp_path / "missing.txt")


def test_token_blocks_pack_with_eos(tokenizer):
    blocks = token_blocks(["ab", "cde"], tokenizer, seq_len=3)
    ids = tokenizer("ab").input_ids + [tokenizer.eos_token_id] + tokenizer("cde").input_ids + [tokenizer.eos_token_id]
    assert blocks.tolist() == [ids[0:3], ids[3:6]]  # 7 tokens -> 2 blocks, tail dropped
    assert token_blocks(["ab", "cde"], tokenizer, seq_len=3, num_blocks=1).tolist() == [ids[0:3]]
    with pytest.raises(ValueError, match="fewer than one block"):
        token_blocks(["a"], tokenizer, seq_len=50)


def test_split_and_fingerprint():
    train, held = split_held_out([str(i) for i in range(20)], 0.1)
    assert held == ["18", "19"] and len(train) == 18
    t = torch.arange(6)
    assert fingerprint(t, {"a": 1}) == fingerprint(t.clone(), {"a": 1}) != fingerprint(t + 1, {"a": 1})


def test_mean_nll_matches_hand_computation():
    model = tiny_model("llama")
    blocks = torch.randint(0, TINY_VOCAB, (3, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=blocks).logits.double(), -1)
    expected = -sum(logp[b, t, blocks[b, t + 1]].item() for b in range(3) for t in range(9)) / 27
    assert mean_nll(model, blocks, batch_size=2) == pytest.approx(expected, rel=1e-5)
    assert perplexity(model, blocks) == pytest.approx(math.exp(expected), rel=1e-5)


def test_eval_windows_without_and_with_bos(tokenizer):
    """Without BOS a window is seq_len packed text tokens; with BOS it is [BOS] + seq_len - 1 of them, so the first
    text token is predicted too."""
    texts = ["hello there", "general kenobi"]
    stream = []
    for t in texts:
        stream += tokenizer(t, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    plain = eval_windows(texts, tokenizer, 8)
    assert plain.tolist() == [stream[0:8], stream[8:16], stream[16:24]][: len(stream) // 8]
    tokenizer_bos = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, bos_token="<|im_start|>",
                                        eos_token="<|im_end|>", pad_token="<|endoftext|>")
    bos = tokenizer_bos.bos_token_id
    with_bos = eval_windows(texts, tokenizer_bos, 8, add_bos=True)
    assert with_bos.shape[1] == 8 and with_bos[:, 0].tolist() == [bos] * with_bos.shape[0]
    assert with_bos[:, 1:].reshape(-1).tolist() == stream[: with_bos.shape[0] * 7]
    assert eval_windows(texts, tokenizer, 8, 1).tolist() == [stream[0:8]]
    with pytest.raises(ConfigError, match="add_bos is set but the tokenizer of m has no BOS"):
        eval_windows(texts, tokenizer, 8, add_bos=True, model_name="m")


def test_evaluate_perplexity_counts_predictions():
    model = tiny_model("qwen3")
    windows = torch.randint(0, TINY_VOCAB, (5, 7), generator=torch.Generator().manual_seed(3))
    got = evaluate_perplexity(model, windows, batch_size=2)
    assert got["windows"] == 5 and got["predicted_tokens"] == 30
    assert got["nll"] == pytest.approx(mean_nll(model, windows, batch_size=5), rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(got["nll"]), rel=1e-12)
    assert got["windows_fingerprint"] != evaluate_perplexity(model, windows.flip(0))["windows_fingerprint"]
