"""The `hf-minitron` entry point: help lists real stage commands; `info` prints the architecture."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hf_minitron.cli import main
from hf_minitron.stages import STAGE_TABLE, available, get_stage
from hf_minitron.loading import save_model
from hf_minitron.testing import tiny_model


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in available():
        assert f"  {name} " in out and STAGE_TABLE[name][1] in out
    assert "  run " in out and "  info " in out


@pytest.mark.parametrize("name", ["importance", "prune", "distill", "cache-teacher"])
def test_every_stage_command_lists_its_config_fields_with_help(name, capsys):
    """`hf-minitron COMMAND --help` is the stage config's fields with their help text, plus --config."""
    import dataclasses

    assert main([name, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    spec = get_stage(name)
    own = [f for f in dataclasses.fields(spec.config_cls) if f.init and f.metadata.get("help")]
    assert own
    for f in own[:40]:
        assert f"--{f.name}" in out, f.name
    assert "--config" in out


def test_console_script_installed():
    exe = Path(sys.executable).parent / "hf-minitron"
    assert exe.exists(), "hf-minitron console script missing next to the interpreter: install the package (make venv)"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "info" in out


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert main(["prnue"]) == 2
    assert "did you mean 'prune'" in capsys.readouterr().err


def test_info_on_tiny_checkpoint(tmp_path, tokenizer, capsys):
    ckpt = save_model(tiny_model("qwen3"), tokenizer, tmp_path / "m")
    assert main(["info", str(ckpt), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layers"] == 4 and info["hidden_size"] == 64 and info["num_key_value_heads"] == 2
    assert info["head_dim"] == 16 and info["intermediate_size"] == 128 and info["tied_embeddings"] is True
    assert info["parameters"] > info["non_embedding_parameters"] > 0


def test_info_missing_model(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-minitron info: error:") and "does not exist" in err and "Traceback" not in err
