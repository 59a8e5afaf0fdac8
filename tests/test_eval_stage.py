"""The eval stage: teacher and student on the same windows, sizes, speed, report files, CLI, bad input."""

import json
import math

import pytest

from hf_minitron.cli import main
from hf_minitron.data import token_blocks
from hf_minitron.errors import ConfigError, DataError
from hf_minitron.evaluation import mean_nll
from hf_minitron.loading import save_model
from hf_minitron.stages import run_stage
from hf_minitron.stages.evaluate import EvalConfig, run_eval
from hf_minitron.testing import TINY_VOCAB, tiny_model, tiny_tokenizer

DOCS = [f"document number {i} says hello world {i * i}" for i in range(20)]


@pytest.fixture
def pair(tmp_path, tokenizer):
    """A tiny teacher (4 layers) and a tiny 'student' (2 layers, other weights) sharing the tiny tokenizer."""
    teacher, student = tiny_model("llama", seed=0), tiny_model("llama", seed=1, num_hidden_layers=2)
    t = save_model(teacher, tokenizer, tmp_path / "teacher")
    s = save_model(student, tokenizer, tmp_path / "student")
    data = tmp_path / "docs.txt"
    data.write_text("\n".join(DOCS))
    return teacher, student, t, s, data


def _unique_numel(model):
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def test_teacher_and_student_on_the_same_windows(pair, tmp_path, tokenizer):
    teacher, student, t, s, data = pair
    result = run_eval(EvalConfig(teacher=str(t), student=str(s), data=str(data), held_out_fraction=1.0, seq_len=16,
                                 num_windows=3, prompts=["Hello", "Once upon a time"], max_new_tokens=5,
                                 output_dir=str(tmp_path / "eval")))
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result.output_dir == str((tmp_path / "eval").resolve()) and result.metrics["report"].endswith("eval.json")
    blocks = token_blocks(DOCS, tokenizer, 16, 3)
    by_role = {m["role"]: m for m in report["models"]}
    for role, model in (("teacher", teacher), ("student", student)):
        got = by_role[role]
        assert got["perplexity"]["perplexity"] == pytest.approx(math.exp(mean_nll(model, blocks)), rel=1e-6)
        assert got["perplexity"]["predicted_tokens"] == 3 * 15
        # tied embeddings (tiny llama): the embedding matrix counts once and is the only non-embedding exclusion
        assert got["parameters"] == _unique_numel(model)
        assert got["non_embedding_parameters"] == _unique_numel(model) - TINY_VOCAB * 64
        assert got["throughput"]["new_tokens"] == 10 and got["throughput"]["tokens_per_s"] > 0
        assert 0 < got["throughput"]["first_token_latency_s"] < 60
    assert by_role["teacher"]["perplexity"]["windows_fingerprint"] == by_role["student"]["perplexity"]["windows_fingerprint"]
    ratios = report["comparison"]["student_over_teacher"]
    assert ratios["parameters"] == by_role["student"]["parameters"] / by_role["teacher"]["parameters"]
    assert ratios["tokens_per_s"] == pytest.approx(by_role["student"]["throughput"]["tokens_per_s"]
                                                   / by_role["teacher"]["throughput"]["tokens_per_s"])
    assert report["notes"] == []
    settings = report["settings"]
    assert settings["perplexity"]["add_bos"] is False and settings["perplexity"]["seq_len"] == 16
    assert settings["throughput"]["prompts"] == ["Hello", "Once upon a time"] and settings["throughput"]["batch_size"] == 1
    table = (tmp_path / "eval" / "eval.md").read_text()
    assert "| perplexity | %.3f | %.3f | %.3f |" % (by_role["teacher"]["perplexity"]["perplexity"],
                                                   by_role["student"]["perplexity"]["perplexity"],
                                                   ratios["perplexity"]) in table
    assert "add_bos=false" in table


