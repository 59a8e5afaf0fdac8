"""`recipes/demo.yaml` (what `make demo` runs): it validates as shipped, its held-out split is disjoint from what
distillation trains on, and a miniature of it (a tiny teacher, every stage shrunk) runs end to end, leaves the
student, the report and the card, and is skipped stage by stage on a second run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_minitron.data import split_held_out
from hf_minitron.recipe import load_recipe, run_recipe, validate_recipe
from hf_minitron.testing import tiny_model, tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "demo.yaml"
PIPELINE = ["generate-data", "importance", "search", "prune", "distill", "eval", "card"]


@pytest.fixture
def in_repo(monkeypatch):
    """The recipe names package files relative to the repository root, where `make demo` runs it."""
    monkeypatch.chdir(REPO)


def test_demo_recipe_validates_as_shipped(in_repo):
    recipe = load_recipe(DEMO)
    planned = validate_recipe(recipe)
    assert [s.name for s in planned] == PIPELINE
    assert recipe.teacher == "default" and recipe.data is None  # the data is the teacher's own answers
    assert Path(recipe.output_dir) == Path("outputs/demo")
    search, prune = recipe.stages["search"], recipe.stages["prune"]
    assert search["target_ratio"] == 0.5 and search["distill_top_n"] == 0  # widths from the scores, zero-shot
    assert not {"hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"} & set(prune)
    assert "architecture" not in prune  # the runner wires the search's output into prune
    from hf_minitron.recipe import stage_values

    search_dir = next(s.output_dir for s in planned if s.name == "search")
    prune_stage = next(s for s in planned if s.name == "prune")
    wired = stage_values(recipe, prune_stage, {"teacher": "default", "architecture": str(search_dir)})
    assert Path(wired["architecture"]).resolve() == search_dir


def test_demo_held_out_text_is_never_trained_on(in_repo):
    stages = load_recipe(DEMO).stages
    n = stages["generate-data"]["num_prompts"]
    fraction = stages["eval"]["held_out_fraction"]
    # eval scores the last `fraction` of the answers; distill must stop before them
    train, held = split_held_out(list(range(n)), fraction)
    assert stages["distill"]["max_samples"] == len(train) == n - len(held)
    # eval reads the generated answers (the data product), the same file distill trains on
    assert "data" not in stages["eval"] and "data" not in stages["distill"]


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_teacher")
    tiny_model("llama", seed=0).save_pretrained(root)
    tiny_tokenizer().save_pretrained(root)
    return root


def miniature(out: Path, teacher: Path) -> list[str]:
    """Overrides that shrink every stage of the demo to seconds on the tiny teacher (same stages, same wiring)."""
    return [
        f"output_dir={out}", f"teacher={teacher}",
        "generate-data.num_prompts=40", "generate-data.max_new_tokens=12", "generate-data.batch_size=8",
        "generate-data.progress=false",
        "importance.num_samples=4", "importance.seq_len=32",
        "search.num_samples=2", "search.seq_len=32", "search.max_candidates=3", "search.width_multiple=16",
        "search.use_cpu=true", "search.disable_tqdm=true",
        "distill.max_samples=36", "distill.max_length=64", "distill.use_cpu=true", "distill.save_steps=2",
        "distill.disable_tqdm=true", "distill.seed=0",
        "eval.seq_len=32", "eval.num_windows=2", "eval.max_new_tokens=4",
        "card.license=apache-2.0",
    ]


def test_demo_miniature_runs_end_to_end_then_skips_every_stage(in_repo, tiny_teacher, tmp_path):
    out = tmp_path / "demo"
    first = run_recipe(DEMO, overrides=miniature(out, tiny_teacher), log=None)
    assert first.ran == PIPELINE and not first.skipped

    data = [json.loads(line) for line in (out / "01-generate-data" / "data.jsonl").read_text().splitlines()]
    assert len(data) == 40 and all(r["messages"][-1]["role"] == "assistant" for r in data)

    # widths chosen by the search at half the teacher's non-embedding parameters, applied by prune
    arch = json.loads((out / "03-search" / "architecture.json").read_text())
    pruned_config = json.loads((out / "04-prune" / "config.json").read_text())
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
        if key in arch:
            assert pruned_config[key] == arch[key]
    assert pruned_config["num_hidden_layers"] == 4  # width pruning only

    assert (out / "05-distill" / "model.safetensors").is_file()
    assert json.loads((out / "05-distill.done").read_text())["result"]["metrics"]["global_step"] >= 1
    evaluation = json.loads((out / "06-eval" / "eval.json").read_text())
    rows = {m["role"] if m["role"] != "model" else "pruned": m for m in evaluation["models"]}
    assert set(rows) == {"teacher", "student", "pruned"}
    assert rows["pruned"]["source"] == str(out / "04-prune")
    assert rows["student"]["parameters"] == rows["pruned"]["parameters"] < rows["teacher"]["parameters"]
    # about half of the teacher's non-embedding parameters (the search's default tolerance: 5% of the budget)
    half = rows["teacher"]["non_embedding_parameters"] / 2
    assert abs(rows["student"]["non_embedding_parameters"] - half) <= 0.05 * half
    for row in rows.values():
        assert row["perplexity"]["perplexity"] > 1 and row["throughput"]["tokens_per_s"] > 0
    assert (out / "06-eval" / "eval.md").read_text().count("|") > 10
    card = out / "07-card"
    assert (card / "README.md").is_file() and (card / "model.safetensors").is_file()

    before = (out / "06-eval" / "eval.json").read_bytes()
    again = run_recipe(DEMO, overrides=miniature(out, tiny_teacher), log=None)
    assert again.ran == [] and again.skipped == PIPELINE
    assert (out / "06-eval" / "eval.json").read_bytes() == before
