"""Logit knowledge distillation: losses, DistillationConfig and DistillationTrainer (TRL subclasses)."""

from .config import DistillationConfig
from .intermediate import HiddenProjections, intermediate_loss, parse_layer_map
from .losses import KD_LOSSES, DistillationLossOutput, distillation_loss
from .trainer import DistillationTrainer, TeacherOutputs

__all__ = [
    "KD_LOSSES", "DistillationConfig", "DistillationLossOutput", "DistillationTrainer", "HiddenProjections",
    "TeacherOutputs", "distillation_loss", "intermediate_loss", "parse_layer_map",
]
