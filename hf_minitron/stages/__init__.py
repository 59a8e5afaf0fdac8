"""Pipeline stages: one function + one dataclass config + one result each (see :mod:`hf_minitron.stages.base`).

The table below is the pipeline in order: the stage name (the ``hf-minitron`` subcommand and the recipe key), the
module that defines it, and its one-line help. Modules load on first use, so listing the stages stays cheap.
"""

from __future__ import annotations

import importlib

from ..errors import ConfigError
from .base import STAGES, StageResult, StageSpec, register_stage, suggest

# name -> (module, one-line help), in pipeline order
STAGE_TABLE: dict[str, tuple[str, str]] = {
    "generate-data": ("generate_data", "Sample the teacher's answers to prompts into a chat JSONL training set."),
    "correct-teacher": ("correction", "Correct the teacher: LoRA (merged back) or full fine-tuning on the corpus."),
    "importance": ("importance", "Score heads, neurons, embedding channels and layers on calibration data."),
    "search": ("search", "Search architectures under a parameter budget; rank by loss after pruning and distilling."),
    "prune": ("prune", "Prune to a target architecture (width and/or depth) using saved importance scores."),
    "cache-teacher": ("cache_teacher", "Run the teacher once over the data and store its top-k log-probs."),
    "distill": ("distill", "Distil a teacher into a (pruned) student with logit KD; save the student atomically."),
    "steerlm": ("steerlm", "SteerLM attribute-conditioned SFT on prompt/response data with 0-4 attribute labels."),
    "dpo": ("dpo", "DPO on preference pairs (TRL DPOTrainer), LoRA or full."),
    "eval": ("evaluate", "Evaluate teacher and students: perplexity, parameters, throughput, tool calls, lm-eval."),
    "card": ("card", "Render the model card (metadata, what was done, evaluation, plots) into a model folder."),
    "push": ("push", "Upload a model folder (weights, tokenizer, card, plots, recipe) to the Hugging Face Hub."),
}


def canonical_name(name: str) -> str:
    """``cache_teacher`` -> ``cache-teacher``; an unknown name is a :class:`ConfigError` with a suggestion."""
    key = str(name).replace("_", "-")
    if key not in STAGE_TABLE:
        raise ConfigError(f"unknown stage {name!r}{suggest(key, STAGE_TABLE)}; stages: {', '.join(available())}")
    return key


def available() -> list[str]:
    """Stage names whose module is present, in pipeline order."""
    import importlib.util

    return [n for n, (mod, _) in STAGE_TABLE.items() if importlib.util.find_spec(f"{__name__}.{mod}") is not None]


def get_stage(name: str) -> StageSpec:
    """The registered :class:`StageSpec` of ``name`` (imports its module)."""
    key = canonical_name(name)
    if key not in STAGES:
        importlib.import_module(f"{__name__}.{STAGE_TABLE[key][0]}")
    return STAGES[key]


def run_stage(name: str, config):
    """Run stage ``name`` with ``config`` (its config class instance, or a dict of its fields)."""
    spec = get_stage(name)
    if isinstance(config, dict):
        from .base import build_config

        config = build_config(spec.config_cls, config, where=f"stage {spec.name!r}", command=spec.name)
    return spec.run(config)


__all__ = ["STAGES", "STAGE_TABLE", "StageResult", "StageSpec", "available", "canonical_name", "get_stage",
           "register_stage", "run_stage"]
