"""Teacher correction: fine-tune the teacher on the distillation corpus before pruning it (Minitron, Sec. 3).

The original pre-training data is usually unavailable; a teacher that has not seen the distillation distribution
guides the student worse. :func:`correct_teacher` runs TRL's ``SFTTrainer`` (plain text: loss on every token; chat
data: every token, or only the assistant turns with ``assistant_only_loss``) with a LoRA adapter that is merged back
into the weights, or full fine-tuning, and returns a plain ``*ForCausalLM``. The ``correct-teacher`` stage
(:func:`hf_minitron.stages.correction.run_correct_teacher`) adds the held-out loss before/after and the atomic save.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from .alignment.data import load_sft_data
from .alignment.training import resolve_config, train_and_merge
from .errors import ConfigError


def _config(config, settings, lora, method, text_field, fields):
    """The ``CorrectTeacherConfig`` of a call, translating the pre-stage keywords ``method``/``text_field``."""
    from .stages.correction import CorrectTeacherConfig

    if method is not None:
        warnings.warn("method='lora'|'full' is deprecated: pass use_lora=True|False", DeprecationWarning,
                      stacklevel=3)
        if method not in ("lora", "full"):
            raise ConfigError(f"method={method!r}; choose 'lora' (adapter merged back) or 'full' (all weights), or "
                              "pass use_lora=True|False")
        fields["use_lora"] = method == "lora"
    if text_field is not None:
        fields["dataset_text_field"] = text_field
    return resolve_config(CorrectTeacherConfig, config, settings=settings, lora=lora, **fields)


def build_correction_trainer(model, tokenizer, dataset, config=None, *, settings=None, lora=None, method=None,
                             text_field=None, **fields):
    """The configured ``trl.SFTTrainer`` (not yet trained) behind :func:`correct_teacher`.

    ``config``: a :class:`~hf_minitron.stages.correction.CorrectTeacherConfig`, or its fields as keywords.
    """
    from trl import SFTTrainer

    config = _config(config, settings, lora, method, text_field, fields)
    if tokenizer is None:
        raise ConfigError("tokenizer is required when model is a module; pass tokenizer=... or a model path")
    train = load_sft_data(dataset, text_field=config.dataset_text_field)
    check_assistant_only_loss(config, train)
    args = config.trainer_args(dataset_text_field="text")  # load_sft_data names the text column "text"
    model.train()
    return SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                      peft_config=config.peft_config())


def check_assistant_only_loss(config, train) -> None:
    if config.assistant_only_loss and "messages" not in train.column_names:
        raise ConfigError("assistant_only_loss=True needs chat data (a 'messages' or 'conversations' field); plain "
                          "text has no assistant turns: unset assistant_only_loss or give chat records")


def correct_teacher(model, dataset, config=None, *, tokenizer=None, settings=None, lora=None, method=None,
                    text_field=None, out_dir: str | os.PathLike | None = None, overwrite: bool = False, **fields):
    """Fine-tune ``model`` on ``dataset`` and return the corrected ``*ForCausalLM`` (LoRA merged, eval mode).

    ``model``: a module (then ``tokenizer`` is required) or a source for :func:`hf_minitron.load_causal_lm`.
    ``dataset``: texts, a file (``.txt`` one document per line, ``.jsonl``/``.json``/...), records or a
    ``datasets.Dataset`` with ``dataset_text_field`` (plain text) or ``messages``/``conversations`` (chat).
    ``config``: a :class:`~hf_minitron.stages.correction.CorrectTeacherConfig` (``use_lora=True``, the default,
    trains an adapter and merges it into the weights; ``False`` trains every weight), or its fields as keywords.
    ``out_dir`` (deprecated: use the ``correct-teacher`` stage) writes the result atomically.
    """
    if out_dir is not None:
        from .outputs import check_output_dir

        check_output_dir(out_dir, overwrite=overwrite)
    if isinstance(model, (str, Path)):
        from .loading import load_causal_lm

        model, loaded_tok = load_causal_lm(model)
        tokenizer = tokenizer or loaded_tok
    trainer = build_correction_trainer(model, tokenizer, dataset, config, settings=settings, lora=lora,
                                       method=method, text_field=text_field, **fields)
    corrected, _ = train_and_merge(trainer)
    if out_dir is not None:
        from .loading import save_model

        save_model(corrected, tokenizer, out_dir, overwrite=overwrite)
    return corrected


__all__ = ["build_correction_trainer", "check_assistant_only_loss", "correct_teacher"]
