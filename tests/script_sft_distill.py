"""TRL's ``trl/scripts/sft.py``, changed the way the README's "use it in your script" section says: import,
``DistillationConfig`` in place of ``SFTConfig`` in the parser, ``DistillationTrainer`` in place of ``SFTTrainer``, and
a teacher (one field on the script's arguments). Everything else is sft.py's: ``TrlParser``, ``model_init_kwargs``
from ``ModelConfig`` (revision, attn_implementation, dtype), the student as a path, ``get_peft_config``,
``train(resume_from_checkpoint=...)``, ``save_model``, ``push_to_hub(dataset_name=...)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from trl import ModelConfig, ScriptArguments, TrlParser  # noqa: E402

from hf_minitron import DistillationConfig  # noqa: E402


@dataclass
class DistillScriptArguments(ScriptArguments):
    teacher_name_or_path: str = field(default="default", metadata={"help": "The teacher to distil from."})


def main(script_args, training_args, model_args):
    from datasets import load_dataset
    from trl import get_peft_config, get_quantization_config

    from hf_minitron import DistillationTrainer

    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    if training_args.model_init_kwargs is not None:
        model_init_kwargs.update(training_args.model_init_kwargs)
    training_args.model_init_kwargs = model_init_kwargs

    dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    trainer = DistillationTrainer(
        model=model_args.model_name_or_path,
        teacher_model=script_args.teacher_name_or_path,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    return trainer


def make_parser():
    return TrlParser((DistillScriptArguments, DistillationConfig, ModelConfig))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config(fail_with_unknown_args=False))
