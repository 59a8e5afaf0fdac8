"""`hf-minitron run`: a tiny recipe end to end, skipping completed stages, rerunning from a changed one, resuming a
killed distillation to the same student, refusing bad recipes before any stage runs, and 2 processes == 1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_minitron.errors import ConfigError
from hf_minitron.recipe import load_recipe, run_recipe
from hf_minitron.testing import tiny_model, tiny_tokenizer

WORDS = "the a teacher student layer head neuron prune distil token model small large data".split()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny Llama teacher folder and a text file of 120 short documents."""
    root = tmp_path_factory.mktemp("recipe_assets")
    model, tok = tiny_model("llama", seed=0), tiny_tokenizer()
    model.save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    docs = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(12 + i % 9)) for i in range(120)]
    (root / "docs.txt").write_text("\n".join(docs) + "\n")
    return root


def recipe_dict(assets: Path, out: Path, **distill) -> dict:
    settings = dict(max_steps=5, per_device_train_batch_size=2, max_length=32, use_cpu=True, save_steps=2,
                    learning_rate=1e-3, seed=0, logging_steps=1, disable_tqdm=True)
    settings.update(distill)
    return {"name": "tiny", "output_dir": str(out), "teacher": str(assets / "teacher"),
            "data": str(assets / "docs.txt"),
            "stages": {"importance": {"num_samples": 8, "seq_len": 32, "batch_size": 4},
                       "prune": {"intermediate_size": 64, "num_hidden_layers": 3},
                       "distill": settings}}


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def test_complete_then_skip_then_rerun_only_from_the_changed_stage(assets, tmp_path):
    out = tmp_path / "run"
    first = run_recipe(recipe_dict(assets, out), log=None)
    assert first.ran == ["importance", "prune", "distill"]
    student = first.products["student"]
    assert Path(student, "model.safetensors").is_file() and Path(student, "log_history.json").is_file()
    assert json.loads((out / "03-distill.done").read_text())["result"]["metrics"]["global_step"] == 5

    again = run_recipe(recipe_dict(assets, out), log=None)
    assert again.ran == [] and again.skipped == ["importance", "prune", "distill"]

    changed = run_recipe(recipe_dict(assets, out, max_steps=6), log=None)
    assert changed.ran == ["distill"] and changed.skipped == ["importance", "prune"]
    assert changed.stages[-1].result.metrics["global_step"] == 6

    # a change early in the pipeline reruns that stage and everything after it, never anything before
    recipe = recipe_dict(assets, out, max_steps=6)
    recipe["stages"]["prune"]["intermediate_size"] = 48
    assert run_recipe(recipe, log=None).ran == ["prune", "distill"]
    assert run_recipe(recipe, log=None, from_stage="importance").ran == ["importance", "prune", "distill"]


KILLER = textwrap.dedent("""
    import os, signal, sys
    from hf_minitron.distill import DistillationTrainer
    from hf_minitron.recipe import run_recipe
    original = DistillationTrainer.training_step
    def training_step(self, *args, **kwargs):
        if self.state.global_step == 3:  # checkpoint-2 is on disk; die as `kill -9` would, mid-distillation
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)
    DistillationTrainer.training_step = training_step
    import json
    run_recipe(json.loads(sys.argv[1]), log=None)
""")


def test_killed_distillation_resumes_from_its_checkpoint_to_the_same_student(assets, tmp_path):
    reference = run_recipe(recipe_dict(assets, tmp_path / "uninterrupted"), log=None)

    out = tmp_path / "killed"
    recipe = recipe_dict(assets, out)
    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(recipe)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (out / "02-prune.done").is_file() and not (out / "03-distill.done").exists()
    assert (out / "03-distill.checkpoints" / "checkpoint-2").is_dir()

    resumed = run_recipe(recipe, log=None)
    assert [(s.name, s.status) for s in resumed.stages] == [
        ("importance", "skipped"), ("prune", "skipped"), ("distill", "resumed")]
    got, want = weights(resumed.products["student"]), weights(reference.products["student"])
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if any stage loads a model (every refusal must come before)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the recipe was refused")

    monkeypatch.setattr("hf_minitron.loading.load_causal_lm", refuse)


