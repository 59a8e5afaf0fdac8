"""``hf-minitron importance`` and ``hf-minitron prune`` on a tiny saved checkpoint."""

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
    rc = main(["importance", model_dir, "--calib", calib, "--out", str(tmp_path / "scores"), "--seq-len", "32",
               "--num-samples", "5", "--batch-size", "2", "--block-sizes", "1", "--loss-num-samples", "3"])
    out, err = capsys.readouterr()
    assert rc == 0 and "scored 5 samples (160 tokens)" in out and "block search, 1 layers" in out
    assert "importance" in err  # the progress bar
    model, tok = load_causal_lm(model_dir)
    saved = ImportanceScores.load(tmp_path / "scores", model=model)
    direct = estimate_importance(model, token_blocks(LINES, tok, 32, 5), batch_size=2, block_sizes=(1,),
                                 loss_num_samples=3)
    for name in ("heads", "neurons", "channels"):
        torch.testing.assert_close(getattr(saved, name), getattr(direct, name))
    torch.testing.assert_close(saved.block_losses[1], direct.block_losses[1])

    rc = main(["prune", model_dir, "--scores", str(tmp_path / "scores"), "--hidden-size", "48",
               "--intermediate-size", "96", "--num-heads", "2", "--num-layers", "3", "--depth-criterion", "block",
               "--out", str(tmp_path / "small")])
    out, _ = capsys.readouterr()
    assert rc == 0 and '"depth_criterion": "block"' in out
    small, small_tok = load_causal_lm(tmp_path / "small")
    s = get_adapter(small).sizes()
    assert (s.hidden_size, s.intermediate_size, s.num_attention_heads, s.num_key_value_heads, s.num_hidden_layers) == (
        48, 96, 2, 2, 3)
    assert small_tok is not None
    start = int(saved.block_losses[1].argmin())
    assert f'"dropped_layers": [\n    {start}\n  ]' in out


def test_prune_drop_layers_needs_no_scores(checkpoint, tmp_path, capsys):
    rc = main(["prune", str(checkpoint / "model"), "--drop-layers", "0,3", "--out", str(tmp_path / "d")])
    assert rc == 0
    small, _ = load_causal_lm(tmp_path / "d")
    assert get_adapter(small).num_layers == 2


def test_cli_errors_name_the_option(checkpoint, tmp_path, capsys):
    model_dir = str(checkpoint / "model")
    with pytest.raises(SystemExit) as exc:
        main(["prune", model_dir, "--num-layers", "2", "--drop-layers", "1", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prune", model_dir, "--hidden-size", "80", "--drop-layers", "1", "--out", str(tmp_path / "x")])
    assert "targets.hidden_size=80 is larger" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prune", model_dir, "--out", str(tmp_path / "x")])
    assert "no target given" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["importance", model_dir, "--calib", "x.txt", "--out", str(tmp_path / "s"), "--depth-criteria", "block"])
    assert "--block-sizes" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "s").exists()
