"""Teacher correction and alignment (SteerLM-style attribute-conditioned SFT, DPO) on TRL.

* :func:`correct_teacher` (``correction.py``): LoRA (merged back) or full SFT of the teacher on the distillation data.
* :func:`train_steerlm`, :func:`generate_with_attributes`, :func:`annotate_attributes` (``steerlm.py``).
* :func:`train_dpo`, :func:`preference_stats` (``dpo.py``).
* :func:`load_preference_data`, :func:`load_sft_data` (``data.py``): loaders that validate every row first.
"""

from .correction import build_correction_trainer, correct_teacher
from .data import AlignmentDataError, load_preference_data, load_sft_data
from .dpo import (
    PreferenceStats,
    build_dpo_trainer,
    completion_logprobs,
    preference_logps,
    preference_stats,
    train_dpo,
)
from .steerlm import (
    HELPSTEER_ATTRIBUTES,
    OASST_ATTRIBUTES,
    annotate_attributes,
    build_steerlm_trainer,
    format_attributes,
    generate_with_attributes,
    steerlm_dataset,
    train_steerlm,
    verbosity_labels,
)
from .training import LoraSettings, TrainSettings

__all__ = [
    "AlignmentDataError", "HELPSTEER_ATTRIBUTES", "LoraSettings", "OASST_ATTRIBUTES", "PreferenceStats",
    "TrainSettings", "annotate_attributes", "build_correction_trainer", "build_dpo_trainer", "build_steerlm_trainer",
    "completion_logprobs", "correct_teacher", "format_attributes", "generate_with_attributes", "load_preference_data",
    "load_sft_data", "preference_logps", "preference_stats", "steerlm_dataset", "train_dpo", "train_steerlm",
    "verbosity_labels",
]
