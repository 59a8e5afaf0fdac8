"""The `hf-minitron` entry point: help lists real stage commands; `info` prints the architecture."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hf_minitron.cli import commands, main
from hf_minitron.loading import save_model
from hf_minitron.testing import tiny_model


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, mod in commands().items():
        assert name in out and mod.HELP in out
        assert "not yet available" not in mod.HELP.lower()


def test_console_script_installed():
    exe = Path(sys.executable).parent / "hf-minitron"
    assert exe.exists(), "hf-minitron console script missing next to the interpreter: install the package (make venv)"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "info" in out


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_info_on_tiny_checkpoint(tmp_path, tokenizer, capsys):
    ckpt = save_model(tiny_model("qwen3"), tokenizer, tmp_path / "m")
    assert main(["info", str(ckpt), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layers"] == 4 and info["hidden_size"] == 64 and info["num_key_value_heads"] == 2
    assert info["head_dim"] == 16 and info["intermediate_size"] == 128 and info["tied_embeddings"] is True
    assert info["parameters"] > info["non_embedding_parameters"] > 0


def test_info_missing_model(tmp_path):
    from hf_minitron.loading import ModelSourceError

    with pytest.raises(ModelSourceError, match="does not exist"):
        main(["info", str(tmp_path / "missing")])


def test_eval_matches_mean_nll(tmp_path, tokenizer, capsys):
    """`hf-minitron eval` reports the perplexity mean_nll gives on the held-out slice's blocks."""
    import math


    from hf_minitron.data import token_blocks
    from hf_minitron.evaluation import mean_nll

    data = tmp_path / "docs.txt"
    docs = [f"document number {i} says hello world {i * i}" for i in range(20)]
    data.write_text("\n".join(docs))
    model = tiny_model("llama")
    ckpt = save_model(model, tokenizer, tmp_path / "m")
    assert main(["eval", str(ckpt), "--data", str(data), "--seq-len", "16", "--num-blocks", "3", "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip())
    blocks = token_blocks(docs[-2:], tokenizer, 16, 3)  # held-out: last 10% of 20 docs
    expected = mean_nll(model, blocks)
    assert got["tokens"] == blocks.numel() and math.isclose(got["perplexity"], math.exp(expected), rel_tol=1e-6)
    with pytest.raises(SystemExit):
        main(["eval", str(ckpt), "--data", str(data), "--held-out-fraction", "0"])
