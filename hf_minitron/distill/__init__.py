"""Logit knowledge distillation: losses, DistillationConfig and DistillationTrainer (TRL subclasses)."""