def _reordered_tokenizer():
    """The tiny byte-level tokenizer with its byte ids in reverse order: same vocabulary size, other ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from hf_minitron.testing import CHATML_TEMPLATE, SPECIAL_TOKENS

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet(), reverse=True):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    return fast


def test_models_with_different_tokenizers_are_scored_on_their_own_windows(tmp_path, tokenizer):
    """Each model is scored on its own tokenization of the same text, and the report says the windows differ."""
    other_tok = _reordered_tokenizer()
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=2)
    pa, pb = save_model(a, tokenizer, tmp_path / "a"), save_model(b, other_tok, tmp_path / "b")
    data = tmp_path / "docs.txt"
    data.write_text("\n".join(DOCS))
    run_eval(EvalConfig(models=[str(pa), str(pb)], data=str(data), held_out_fraction=1.0, seq_len=16, num_windows=2,
                        throughput=False, output_dir=str(tmp_path / "eval")))
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    got = {m["name"]: m["perplexity"] for m in report["models"]}
    assert got["a"]["perplexity"] == pytest.approx(math.exp(mean_nll(a, token_blocks(DOCS, tokenizer, 16, 2))), rel=1e-6)
    assert got["b"]["perplexity"] == pytest.approx(math.exp(mean_nll(b, token_blocks(DOCS, other_tok, 16, 2))), rel=1e-6)
    assert got["a"]["windows_fingerprint"] != got["b"]["windows_fingerprint"]
    assert len(report["notes"]) == 1 and "tokenizers differ" in report["notes"][0]
    assert report["comparison"] == {}  # no teacher/student pair, no ratios


def test_cli_eval_matches_mean_nll_on_held_out_slice(pair, tmp_path, capsys):
    """`hf-minitron eval` (the generic stage shell) scores the held-out slice: the last 10% of the documents."""
    teacher, _, t, _, data = pair
    out = tmp_path / "cli-eval"
    assert main(["eval", "--student", str(t), "--data", str(data), "--seq_len", "16", "--num_windows", "3",
                 "--throughput", "false", "--output_dir", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    blocks = token_blocks(DOCS[-2:], tiny_tokenizer(), 16, 3)
    assert printed["metrics"]["student/perplexity"] == pytest.approx(math.exp(mean_nll(teacher, blocks)), rel=1e-6)
    assert main(["eval", "--student", str(t), "--data", str(data), "--held_out_fraction", "0",
                 "--output_dir", str(tmp_path / "x")]) == 2
    assert "held_out_fraction=0.0: must be in (0, 1]" in capsys.readouterr().err


@pytest.fixture
def no_model_load(monkeypatch):
    import hf_minitron.loading

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(hf_minitron.loading, "load_causal_lm", refuse)


def test_bad_input_stops_before_any_model_loads(pair, tmp_path, no_model_load):
    _, _, t, s, _ = pair
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": "  "}) + "\n" + json.dumps({"text": ""}) + "\n")
    with pytest.raises(DataError, match="holds no non-empty texts"):
        run_stage("eval", {"student": str(s), "data": str(empty), "output_dir": str(tmp_path / "e1")})
    bad_calls = tmp_path / "calls.json"
    good = {"conversations": [{"from": "human", "value": "hi"},
                              {"from": "function_call", "value": '{"name": "f", "arguments": {}}'}],
            "tools": '[{"name": "f", "parameters": {"type": "object", "properties": {}}}]'}
    broken = {"conversations": [{"from": "human", "value": "hi"}, {"from": "function_call", "value": "{not json"}],
              "tools": "[]"}
    bad_calls.write_text(json.dumps([good, good, broken]))
    with pytest.raises(DataError, match=r"record 2 \(counting from 0\) message 1 \(function_call\) is not valid JSON"):
        run_stage("eval", {"student": str(s), "toolcall_data": str(bad_calls), "output_dir": str(tmp_path / "e2")})
    no_calls = tmp_path / "nocalls.json"
    no_calls.write_text(json.dumps([{"conversations": [{"from": "human", "value": "hi"},
                                                       {"from": "gpt", "value": "hello"}], "tools": "[]"}]))
    with pytest.raises(DataError, match="holds no turn whose reference answer is a function call"):
        run_stage("eval", {"student": str(s), "toolcall_data": str(no_calls), "output_dir": str(tmp_path / "e3")})
    with pytest.raises(ValueError, match="does not exist"):
        run_stage("eval", {"student": str(tmp_path / "missing"), "output_dir": str(tmp_path / "e4")})
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="is not empty"):
        run_stage("eval", {"student": str(s), "output_dir": str(tmp_path / "full")})
    assert not any((tmp_path / f"e{i}").exists() for i in range(1, 5))


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="no model to evaluate"):
        EvalConfig(output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="seq_len=2: a window needs at least 3 tokens"):
        EvalConfig(student="x", seq_len=2, add_bos=True, output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="output_dir is not set"):
        EvalConfig(student="x")
