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
    assert rc == 0 and result["metrics"]["samples"] == 5 and result["metrics"]["tokens"] == 160
    assert "importance" in err  # the progress bar
    model, tok = load_causal_lm(model_dir)
    saved = ImportanceScores.load(tmp_path / "scores", model=model)
    direct = estimate_importance(model, token_blocks(LINES, tok, 32, 5), batch_size=2, block_sizes=(1,),
                                 loss_num_samples=3)
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
