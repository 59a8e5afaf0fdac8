"""transformers' ``examples/pytorch/language-modeling/run_clm.py``, cut to its skeleton and changed the way the README's
"use it in your script" section says: import, ``DistillationTrainingArguments`` in the parser (``DistillationConfig``
without the ``--trust_remote_code`` flag that ``ModelArguments`` defines), ``DistillationTrainer``, and a teacher. Everything else is
run_clm's: ``HfArgumentParser``, ``load_dataset("text")``, tokenize + ``group_texts`` blocks with ``labels``,
``default_data_collator``, accuracy ``compute_metrics``, ``train`` / ``save_model`` / ``evaluate`` /
``perplexity = exp(eval_loss)`` / ``create_model_card(finetuned_from=...)``.

Run in-process by the tests (``main(argv)``) and as a script under ``accelerate launch`` / ``torchrun``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from itertools import chain

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "The student checkpoint."})
    teacher_name_or_path: str = field(default="default", metadata={"help": "The teacher to distil from."})  # added
    model_revision: str = field(default="main")
    trust_remote_code: bool = field(default=False, metadata={"help": "Trust remote code (run_clm's own field)."})
    dtype: str | None = field(default=None)


@dataclass
class DataTrainingArguments:
    train_file: str | None = field(default=None)
    validation_file: str | None = field(default=None)
    block_size: int | None = field(default=None)


def parse(argv=None):
    from transformers import HfArgumentParser

    from hf_minitron import DistillationTrainingArguments

    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, DistillationTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
    training_args.trust_remote_code = model_args.trust_remote_code  # only for a teacher given as a path
    return model_args, data_args, training_args


def main(argv=None):
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, default_data_collator, set_seed

    from hf_minitron import DistillationTrainer

    model_args, data_args, training_args = parse(argv)
    set_seed(training_args.seed)
    raw = load_dataset("text", data_files={"train": data_args.train_file, "validation": data_args.validation_file})
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    dtype = model_args.dtype if model_args.dtype in ("auto", None) else getattr(torch, model_args.dtype)
    model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision,
                                                 trust_remote_code=model_args.trust_remote_code, dtype=dtype)

    def tokenize_function(examples):
        return tokenizer(examples["text"])

    with training_args.main_process_first(desc="dataset map tokenization"):
        tokenized = raw.map(tokenize_function, batched=True, remove_columns=["text"])
    block_size = data_args.block_size

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = (len(concatenated[list(examples.keys())[0]]) // block_size) * block_size
        result = {k: [t[i: i + block_size] for i in range(0, total_length, block_size)]
                  for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    with training_args.main_process_first(desc="grouping texts together"):
        lm_datasets = tokenized.map(group_texts, batched=True)

    def preprocess_logits_for_metrics(logits, labels):
        if isinstance(logits, tuple):
            logits = logits[0]
        return logits.argmax(dim=-1)

    def compute_metrics(eval_preds):
        preds, labels = eval_preds
        labels, preds = labels[:, 1:].reshape(-1), preds[:, :-1].reshape(-1)
        return {"accuracy": float((preds == labels).mean())}

    trainer = DistillationTrainer(
        model=model,
        teacher_model=model_args.teacher_name_or_path,
        args=training_args,
        train_dataset=lm_datasets["train"] if training_args.do_train else None,
        eval_dataset=lm_datasets["validation"] if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        compute_metrics=compute_metrics if training_args.do_eval else None,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics if training_args.do_eval else None,
    )
    results = {}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        metrics = train_result.metrics
        metrics["train_samples"] = len(lm_datasets["train"])
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        results.update(metrics)
    if training_args.do_eval:
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(lm_datasets["validation"])
        try:
            perplexity = math.exp(metrics["eval_loss"])
        except OverflowError:
            perplexity = float("inf")
        metrics["perplexity"] = perplexity
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        results.update(metrics)
    kwargs = {"finetuned_from": model_args.model_name_or_path, "tasks": "text-generation"}
    if training_args.push_to_hub:
        trainer.push_to_hub(**kwargs)
    else:
        trainer.create_model_card(**kwargs)
    return trainer, results


if __name__ == "__main__":
    trainer, results = main(sys.argv[1:])
    if trainer.is_world_process_zero():
        with open(os.path.join(trainer.args.output_dir, "script_results.json"), "w") as fh:
            json.dump({"results": results, "world_size": trainer.args.world_size}, fh)
    trainer.accelerator.end_training()  # leave the process group cleanly (a gloo group torn down at exit can abort)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
