"""Settings shared by teacher correction, SteerLM SFT and DPO, turned into TRL configs and peft ``LoraConfig``s.

TRL configs default to bf16 and gradient checkpointing; :class:`TrainSettings` picks what the machine can do
(fp32 on CPU, bf16 on a GPU that supports it) so the same call runs on a laptop and on a GPU node.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LoraSettings:
    """A LoRA adapter: rank ``r``, scale ``alpha / r``, which linear layers (``"all-linear"`` = every linear layer of
    the decoder, not the LM head)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"

    def to_peft(self):
        from peft import LoraConfig

        if self.r < 1:
            raise ValueError(f"lora r={self.r}; the LoRA rank must be >= 1")
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=self.target_modules, task_type="CAUSAL_LM")


@dataclass
class TrainSettings:
    """Optimisation settings of one fine-tuning run (units: optimizer steps, tokens, sequences).

    ``max_steps > 0`` overrides ``num_train_epochs``. ``trl_overrides`` is passed verbatim to the TRL config
    (``SFTConfig``/``DPOConfig``) for anything not listed here.
    """

    output_dir: str | None = None  # TRL's scratch dir (checkpoints are not saved); a temp dir when None
    learning_rate: float = 1e-4
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

    def to_trl(self, config_cls, **stage_fields):
        """Build ``config_cls`` (e.g. ``trl.SFTConfig``) from these settings plus stage-specific fields."""
        import torch

        kwargs = asdict(self)
        overrides = kwargs.pop("trl_overrides")
        output_dir = kwargs.pop("output_dir") or tempfile.mkdtemp(prefix="hf-minitron-trl-")
        cuda = torch.cuda.is_available()
        kwargs.update(
            output_dir=output_dir,
            use_cpu=not cuda,
            bf16=bool(cuda and torch.cuda.is_bf16_supported()),
            fp16=False,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        kwargs.update(stage_fields)
        kwargs.update(overrides)
        return config_cls(**kwargs)


def merge_lora(model):
    """Fold a peft LoRA model back into its base weights and return the plain ``*ForCausalLM``."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


def unpatch_forward(model) -> None:
    """Drop the instance-level ``forward`` TRL's fused LM head leaves on the model, restoring the class forward."""
    if "forward" in vars(model):
        del model.forward


def frozen_copy(model):
    """A detached eval-mode copy of ``model`` with gradients off (e.g. the DPO reference = the policy before DPO)."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
