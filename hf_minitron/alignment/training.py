"""What the three TRL fine-tuning stages share: teacher correction (``hf_minitron.correction``), SteerLM and DPO.

* :class:`FineTuningArguments`: the fields every fine-tuning stage config adds to the TRL config it subclasses
  (``CorrectTeacherConfig(FineTuningArguments, SFTConfig)``, ...): model, data, product directory, LoRA, held-out
  split, and defaults that run on a laptop as well as on a GPU node (fp32 on CPU, bf16 where the GPU supports it,
  activation (gradient) checkpointing off, no checkpoints saved, no reporting). When ``learning_rate`` is not given,
  the stage's table picks it: one rate for full fine-tuning, a larger one for LoRA.
* :func:`merge_lora`, :func:`train_and_merge`, :func:`frozen_copy`.
* :class:`TrainSettings` / :class:`LoraSettings`: deprecated (one release); the stage configs replace them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError
from ..loading import get_base_model, load_tokenizer  # noqa: F401  (re-exported: the one PEFT unwrap, tokenizer loader)


@dataclass
class FineTuningArguments:
    """Fields shared by the fine-tuning stage configs; mixed in *before* the TRL config (see the module docstring).

    Each subclass sets ``_trl_class`` (the TRL config its trainer takes) and ``_learning_rates`` (full fine-tuning,
    LoRA); its class docstring documents every field listed here.
    """

    _trl_class: ClassVar[type]
    _learning_rates: ClassVar[tuple[float, float]]

    model: str = field(default="default", metadata={
        "help": "Model to train: Hub id, local directory or .gguf file ('default': embedded SmolLM2-135M-Instruct)."})
    data: str | None = field(default=None, metadata={
        "help": "Training data: .jsonl/.json/.parquet/.csv records, .txt, a saved dataset directory or a datasets "
                "name."})
    output_dir: str | None = field(default=None, metadata={
        "help": "Directory the trained model is written to (atomically; LoRA merged back)."})
    checkpoint_dir: str | None = field(default=None, metadata={
        "help": "Trainer checkpoints and logs (default: OUTPUT_DIR.checkpoints; removed when left empty)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output_dir."})
    limit: int | None = field(default=None, metadata={"help": "Use only the first N records of data."})
    held_out_fraction: float = field(default=0.0, metadata={
        "help": "Fraction of the records (the last ones) kept out of training and measured before and after; 0: "
                "none."})
    use_lora: bool = field(default=False, metadata={
        "help": "Train a LoRA adapter (merged back into the weights) instead of every weight."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (the update is scaled by alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "Module names the adapter wraps (default: every linear layer of the decoder, not the LM head)."})
    # TRL/transformers fields whose defaults differ here
    learning_rate: float | None = field(default=None, metadata={
        "help": "Initial AdamW learning rate (default: the stage's rate for full fine-tuning or for LoRA)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs (max_steps > 0 overrides it)."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Examples (pairs for DPO) per device."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning-rate schedule (transformers "
                                                                          "SchedulerType)."})
    max_length: int | None = field(default=512, metadata={"help": "Tokens per example; longer ones are cut."})
    activation_checkpointing: bool | None = field(default=False, metadata={
        "help": "Recompute activations in the backward pass (less memory, about 20 percent slower)."})
    gradient_checkpointing: bool | None = field(default=None, metadata={
        "help": "Deprecated alias of activation_checkpointing (transformers v5)."})
    save_strategy: str = field(default="no", metadata={
        "help": "When the Trainer saves checkpoints into checkpoint_dir: no, steps or epoch."})

    def __post_init__(self):
        # Machine- and stage-dependent defaults first: TRL's own __post_init__ turns bf16=None into True, which a CPU
        # without bf16 cannot run, and reads output_dir=None as "trainer_output".
        import torch

        cuda = torch.cuda.is_available()
        if not cuda:
            self.use_cpu = True
        if self.bf16 is None:
            self.bf16 = bool(cuda and torch.cuda.is_bf16_supported() and not self.fp16)
        if self.learning_rate is None:
            self.learning_rate = self.default_learning_rate(self.use_lora)
        output_dir = self.output_dir
        super().__post_init__()
        self.output_dir = None if output_dir in (None, "") else os.path.expanduser(str(output_dir))
        self._check_fine_tuning_fields()

    @classmethod
    def default_learning_rate(cls, use_lora: bool) -> float:
        return cls._learning_rates[int(bool(use_lora))]

    def _check_fine_tuning_fields(self) -> None:
        lr = self.learning_rate
        if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            full, lora = self._learning_rates
            raise ConfigError(f"learning_rate={lr}: must be a number > 0 (unset: {full:g} for full fine-tuning, "
                              f"{lora:g} with LoRA)")
        if not 0 <= self.held_out_fraction < 1:
            raise ConfigError(f"held_out_fraction={self.held_out_fraction}: must be in [0, 1) (0: no held-out "
                              "records; 0.1: the last 10 percent)")
        if self.lora_r < 1:
            raise ConfigError(f"lora_r={self.lora_r}: the LoRA rank must be >= 1")
        if self.lora_alpha <= 0:
            raise ConfigError(f"lora_alpha={self.lora_alpha}: must be > 0 (the update is scaled by alpha / r)")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout={self.lora_dropout}: must be in [0, 1)")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit={self.limit}: must be >= 1 (or unset for every record)")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"max_length={self.max_length}: must be >= 2 tokens (or unset for no limit)")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ConfigError(f"max_steps={self.max_steps} and num_train_epochs={self.num_train_epochs}: nothing "
                              "would be trained; set max_steps > 0 or num_train_epochs > 0")

    def checkpoint_path(self) -> str | None:
        """Where the Trainer writes: ``checkpoint_dir``, else ``OUTPUT_DIR.checkpoints``, else ``None`` (a temporary
        directory, for in-memory training)."""
        if self.checkpoint_dir:
            return os.path.expanduser(str(self.checkpoint_dir))
        return f"{self.output_dir}.checkpoints" if self.output_dir else None

    def trainer_args(self, **overrides):
        """This config as the TRL trainer sees it: an instance of ``_trl_class`` (only its own fields), with
        ``output_dir`` = :meth:`checkpoint_path` (a fresh temporary directory when that is ``None``)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self._trl_class) if f.init}
        values["output_dir"] = self.checkpoint_path() or tempfile.mkdtemp(prefix="hf-minitron-trl-")
        values.update(overrides)
        return self._trl_class(**values)

    def peft_config(self):
        """The peft ``LoraConfig`` of this run, or ``None`` without ``use_lora``."""
        if not self.use_lora:
            return None
        from peft import LoraConfig

        return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=self.lora_target_modules or "all-linear", task_type="CAUSAL_LM")


