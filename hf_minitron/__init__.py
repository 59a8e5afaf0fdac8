"""hf-minitron: Minitron-style structured pruning and knowledge distillation for Hugging Face causal LMs.

Importing the package is cheap: public names load their modules on first use (trl, peft and datasets are only
imported by the stages that need them).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it (relative to this package). Each stage adds its own names here.
_LAZY = {
    "load_causal_lm": "loading",
    "save_model": "loading",
    "default_teacher_gguf": "loading",
    "get_adapter": "arch",
    "SUPPORTED_MODEL_TYPES": "arch",
    "count_parameters": "arch",
    "correct_teacher": "correction",
    "run_correct_teacher": "stages.correction",
    "CorrectTeacherConfig": "stages.correction",
    "train_steerlm": "alignment",
    "generate_with_attributes": "alignment",
    "annotate_attributes": "alignment",
    "run_steerlm": "stages.steerlm",
    "SteerLMConfig": "stages.steerlm",
    "train_dpo": "alignment",
    "preference_stats": "alignment",
    "load_preference_data": "alignment",
    "run_dpo": "stages.dpo",
    "DPOStageConfig": "stages.dpo",
    "TrainSettings": "alignment",  # deprecated (one release): the stage configs above
    "LoraSettings": "alignment",  # deprecated (one release): use_lora, lora_r, ... on the stage configs
    "DistillationTrainer": "distill",
    "DistillationConfig": "distill",
    "DistillationTrainingArguments": "distill",
    "run_recipe": "recipe",
    "load_recipe": "recipe",
    "run_stage": "stages",
    "run_importance": "stages.importance",
    "ImportanceConfig": "stages.importance",
    "run_prune": "stages.prune",
    "PruneConfig": "stages.prune",
    "run_cache_teacher": "stages.cache_teacher",
    "CacheTeacherConfig": "stages.cache_teacher",
    "run_distill": "stages.distill",
    "DistillStageConfig": "stages.distill",
    "run_search": "stages.search",
    "SearchConfig": "stages.search",
    "estimate_importance": "importance",
    "ImportanceScores": "importance",
    "prune_model": "pruning",
    "PruningTargets": "pruning",
    "estimate_importance_streamed": "streaming",
    "prune_checkpoint": "streaming",
    "choose_widths": "search",
    "search_architectures": "search",
    "enumerate_architectures": "search",
    "Architecture": "search",
    "topk_kl_loss": "kernels.topk_kl",
    "fused_linear_topk_kl_loss": "kernels.topk_kl",
    "TeacherCache": "distill.teacher_cache",
    "write_teacher_cache": "distill.teacher_cache",
    "run_eval": "stages.evaluate",
    "EvalConfig": "stages.evaluate",
    "mean_nll": "evaluation",
    "perplexity": "evaluation",
    "run_card": "stages.card",
    "CardConfig": "stages.card",
    "render_card": "card",
    "write_card": "card",
    "run_push": "stages.push",
    "PushConfig": "stages.push",
    "push_folder": "hub",
    "run_generate_data": "stages.generate_data",
    "GenerateDataConfig": "stages.generate_data",
    "generate_records": "generate",
    "load_prompts": "generate",
    "builtin_prompts": "prompts",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_minitron' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
