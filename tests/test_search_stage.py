"""The ``search`` stage (run_search / ``hf-minitron search``) on a tiny saved checkpoint."""

import json

import pytest
import torch

from hf_minitron.arch import count_parameters
from hf_minitron.cli import main
from hf_minitron.errors import ConfigError, DataError
from hf_minitron.importance import estimate_importance
from hf_minitron.loading import load_causal_lm, save_model
from hf_minitron.outputs import OutputDirError
from hf_minitron.pruning import prune_model
from hf_minitron.search import Architecture
from hf_minitron.stages import get_stage, run_stage
from hf_minitron.stages.search import SearchConfig, read_architecture
from hf_minitron.testing import tiny_model, tiny_tokenizer

WORDS = "the quick brown fox jumps over the lazy dog while five boxing wizards jump quickly past a sphinx".split()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    save_model(tiny_model("llama"), tiny_tokenizer(), root / "model")
    lines = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(12)) for i in range(60)]
    (root / "data.txt").write_text("\n".join(lines) + "\n")
    model, _ = load_causal_lm(root / "model")
    calib = torch.randint(3, 259, (6, 24), generator=torch.Generator().manual_seed(0))
    estimate_importance(model, calib, batch_size=3, depth_criteria=("block_influence",)).save(root / "scores")
    return root


def _config(ws, out, **kw):
    values = dict(model=str(ws / "model"), scores=str(ws / "scores"), data=str(ws / "data.txt"), output_dir=str(out),
                  target_ratio=0.5, tolerance=0.1, width_multiple=16, num_samples=4, seq_len=24, eval_fraction=0.3,
                  use_cpu=True, report_to=[], disable_tqdm=True)
    values.update(kw)
    return SearchConfig(**values)


def test_stage_writes_the_chosen_architecture_and_the_candidates(workspace, tmp_path):
    spec = get_stage("search")
    assert spec.produces == "architecture" and spec.inputs == {"model": "teacher", "scores": "scores", "data": "data"}
    result = run_stage("search", _config(workspace, tmp_path / "out"))
    arch = json.loads((tmp_path / "out" / "architecture.json").read_text())
    cands = json.loads((tmp_path / "out" / "candidates.json").read_text())
    report = json.loads((tmp_path / "out" / "search.json").read_text())
    best = min(cands, key=lambda c: c["zero_shot_loss"])
    assert arch == {k: best[k] for k in arch} and set(arch) == set(Architecture.__dataclass_fields__)
    assert best["zero_shot_rank"] == 1 and report["evaluated"] == len(cands) == result.metrics["evaluated"]
    model, _ = load_causal_lm(workspace / "model")
    budget = count_parameters(model)[1] * 0.5
    assert report["budget"] == round(budget)
    assert all(abs(c["params"] - budget) <= 0.1 * budget for c in cands)
    # architecture.json feeds the pruner as it is and gives the promised count
    assert read_architecture(tmp_path / "out") == arch
    pruned = prune_model(model, read_architecture(tmp_path / "out" / "architecture.json"), workspace / "scores")
    assert count_parameters(pruned)[1] == best["params"]


def test_stage_distils_the_top_n_and_reranks(workspace, tmp_path):
    config = _config(workspace, tmp_path / "out", distill_top_n=2, max_steps=2, per_device_train_batch_size=2,
                     learning_rate=1e-2, seed=3)
    result = run_stage("search", config)
    cands = json.loads((tmp_path / "out" / "candidates.json").read_text())
    distilled = [c for c in cands if c["distill_rank"] is not None]
    assert sorted(c["zero_shot_rank"] for c in distilled) == [1, 2]
    chosen = min(distilled, key=lambda c: c["distill_loss"])
    arch = json.loads((tmp_path / "out" / "architecture.json").read_text())
    assert arch == {k: chosen[k] for k in arch}
    tau = 1.0 if (distilled[0]["zero_shot_rank"] < distilled[1]["zero_shot_rank"]) == (
        distilled[0]["distill_rank"] < distilled[1]["distill_rank"]) else -1.0
    assert result.metrics["kendall_tau"] == tau and result.metrics["distilled"] == 2
    assert (tmp_path / "out.checkpoints").is_dir()  # trainer output apart from the product
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"architecture.json", "candidates.json", "search.json"}


def test_cli_runs_the_stage(workspace, tmp_path, capsys):
    rc = main(["search", "--model", str(workspace / "model"), "--scores", str(workspace / "scores"),
               "--data", str(workspace / "data.txt"), "--output_dir", str(tmp_path / "cli"), "--target_ratio", "0.5",
               "--tolerance", "0.1", "--width_multiple", "16", "--num_samples", "4", "--seq_len", "24",
               "--eval_fraction", "0.3", "--axes", "hidden_size", "intermediate_size", "--disable_tqdm", "true"])
    out, _ = capsys.readouterr()
    assert rc == 0 and json.loads(out)["stage"] == "search"
    cands = json.loads((tmp_path / "cli" / "candidates.json").read_text())
    assert cands and all(c["num_attention_heads"] == 4 and c["num_key_value_heads"] == 2 for c in cands)


@pytest.mark.parametrize("kw, match", [
    (dict(target_ratio=None), "give exactly one budget"),
    (dict(target_params=1000), "give exactly one budget"),
    (dict(tolerance=1.5), "tolerance=1.5"),
    (dict(layer_choices=[2]), "layer_choices is set but 'depth' is not in axes"),
    (dict(distill_top_n=-1), "distill_top_n=-1"),
    (dict(axes=["width"]), r"axes=\['width'\]: choose one or more of hidden_size"),
    (dict(max_length=64), "max_length=64 but seq_len=24"),
])
def test_config_errors_name_the_field(workspace, tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        _config(workspace, tmp_path / "o", **kw)


def test_checks_before_the_model_loads(workspace, tmp_path, monkeypatch):
    import hf_minitron.loading as loading

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(loading, "load_causal_lm", no_load)
    with pytest.raises(DataError, match="does not exist"):
        run_stage("search", _config(workspace, tmp_path / "a", data=str(tmp_path / "missing.jsonl")))
    with pytest.raises(ConfigError, match="holds no importance scores"):
        run_stage("search", _config(workspace, tmp_path / "b", scores=str(tmp_path)))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(OutputDirError, match="set overwrite"):
        run_stage("search", _config(workspace, tmp_path / "full"))


def test_impossible_budget_and_short_data_are_user_errors(workspace, tmp_path):
    with pytest.raises(ConfigError, match="no architecture within 10%"):
        run_stage("search", _config(workspace, tmp_path / "a", target_ratio=None, target_params=10))
    with pytest.raises(DataError, match="blocks of seq_len=24 tokens, 400 needed"):
        run_stage("search", _config(workspace, tmp_path / "b", num_samples=400))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_read_architecture_refuses_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="holds no architecture.json"):
        read_architecture(tmp_path)
    (tmp_path / "architecture.json").write_text('{"hidden_size": 64, "layers": 3}')
    with pytest.raises(ConfigError, match="keys among"):
        read_architecture(tmp_path)
