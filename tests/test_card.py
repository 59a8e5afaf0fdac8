"""The model card: Hub metadata (validated by huggingface_hub's own parsers, offline), body, plots, recipe runs."""

import json
import os

import pytest
import torch
import yaml

from hf_minitron.errors import ConfigError
from hf_minitron.evaluation.report import build_report
from hf_minitron.importance import ImportanceScores
from hf_minitron.loading import save_model
from hf_minitron.stages import run_stage
from hf_minitron.testing import tiny_model

PNG = b"\x89PNG\r\n\x1a\n"


def _report(tmp_path):
    models = [
        {"name": "teacher", "role": "teacher", "source": "default", "parameters": 1000, "non_embedding_parameters": 600,
         "perplexity": {"nll": 2.0, "perplexity": 7.389, "windows": 4, "predicted_tokens": 60, "windows_fingerprint": "a"},
         "throughput": {"tokens_per_s": 100.0, "first_token_latency_s": 0.02, "new_tokens": 64, "prompts": 2},
         "toolcall": {"turns": 4, "json_rate": 1.0, "valid_call_rate": 0.75, "name_match_rate": 0.75}},
        {"name": "student", "role": "student", "source": "s", "parameters": 500, "non_embedding_parameters": 300,
         "perplexity": {"nll": 2.5, "perplexity": 12.25, "windows": 4, "predicted_tokens": 60, "windows_fingerprint": "a"},
         "throughput": {"tokens_per_s": 180.0, "first_token_latency_s": 0.01, "new_tokens": 64, "prompts": 2},
         "toolcall": {"turns": 4, "json_rate": 0.75, "valid_call_rate": 0.5, "name_match_rate": 0.25},
         "lm_eval": {"tiny_mc": {"acc": 0.625}, "_samples": {"tiny_mc": 8}}},
    ]
    settings = {"perplexity": {"data": "wikitext/wiki.txt", "documents": 10, "seq_len": 16, "num_windows": 4,
                               "add_bos": False},
                "throughput": {"prompts": ["a", "b"], "max_new_tokens": 32, "device": "cpu", "dtype": "float32"},
                "toolcall": {"data": "/data/glaive.json", "turns": 4}}
    out = tmp_path / "eval"
    out.mkdir()
    (out / "eval.json").write_text(json.dumps(build_report(models, settings, [])))
    return out


@pytest.fixture
def student(tmp_path, tokenizer):
    folder = save_model(tiny_model("qwen3", seed=1, num_hidden_layers=2), tokenizer, tmp_path / "student")
    history = [{"loss": 3.0 - 0.2 * i, "step": 10 * i, "num_input_tokens_seen": 4096 * i} for i in range(1, 6)]
    (folder / "log_history.json").write_text(json.dumps(history + [{"eval_loss": 2.4, "step": 50}]))
    return folder


def test_card_metadata_round_trips_through_huggingface_hub(student, tmp_path):
    from huggingface_hub import ModelCard, ModelCardData, metadata_load
    from huggingface_hub.repocard_data import model_index_to_eval_results

    scores = tmp_path / "scores"
    ImportanceScores(heads=torch.rand(4, 4), neurons=torch.rand(4, 128), channels=torch.rand(64)).save(scores)
    result = run_stage("card", {"model_dir": str(student), "teacher": "default", "report": str(_report(tmp_path)),
                                "scores": str(scores), "datasets": ["HuggingFaceFW/fineweb-edu", "/data/mine.jsonl"],
                                "repo_id": "me/tiny-minitron"})
    assert result.output_dir == str(student)
    meta = metadata_load(student / "README.md")
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["base_model_relation"] == "finetune"
    assert meta["library_name"] == "transformers" and meta["license"] == "apache-2.0"
    assert {"pruned", "distillation", "minitron", "qwen3"} <= set(meta["tags"])
    assert meta["datasets"] == ["HuggingFaceFW/fineweb-edu"]  # local files are named in the body only
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "me/tiny-minitron"
    got = {(r.dataset_name, r.metric_type): r.metric_value for r in results}
    assert got == {("wiki.txt", "perplexity"): 12.25, ("glaive.json", "valid_call_rate"): 0.5,
                   ("glaive.json", "name_match_rate"): 0.25, ("tiny_mc", "acc"): 0.625}
    card = ModelCard.load(student / "README.md")  # parses and validates the model-index, raising on an invalid one
    again = ModelCardData(**card.data.to_dict())
    assert again.to_dict() == card.data.to_dict() and len(again.eval_results) == 4
    text = card.text
    for plot in ("plots/importance.png", "plots/distillation_loss.png", "plots/teacher_vs_student.png"):
        assert f"]({plot})" in text and (student / plot).read_bytes().startswith(PNG)
    assert "| perplexity | 7.389 | 12.250 | 1.658 |" in text  # the evaluation table, student / teacher
    assert "| distill | 20,480 |" in text  # tokens from the log history
    assert "2407.14679" in text and "2408.11796" in text
    assert json.loads((student / "eval.json").read_text())["models"][1]["parameters"] == 500