def resolve_config(config_cls, config=None, *, settings=None, lora=None, **fields):
    """The config an in-memory training function runs with: ``config`` as given, or ``config_cls(**fields)`` (with
    the deprecated ``settings``/``lora`` objects translated into fields)."""
    legacy = {}
    if settings is not None:
        legacy.update(settings.to_fields())
    if lora is not None:
        legacy.update(lora.to_fields())
    if config is not None:
        if legacy or fields:
            raise TypeError(f"pass either a {config_cls.__name__} or its fields as keywords, not both (got "
                            f"{sorted({*legacy, *fields})})")
        return config
    return config_cls(**{**legacy, **fields})


# ---------------------------------------------------------------------------------------------------------------
# Models (the PEFT unwrap and the tokenizer loader live in hf_minitron.loading)


def merge_lora(model):
    """Fold a peft LoRA model back into its base weights and return the plain ``*ForCausalLM``."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


def unpatch_forward(model) -> None:
    """Drop the instance-level ``forward`` TRL's fused LM head leaves on the model, restoring the class forward."""
    for module in {id(model): model, id(get_base_model(model)): get_base_model(model)}.values():
        if "forward" in vars(module):
            del module.forward


def frozen_copy(model):
    """A detached eval-mode copy of ``model`` with gradients off (e.g. the DPO reference = the policy before DPO)."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def train_and_merge(trainer, *, resume_from_checkpoint=None):
    """Train, merge a LoRA adapter back, restore the class ``forward``; ``(model in eval mode, TrainOutput)``.

    The Trainer's output directory is removed when training left it empty (``save_strategy="no"``)."""
    output = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    model = merge_lora(trainer.model)
    unpatch_forward(model)
    remove_if_empty(trainer.args.output_dir)
    return model.eval(), output


