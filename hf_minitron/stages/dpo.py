"""The ``dpo`` stage: DPO of the student on preference pairs (TRL ``DPOTrainer``, LoRA or full), the held-out
implicit reward margin before and after, the student saved atomically."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

from trl import DPOConfig

from ..alignment.training import FineTuningArguments
from ..errors import ConfigError
from .base import StageResult, register_stage

Reference = Literal["model", "precomputed"]


@dataclass
class DPOStageConfig(FineTuningArguments, DPOConfig):
    r"""Configuration of :func:`run_dpo`: every TRL ``DPOConfig`` field (``--beta``, ``--loss_type``,
    ``--max_steps``, ...) plus the ones below. ``output_dir`` is where the aligned student is saved; the Trainer
    writes into ``checkpoint_dir``.

    Defaults that differ from ``DPOConfig``: `learning_rate` is picked by the training mode when not given
    (`5e-7` full fine-tuning, `5e-5` LoRA); `num_train_epochs=1`, `per_device_train_batch_size=4` (pairs),
    `lr_scheduler_type="constant"`, `max_length=512`, `activation_checkpointing=False`, `save_strategy="no"`;
    `use_cpu` is set when there is no CUDA device and `bf16` only where the GPU supports it.

    > Parameters that control the model and the data

        model (`str`, *optional*, defaults to `"default"`):
            Student to align: a Hub id, a local directory (e.g. the distill stage's output) or a `.gguf` file.
        data (`str`):
            Preference pairs: TRL `prompt`/`chosen`/`rejected` (strings or messages) or sharegpt
            `conversations`/`chosen`/`rejected` records (`.jsonl`/`.json`/`.parquet`/`.csv`, a saved dataset directory
            or a `datasets` name). Every pair is checked before the model loads. Pairs whose prompt alone fills
            `max_length` (TRL would drop them as fully truncated) are skipped with a warning and counted in the
            result; when that is every pair, the stage stops.
        limit (`int` or `None`, *optional*, defaults to `None`):
            Use only the first N pairs.
        held_out_fraction (`float`, *optional*, defaults to `0.0`):
            Fraction of the pairs (the last ones) kept out of training; their implicit reward margin, accuracy and
            chosen/rejected log-probs against the student before DPO are reported before and after. Must be in
            [0, 1).

    > Parameters that control DPO

        beta (`float`, *optional*, defaults to `0.1`):
            DPO temperature (> 0): the implicit reward is `beta * log(pi / ref)`.
        reference (`Literal["model", "precomputed"]`, *optional*, defaults to `"model"`):
            `"model"`: the student before DPO, a frozen copy kept in memory (with LoRA: the adapter switched off, no
            copy); `"precomputed"`: its log-probs computed once before training (TRL `precompute_ref_log_probs`), so
            no reference model is held during training.

    > Parameters that control the training mode

        use_lora (`bool`, *optional*, defaults to `False`):
            Train a LoRA adapter merged back into the weights instead of every weight.
        lora_r (`int`, *optional*, defaults to `16`), lora_alpha (`int`, *optional*, defaults to `32`),
        lora_dropout (`float`, *optional*, defaults to `0.0`), lora_target_modules (`list[str]` or `None`):
            The adapter (default targets: every linear layer of the decoder).
        learning_rate (`float` or `None`, *optional*, defaults to `None`):
            `None`: `5e-7` for full fine-tuning, `5e-5` with LoRA.

    > Parameters that control the output

        output_dir (`str`):
            Directory the aligned student is written to (atomically, verified by reloading).
        checkpoint_dir (`str` or `None`, *optional*, defaults to `None`):
            Trainer checkpoints and logs (default: `OUTPUT_DIR.checkpoints`; removed when left empty).
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace a non-empty `output_dir`.
    """

    _trl_class = DPOConfig
    _learning_rates = (5e-7, 5e-5)  # (full fine-tuning, LoRA)

    model: str = field(default="default", metadata={
        "help": "Student to align: Hub id, local directory (e.g. the distill stage's output) or .gguf file."})
    data: str | None = field(default=None, metadata={
        "help": "Preference pairs: TRL prompt/chosen/rejected or sharegpt conversations/chosen/rejected records."})
    output_dir: str | None = field(default=None, metadata={
        "help": "Directory the aligned student is written to (atomically; LoRA merged back)."})
    reference: Reference = field(default="model", metadata={
        "help": "Reference policy: model (the student before DPO, kept frozen; with LoRA the adapter switched off) "
                "or precomputed (its log-probs computed once before training)."})
    held_out_fraction: float = field(default=0.0, metadata={
        "help": "Fraction of the pairs (the last ones) kept out of training; their reward margin is reported before "
                "and after."})

    def __post_init__(self):
        super().__post_init__()
        if self.reference not in ("model", "precomputed"):
            raise ConfigError(f"reference={self.reference!r}; choose 'model' (frozen copy of the student before DPO) "
                              "or 'precomputed' (reference log-probs computed once before training)")
        if not self.beta > 0:
            raise ConfigError(f"beta={self.beta}: the DPO temperature must be > 0 (0.1 is usual)")
        if self.precompute_ref_log_probs and self.reference != "precomputed":
            raise ConfigError("precompute_ref_log_probs is set but reference='model': set reference='precomputed' "
                              "(the field this stage reads) instead")


@dataclass
class DPOResult(StageResult):
    """``metrics``: ``pairs_train``, ``pairs_held_out``, ``pairs_skipped_too_long``; with a held-out split ``held_out_reward_margin_before``/
    ``_after`` (nats, mean of ``beta * (log pi/ref (chosen) - log pi/ref (rejected))``), ``held_out_before``/
    ``_after`` (margin, accuracy, chosen/rejected log-probs); ``train_loss``, ``global_step``."""


@register_stage("dpo", config=DPOStageConfig, inputs={"model": "student"}, produces="student")
def run_dpo(config: DPOStageConfig) -> DPOResult:
    """DPO-align ``config.model`` on ``config.data``; save it to ``config.output_dir``.

    Checked before the model loads: the output and checkpoint directories, the model's files, every pair, and with
    the tokenizer alone which prompts leave room for a response within ``max_length`` (the others are skipped).
    """
    from ..alignment.data import load_preference_data
    from ..alignment.dpo import build_dpo_trainer, pairs_with_room, preference_logps, preference_stats
    from ..alignment.training import split_held_out_records, train_and_merge
    from ..loading import load_tokenizer
    from ..loading import check_model_source, load_causal_lm, save_model
    from ..outputs import check_output_dir

    check_output_dir(config.output_dir, overwrite=config.overwrite, name="output_dir", fix="set overwrite (--overwrite)")
    check_output_dir(config.checkpoint_path(), overwrite=True, name="checkpoint_dir")
    if not config.data:
        raise ConfigError("data is not set: give preference pairs (--data FILE, prompt/chosen/rejected or sharegpt)")
    check_model_source(config.model, trust_remote_code=config.trust_remote_code, need_adapter=False)
    pairs = list(load_preference_data(config.data, limit=config.limit))
    tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
    pairs, skipped = pairs_with_room(pairs, tokenizer, config.max_length)
    if skipped:
        warnings.warn(f"dpo: {len(skipped)} of {len(pairs) + len(skipped)} pairs (rows {skipped[:5]}"
                      f"{' ...' if len(skipped) > 5 else ''}) have a prompt of max_length={config.max_length} tokens "
                      "or more and are skipped (no response token would be trained); raise max_length to keep them",
                      stacklevel=2)
    train, held = split_held_out_records(pairs, config.held_out_fraction)

    model, _ = load_causal_lm(config.model, trust_remote_code=config.trust_remote_code, tokenizer=False)
    metrics = {"pairs_train": len(train), "pairs_held_out": len(held), "pairs_skipped_too_long": len(skipped)}
    kw = dict(max_length=config.max_length, batch_size=config.per_device_eval_batch_size)
    if held:  # the student before DPO is the reference: keep its log-probs, not a copy of the model
        ref_logps = preference_logps(model, tokenizer, held, **kw)
        before = preference_stats(model, None, tokenizer, held, beta=config.beta, reference_logps=ref_logps, **kw)
    trainer = build_dpo_trainer(model, tokenizer, train, config)
    model, output = train_and_merge(trainer, resume_from_checkpoint=config.resume_from_checkpoint)
    if held:
        after = preference_stats(model, None, tokenizer, held, beta=config.beta, reference_logps=ref_logps, **kw)
        metrics.update(held_out_reward_margin_before=before.summary()["reward_margin"],
                       held_out_reward_margin_after=after.summary()["reward_margin"],
                       held_out_before=before.summary(), held_out_after=after.summary())
    metrics.update(train_loss=float(output.training_loss), global_step=int(output.global_step))
    save_model(model, tokenizer, config.output_dir, overwrite=config.overwrite)
    return DPOResult(stage="dpo", output_dir=str(config.output_dir), metrics=metrics)
