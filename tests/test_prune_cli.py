"""``hf-minitron importance`` and ``hf-minitron prune`` on a tiny saved checkpoint."""

import json

import pytest
import torch

from hf_minitron.arch import get_adapter
from hf_minitron.cli import main
from hf_minitron.data import token_blocks
from hf_minitron.importance import ImportanceScores, estimate_importance
from hf_minitron.loading import load_causal_lm, save_model
from hf_minitron.testing import tiny_model, tiny_tokenizer

LINES = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen liquor jugs",
         "calibration text number three, a bit longer than the others", "sphinx of black quartz, judge my vow"] * 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    save_model(tiny_model("llama"), tiny_tokenizer(), root / "model")
    (root / "calib.txt").write_text("\n".join(LINES) + "\n")
    return root


def test_importance_then_prune(checkpoint, tmp_path, capsys):
    model_dir, calib = str(checkpoint / "model"), str(checkpoint / "calib.txt")
    rc = main(["importance", "--model", model_dir, "--data", calib, "--output_dir", str(tmp_path / "scores"),
               "--seq_len", "32", "--num_samples", "5", "--batch_size", "2", "--block_sizes", "1",
               "--loss_num_samples", "3"])
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert rc == 0 and result["metrics"]["samples"] == 5
    assert result["metrics"]["tokens"] == sum(min(len(tokenizer_ids), 32) for tokenizer_ids in
                                              tiny_tokenizer()(LINES[:5])["input_ids"])
    assert "importance" in err  # the progress bar
    model, tok = load_causal_lm(model_dir)
    saved = ImportanceScores.load(tmp_path / "scores", model=model)
    direct = estimate_importance(model, LINES, tokenizer=tok, seq_len=32, num_samples=5, batch_size=2,
                                 block_sizes=(1,), loss_num_samples=3)  # the stage's defaults: one document a sample
    for name in ("heads", "neurons", "channels"):
        torch.testing.assert_close(getattr(saved, name), getattr(direct, name))
    torch.testing.assert_close(saved.block_losses[1], direct.block_losses[1])

    rc = main(["prune", "--model", model_dir, "--scores", str(tmp_path / "scores"), "--hidden_size", "48",
               "--intermediate_size", "96", "--num_attention_heads", "2", "--num_hidden_layers", "3",
               "--depth_criterion", "block", "--output_dir", str(tmp_path / "small")])
    out, _ = capsys.readouterr()
    result = json.loads(out)
    assert rc == 0 and result["metrics"]["depth_criterion"] == "block"
    small, small_tok = load_causal_lm(tmp_path / "small")
    s = get_adapter(small).sizes()
    assert (s.hidden_size, s.intermediate_size, s.num_attention_heads, s.num_key_value_heads, s.num_hidden_layers) == (
        48, 96, 2, 2, 3)
    assert small_tok is not None
    start = int(saved.block_losses[1].argmin())
    assert result["metrics"]["dropped_layers"] == [start]


def test_prune_drop_layers_needs_no_scores(checkpoint, tmp_path, capsys):
    rc = main(["prune", "--model", str(checkpoint / "model"), "--drop_layers", "0", "3", "--output_dir",
               str(tmp_path / "d")])
    assert rc == 0
    small, _ = load_causal_lm(tmp_path / "d")
    assert get_adapter(small).num_layers == 2


def test_cli_errors_name_the_option(checkpoint, tmp_path, capsys):
    model_dir = str(checkpoint / "model")
    cases = [
        (["prune", "--model", model_dir, "--num_hidden_layers", "2", "--drop_layers", "1"], "drop_layers"),
        (["prune", "--model", model_dir, "--hidden_size", "80", "--drop_layers", "1"],
         "hidden_size=80 is larger than the model's 64"),
        (["prune", "--model", model_dir], "no target given"),
        (["importance", "--model", model_dir, "--data", "x.txt", "--depth_criteria", "block"], "--block_sizes"),
    ]
    for argv, words in cases:
        out = str(tmp_path / "x")
        assert main([*argv, "--output_dir", out]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err
        assert not (tmp_path / "x").exists()


def test_streamed_stages_equal_the_in_memory_ones(checkpoint, tmp_path, capsys):
    """`importance --offload layers` and `prune --low_memory` (teachers larger than memory) give the in-memory
    stages' scores and files."""
    model_dir, calib = str(checkpoint / "model"), str(checkpoint / "calib.txt")
    common = ["--model", model_dir, "--data", calib, "--seq_len", "32", "--num_samples", "6", "--batch_size", "2"]
    assert main(["importance", *common, "--output_dir", str(tmp_path / "mem")]) == 0
    assert main(["importance", *common, "--offload", "layers", "--output_dir", str(tmp_path / "streamed")]) == 0
    capsys.readouterr()
    from safetensors.torch import load_file

    mem, streamed = (load_file(str(tmp_path / d / "importance.safetensors")) for d in ("mem", "streamed"))
    assert mem.keys() == streamed.keys()
    for name in mem:
        torch.testing.assert_close(streamed[name], mem[name], rtol=1e-5, atol=1e-7, msg=name)
    targets = ["--intermediate_size", "96", "--num_hidden_layers", "3", "--scores", str(tmp_path / "mem")]
    assert main(["prune", "--model", model_dir, *targets, "--output_dir", str(tmp_path / "p_mem")]) == 0
    in_memory = json.loads(capsys.readouterr().out)
    assert main(["prune", "--model", model_dir, *targets, "--low_memory", "--output_dir",
                 str(tmp_path / "p_low")]) == 0
    low = json.loads(capsys.readouterr().out)
    a, b = load_file(str(tmp_path / "p_mem" / "model.safetensors")), load_file(str(tmp_path / "p_low" /
                                                                                    "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    for key in ("non_embedding_before", "non_embedding_after", "parameters_after", "dropped_layers"):
        assert low["metrics"][key] == in_memory["metrics"][key], key
    assert main(["importance", *common, "--offload", "layers", "--depth_criteria", "lm_loss", "--output_dir",
                 str(tmp_path / "x")]) == 2
    assert "only block_influence" in capsys.readouterr().err