def remove_if_empty(path) -> None:
    """Remove ``path`` and its empty subdirectories if no file lies under it."""
    root = Path(str(path)).expanduser()
    if root.is_dir() and not any(p.is_file() or p.is_symlink() for p in root.rglob("*")):
        shutil.rmtree(root, ignore_errors=True)


def split_held_out_records(records: list, fraction: float) -> tuple[list, list]:
    """``(train, held_out)``: the last ``fraction`` of the records (at least one) when ``fraction > 0``; a split
    that leaves nothing to train on is a :class:`ConfigError`."""
    if fraction <= 0:
        return list(records), []
    from ..data import split_held_out

    train, held = split_held_out(records, fraction)
    if not train:
        raise ConfigError(f"held_out_fraction={fraction} holds out all {len(records)} record(s), leaving none to "
                          "train on; lower it or give more data")
    return train, held


# ---------------------------------------------------------------------------------------------------------------
# Deprecated (one release): the stage configs hold these fields now.


@dataclass
class LoraSettings:
    """Deprecated: set ``use_lora=True``, ``lora_r``, ``lora_alpha``, ``lora_dropout`` on the stage config."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"

    def __post_init__(self):
        warnings.warn("LoraSettings is deprecated: set use_lora=True, lora_r, lora_alpha, lora_dropout on the stage "
                      "config (CorrectTeacherConfig, SteerLMConfig, DPOStageConfig)", DeprecationWarning,
                      stacklevel=3)

    def to_fields(self) -> dict:
        targets = None if self.target_modules == "all-linear" else (
            [self.target_modules] if isinstance(self.target_modules, str) else list(self.target_modules))
        return {"use_lora": True, "lora_r": self.r, "lora_alpha": self.alpha, "lora_dropout": self.dropout,
                "lora_target_modules": targets}


@dataclass
class TrainSettings:
    """Deprecated: the stage configs (``CorrectTeacherConfig``, ``SteerLMConfig``, ``DPOStageConfig``) are TRL
    configs with these fields; ``output_dir`` here is their ``checkpoint_dir``."""

    output_dir: str | None = None
    learning_rate: float | None = None
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_length: int | None = 512
    warmup_steps: int = 0
    lr_scheduler_type: str = "constant"
    weight_decay: float = 0.0
    seed: int = 0
    logging_steps: int = 10
    gradient_checkpointing: bool = False
    trl_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        warnings.warn("TrainSettings is deprecated: pass the fields to the stage config (CorrectTeacherConfig, "
                      "SteerLMConfig, DPOStageConfig), which is the TRL config itself", DeprecationWarning,
                      stacklevel=3)

    def to_fields(self) -> dict:
        values = dataclasses.asdict(self)
        overrides = values.pop("trl_overrides")
        values["checkpoint_dir"] = values.pop("output_dir")
        values["activation_checkpointing"] = values.pop("gradient_checkpointing")
        if values["learning_rate"] is None:
            del values["learning_rate"]
        return {**values, **overrides}


__all__ = ["FineTuningArguments", "LoraSettings", "TrainSettings", "frozen_copy", "get_base_model", "load_tokenizer",
           "merge_lora", "remove_if_empty", "resolve_config", "split_held_out_records", "train_and_merge",
           "unpatch_forward"]