def _marker(root, i, name, config, metrics):
    (root / f"{i:02d}-{name}.done").write_text(json.dumps({
        "stage": name, "hash": "x", "seconds": 1.0, "config": config,
        "result": {"stage": name, "output_dir": str(root / f"{i:02d}-{name}"), "metrics": metrics}}))


def test_card_of_a_recipe_run(tmp_path, tokenizer):
    """In a recipe run folder the card finds the stages (markers), the recipe, the scores and the teacher's sizes;
    with its own output_dir the product is a linked copy of the model plus the card, and the recipe loses secrets."""
    root = tmp_path / "run"
    root.mkdir()
    model = save_model(tiny_model("llama", num_hidden_layers=2), tokenizer, root / "03-distill")
    scores = root / "01-importance"
    ImportanceScores(heads=torch.rand(4, 4), neurons=torch.rand(4, 128), channels=torch.rand(64)).save(scores)
    recipe = {"name": "demo", "output_dir": str(root), "teacher": "default", "data": "corpus.jsonl",
              "stages": {"importance": {"num_samples": 8}, "prune": {"num_hidden_layers": 2},
                         "distill": {"max_steps": 5, "hub_token": "hf_SECRET_in_recipe"}}}
    (root / "recipe.json").write_text(json.dumps(recipe))
    _marker(root, 1, "importance", {"num_samples": 8, "output_dir": str(scores)}, {"samples": 8, "tokens": 2048})
    before = {"layers": 4, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 128, "vocab_size": 259, "parameters": 164608}
    _marker(root, 2, "prune", {"num_hidden_layers": 2}, {"before": before, "dropped_layers": [1, 2]})
    _marker(root, 3, "distill", {"max_steps": 5}, {"global_step": 5, "train_loss": 2.5, "train_tokens": 10240})
    out = root / "04-card"
    result = run_stage("card", {"model_dir": str(model), "output_dir": str(out)})
    assert result.metrics["product"] == str(out.resolve()) and "importance" in result.metrics["plots"]
    assert os.stat(out / "model.safetensors").st_ino == os.stat(model / "model.safetensors").st_ino
    assert not (model / "README.md").exists()
    text = (out / "README.md").read_text()
    assert "| layers | 4 | 2 |" in text and "| parameters | 164,608 |" not in text.split("## How")[1]
    assert "| importance | 2,048 |" in text and "| distill | 10,240 |" in text
    assert "1. **importance**" in text and "3. **distill**" in text
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["stages"]["distill"] == {"max_steps": 5} and "hf_SECRET" not in text
    assert saved["data"] == "corpus.jsonl"


def test_license_is_the_teachers_or_refused(student, tmp_path, tokenizer):
    teacher = save_model(tiny_model("llama"), tokenizer, tmp_path / "teacher")
    with pytest.raises(ConfigError, match="the teacher's license is unknown .* set license"):
        run_stage("card", {"model_dir": str(student), "teacher": str(teacher)})
    assert not (student / "README.md").exists()
    (teacher / "README.md").write_text("---\nlicense: mit\n---\n# teacher\n")
    result = run_stage("card", {"model_dir": str(student), "teacher": str(teacher)})
    assert result.metrics["license"] == "mit" and result.metrics["base_model"] is None  # a local teacher has no Hub id
    assert "(the teacher's)" in (student / "README.md").read_text()
    with pytest.raises(ConfigError, match="did you mean 'apache-2.0'"):
        run_stage("card", {"model_dir": str(student), "teacher": "default", "license": "apache-2"})
    with pytest.raises(ConfigError, match="license='other' needs license_name and license_link"):
        run_stage("card", {"model_dir": str(student), "teacher": "default", "license": "other"})
    with pytest.raises(ConfigError, match="give a real license identifier"):
        run_stage("card", {"model_dir": str(student), "license": "unknown"})


def test_in_place_card_keeps_a_foreign_readme_unless_overwrite(student):
    (student / "README.md").write_text("# my own notes\n")
    with pytest.raises(ConfigError, match="README.md that hf-minitron did not write; set overwrite"):
        run_stage("card", {"model_dir": str(student), "teacher": "default"})
    assert (student / "README.md").read_text() == "# my own notes\n"
    run_stage("card", {"model_dir": str(student), "teacher": "default", "overwrite": True})
    run_stage("card", {"model_dir": str(student), "teacher": "default", "license": "mit"})  # its own card: replaced
    assert "license: mit" in (student / "README.md").read_text()


def test_loss_curve_from_the_last_checkpoint(tmp_path, tokenizer):
    from hf_minitron.card import read_log_history

    folder = save_model(tiny_model("llama"), tokenizer, tmp_path / "s")
    for step, loss in ((5, 9.0), (10, 1.5)):
        ckpt = tmp_path / "s.checkpoints" / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "trainer_state.json").write_text(json.dumps({"log_history": [{"loss": loss, "step": step}]}))
    assert read_log_history(folder) == [{"loss": 1.5, "step": 10}]
    result = run_stage("card", {"model_dir": str(folder), "teacher": "default"})
    assert set(result.metrics["plots"]) == {"loss"}
