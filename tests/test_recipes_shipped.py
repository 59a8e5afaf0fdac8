"""Every file in `recipes/` parses: whole-pipeline recipes validate stage by stage (their pruning targets checked
against the teacher's published config, built here with no weights), single-stage `--config` files build their
stage's config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hf_minitron.recipe import load_recipe, validate_recipe
from hf_minitron.stages import get_stage
from hf_minitron.stages.prune import check_targets_fit

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
PIPELINES = sorted(p for p in RECIPES.glob("*.yaml") if "stages" in (yaml.safe_load(p.read_text()) or {}))
# single-stage --config files: file -> stage
STAGE_FILES = {"align_correct_teacher.yaml": "correct-teacher", "align_dpo.yaml": "dpo",
               "align_steerlm.yaml": "steerlm", "distill_smollm2.yaml": "distill"}

# Llama-3.1-8B as published (config.json of meta-llama/Llama-3.1-8B)
LLAMA31_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                  num_hidden_layers=32, vocab_size=128256, head_dim=128, max_position_embeddings=131072,
                  rope_theta=500000.0, tie_word_embeddings=False)


def test_every_recipe_file_is_covered():
    names = {p.name for p in RECIPES.glob("*.yaml")}
    assert names == {p.name for p in PIPELINES} | set(STAGE_FILES)


@pytest.mark.parametrize("path", PIPELINES, ids=[p.name for p in PIPELINES])
def test_pipeline_recipe_validates(path, tmp_path):
    recipe = load_recipe(path, output_dir=str(tmp_path / "run"), overrides=["data=corpus.jsonl"])
    planned = validate_recipe(recipe, check_targets=False)
    assert [s.name for s in planned] == list(recipe.stages)
    if recipe.teacher == "meta-llama/Llama-3.1-8B":
        from transformers import LlamaConfig

        prune = recipe.stages["prune"]
        targets = {k: v for k, v in prune.items() if k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                                           "num_key_value_heads", "num_hidden_layers")}
        check_targets_fit(LlamaConfig(**LLAMA31_8B), targets)
        if "hidden_size" in targets:  # the paper's 4B-Width: 3072 hidden, 9216 ffn, 32 q / 8 kv heads, 32 layers
            assert targets == {"hidden_size": 3072, "intermediate_size": 9216, "num_attention_heads": 32,
                               "num_key_value_heads": 8}
        else:  # its depth twin: 16 layers
            assert targets == {"num_hidden_layers": 16}


def test_targets_that_do_not_fit_the_published_config_are_refused():
    from transformers import LlamaConfig

    from hf_minitron.errors import ConfigError

    with pytest.raises(ConfigError, match="hidden_size=5000"):
        check_targets_fit(LlamaConfig(**LLAMA31_8B), {"hidden_size": 5000})
    with pytest.raises(ConfigError, match="num_key_value_heads=3"):
        check_targets_fit(LlamaConfig(**LLAMA31_8B), {"num_key_value_heads": 3, "num_attention_heads": 30})


@pytest.mark.parametrize("name, stage", sorted(STAGE_FILES.items()))
def test_stage_config_file_builds_its_stage_config(name, stage, tmp_path):
    from hf_minitron.cli.yaml_config import read_stage_yaml

    spec = get_stage(stage)
    values = read_stage_yaml(RECIPES / name, spec.config_cls, command=stage)
    required = {"output_dir": str(tmp_path / "out"), "data": "corpus.jsonl"}
    if "student" in {f for f in spec.config_cls.__dataclass_fields__}:
        required["student"] = "student_dir"
    if stage == "distill":
        values["use_cpu"] = True
    config = spec.config_cls(**{**required, **values})
    for key, value in values.items():
        assert getattr(config, key) == value or key in ("report_to", "lr_scheduler_type", "save_strategy")
