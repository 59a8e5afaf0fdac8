"""Logit knowledge distillation: DistillationConfig and DistillationTrainer (TRL subclasses), their losses, the
teacher sources (a model in memory or an offline top-k cache) and the checks run before training."""

from .config import DistillationConfig, DistillationTrainingArguments
from .intermediate import HiddenProjections, intermediate_loss, parse_layer_map
from .losses import KD_LOSSES, DistillationLossOutput, distillation_loss, topk_distillation_loss
from .teacher_sources import CachedTeacher, OnlineTeacher, TeacherOutputs, TeacherSource
from .trainer import DistillationTrainer

__all__ = [
    "KD_LOSSES", "CachedTeacher", "DistillationConfig", "DistillationLossOutput", "DistillationTrainer",
    "DistillationTrainingArguments",
    "HiddenProjections", "OnlineTeacher", "TeacherOutputs", "TeacherSource", "distillation_loss",
    "intermediate_loss", "parse_layer_map", "topk_distillation_loss",
]