@pytest.mark.parametrize("change, words", [
    (lambda r: r["stages"].update(prunee={}), ["prunee", "did you mean 'prune'"]),
    (lambda r: r["stages"]["distill"].update(max_stepz=3), ["distill", "max_stepz", "max_steps"]),
    (lambda r: r["stages"].pop("prune"), ["distill", "student", "prune"]),
    (lambda r: r["stages"]["prune"].update(intermediate_size=10_000), ["prune", "intermediate_size=10000", "<= 128"]),
    (lambda r: r["stages"]["prune"].update(num_attention_heads=3), ["num_attention_heads=3", "num_key_value_heads"]),
    (lambda r: r.update(stages={}), ["stages"]),
    (lambda r: r.update(outptu_dir="x"), ["outptu_dir", "output_dir"]),
    (lambda r: r["stages"]["distill"].update(learning_rate=-1.0), ["learning_rate"]),
])
def test_bad_recipe_refused_before_any_stage_runs(assets, tmp_path, no_model_loads, change, words):
    recipe = recipe_dict(assets, tmp_path / "run")
    change(recipe)
    with pytest.raises(ConfigError) as err:
        run_recipe(recipe, log=None)
    for word in words:
        assert word in str(err.value), str(err.value)
    assert not (tmp_path / "run").exists()


def test_output_dir_of_another_recipe_refused(assets, tmp_path, no_model_loads):
    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.json").write_text(json.dumps({"name": "someone-else"}))
    with pytest.raises(ConfigError, match="someone-else"):
        run_recipe(recipe_dict(assets, out), log=None)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no recipe run"):
        run_recipe(recipe_dict(assets, tmp_path / "other"), log=None)


def test_run_dir_placeholder(assets, tmp_path):
    from hf_minitron.recipe import plan_stages, stage_values

    recipe = load_recipe(recipe_dict(assets, tmp_path / "run"))
    recipe.stages["distill"]["checkpoint_dir"] = "{output_dir}/ckpt"
    distill = next(s for s in plan_stages(recipe) if s.name == "distill")
    assert stage_values(recipe, distill, {})["checkpoint_dir"] == f"{(tmp_path / 'run').resolve()}/ckpt"


def test_overrides_and_yaml_file(assets, tmp_path):
    import yaml

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(assets, tmp_path / "run")))
    recipe = load_recipe(path, overrides=["distill.max_steps=7", "prune.intermediate_size=32", "teacher=x"])
    assert recipe.stages["distill"]["max_steps"] == 7
    assert recipe.stages["prune"]["intermediate_size"] == 32 and recipe.teacher == "x"
    assert list(recipe.stages) == ["importance", "prune", "distill"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_one_process_result(assets, tmp_path):
    """Under torchrun (2 CPU processes, gloo) the data-parallel stages run on both ranks with half the batch each;
    the student equals a 1-process run with the same global batch."""
    import yaml

    one = run_recipe(recipe_dict(assets, tmp_path / "one", per_device_train_batch_size=4), log=None)
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(assets, tmp_path / "two", per_device_train_batch_size=2)))
    exe = Path(sys.executable).parent / "hf-minitron"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "--no-python", str(exe), "run", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two_scores = load_file(str(tmp_path / "two" / "01-importance" / "importance.safetensors"))
    one_scores = load_file(str(tmp_path / "one" / "01-importance" / "importance.safetensors"))
    for name in one_scores:
        torch.testing.assert_close(two_scores[name], one_scores[name], rtol=1e-5, atol=1e-6, msg=name)
    # same logged losses step by step, and the same weights up to float summation order (2 ranks x 2 rows vs 4 rows)
    losses = [[e["loss"] for e in json.loads((Path(d) / "log_history.json").read_text()) if "loss" in e]
              for d in (tmp_path / "two" / "03-distill", one.products["student"])]
    assert len(losses[0]) == 5 and losses[0] == pytest.approx(losses[1], rel=1e-6)
    got, want = weights(tmp_path / "two" / "03-distill"), weights(one.products["student"])
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=2e-5, msg=name)


def test_yaml_strings_become_numbers_like_on_the_command_line(assets, tmp_path, no_model_loads):
    """YAML 1.1 reads `1e-3` as a string; a recipe value is converted to the field's type as the CLI parser would."""
    from hf_minitron.stages import get_stage
    from hf_minitron.stages.base import build_config

    config = build_config(get_stage("distill").config_cls,
                          {"student": "s", "data": "d.txt", "output_dir": str(tmp_path / "o"), "use_cpu": "true",
                           "learning_rate": "1e-3", "max_steps": "7"}, where="recipe stage 'distill'",
                          command="distill")
    assert config.learning_rate == 1e-3 and config.max_steps == 7 and config.use_cpu is True
    with pytest.raises(ConfigError, match="max_steps='many'"):
        build_config(get_stage("distill").config_cls, {"student": "s", "data": "d.txt", "use_cpu": True,
                                                       "output_dir": str(tmp_path / "o"), "max_steps": "many"},
                     where="recipe stage 'distill'", command="distill")
    recipe = load_recipe(recipe_dict(assets, tmp_path / "run"), overrides=["distill.learning_rate=1e-3"])
    assert recipe.stages["distill"]["learning_rate"] == "1e-3"  # as YAML reads it; converted when the stage builds
