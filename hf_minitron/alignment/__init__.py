"""Alignment of the distilled student on TRL: SteerLM-style attribute-conditioned SFT and DPO.

* :func:`train_steerlm`, :func:`generate_with_attributes`, :func:`annotate_attributes` (``steerlm.py``).
* :func:`train_dpo`, :func:`preference_stats` (``dpo.py``).
* :func:`load_preference_data`, :func:`load_sft_data` (``data.py``): loaders that validate every row first.
* ``training.py``: what the fine-tuning stages share (config fields, LoRA merge, the PEFT unwrap).

The stages (config + function + result) are :mod:`hf_minitron.stages.steerlm` and :mod:`hf_minitron.stages.dpo`.
Teacher correction moved to :mod:`hf_minitron.correction` (a stage before pruning); its names still import from here
for one release, with a ``DeprecationWarning``.
"""

import importlib
import warnings

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
from .training import LoraSettings, TrainSettings, get_base_model

_MOVED = {"correct_teacher": "hf_minitron.correction", "build_correction_trainer": "hf_minitron.correction"}


def __getattr__(name: str):
    if name in _MOVED:
        warnings.warn(f"hf_minitron.alignment.{name} moved to {_MOVED[name]} (teacher correction is a stage before "
                      f"pruning); import it from there or from hf_minitron", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AlignmentDataError", "HELPSTEER_ATTRIBUTES", "LoraSettings", "OASST_ATTRIBUTES", "PreferenceStats",
    "TrainSettings", "annotate_attributes", "build_dpo_trainer", "build_steerlm_trainer", "completion_logprobs",
    "format_attributes", "generate_with_attributes", "get_base_model", "load_preference_data", "load_sft_data",
    "preference_logps", "preference_stats", "steerlm_dataset", "train_dpo", "train_steerlm", "verbosity_labels",
]
