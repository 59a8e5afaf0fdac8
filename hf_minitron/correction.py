"""Teacher correction: fine-tune the teacher on the distillation corpus before distilling (Minitron, Sec. 3).

The original pre-training data is usually unavailable; a teacher that has not seen the distillation distribution
guides the student worse. ``correct_teacher`` runs TRL's ``SFTTrainer`` (plain text: full-sequence loss; chat data:
loss on the assistant turns) with a LoRA adapter that is merged back into the weights, or full fine-tuning, and
returns a plain ``*ForCausalLM`` (optionally saved atomically with :func:`hf_minitron.save_model`).
"""

from __future__ import annotations

import os
from pathlib import Path

from .data import load_sft_data
from .training import LoraSettings, TrainSettings, merge_lora, unpatch_forward

METHODS = ("lora", "full")


def build_correction_trainer(model, tokenizer, dataset, *, method: str = "lora", settings: TrainSettings | None = None,
                             lora: LoraSettings | None = None, text_field: str = "text",
                             assistant_only_loss: bool = False):
    """The configured ``trl.SFTTrainer`` (not yet trained) behind :func:`correct_teacher`."""
    from trl import SFTConfig, SFTTrainer

    if method not in METHODS:
        raise ValueError(f"method={method!r}; choose 'lora' (adapter merged back) or 'full' (all weights)")
    if tokenizer is None:
        raise ValueError("tokenizer is required when model is a module; pass tokenizer=... or a model path")
    train = load_sft_data(dataset, text_field=text_field)
    if assistant_only_loss and "messages" not in train.column_names:
        raise ValueError("assistant_only_loss=True needs chat data (a 'messages' or 'conversations' field)")
    settings = settings or TrainSettings()
    args = settings.to_trl(SFTConfig, dataset_text_field="text", assistant_only_loss=assistant_only_loss,
                           packing=False)
    peft_config = (lora or LoraSettings()).to_peft() if method == "lora" else None
    model.train()
    return SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                      peft_config=peft_config)


def correct_teacher(model, dataset, *, tokenizer=None, method: str = "lora", settings: TrainSettings | None = None,
                    lora: LoraSettings | None = None, text_field: str = "text", assistant_only_loss: bool = False,
                    out_dir: str | os.PathLike | None = None, overwrite: bool = False):
    """Fine-tune ``model`` on ``dataset`` and return the corrected ``*ForCausalLM`` (LoRA merged, eval mode).

    ``model``: a module (then ``tokenizer`` is required) or a source for :func:`hf_minitron.load_causal_lm`.
    ``dataset``: texts, a ``.txt``/``.json``/``.jsonl`` path, records or a ``datasets.Dataset`` with ``text_field``
    (plain text) or ``messages``/``conversations`` (chat). ``method``: ``"lora"`` trains a ``lora`` adapter and merges
    it into the weights; ``"full"`` trains every weight. With ``out_dir``, the result is written atomically.
    """
    if isinstance(model, (str, Path)):
        from ..loading import load_causal_lm

        model, loaded_tok = load_causal_lm(model)
        tokenizer = tokenizer or loaded_tok
    if out_dir is not None:
        from ..loading import check_output_dir

        check_output_dir(out_dir, overwrite=overwrite)
    trainer = build_correction_trainer(model, tokenizer, dataset, method=method, settings=settings, lora=lora,
                                       text_field=text_field, assistant_only_loss=assistant_only_loss)
    trainer.train()
    corrected = merge_lora(trainer.model)
    unpatch_forward(corrected)
    corrected.eval()
    if out_dir is not None:
        from ..loading import save_model

        save_model(corrected, tokenizer, out_dir, overwrite=overwrite)
    return corrected
