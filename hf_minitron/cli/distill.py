"""``hf-minitron distill``: logit-distil a teacher into a student with ``DistillationTrainer`` and save the student.

Every ``DistillationConfig`` field (TRL/transformers training arguments included) is a flag (``--max_steps``,
``--per_device_train_batch_size``, ``--max_length``, ``--learning_rate``, ``--kd_loss``, ...) or a key of a YAML file
given with ``--config`` (TRL's parser: command-line flags override the file).

``--cache CACHE`` trains from an offline teacher cache (``hf-minitron cache-teacher``) instead of ``--teacher`` and
``--data``: no teacher in memory, ``kd_loss=topk_kl`` (``--topk_tail bucket|renormalize|sampled``, default: what the
cache was built for), the cache's tokens and ``--max_length``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

COMMAND = "distill"
HELP = "Distil a teacher into a (pruned) student with logit KD (DistillationTrainer); save the student atomically."
ORDER = 40


@dataclass
class DistillScriptArguments:
    """What to distil and where the student goes (the training settings are ``DistillationConfig`` fields)."""

    student: str | None = field(default=None, metadata={"help": "Student: model directory, Hub id or .gguf file."})
    teacher: str = field(default="default", metadata={
        "help": "Teacher: model directory, Hub id or .gguf file (default: the embedded SmolLM2-135M-Instruct)."})
    data: str | None = field(default=None, metadata={
        "help": "Training data: .txt (one document per line), .jsonl/.json/.parquet/.csv, a saved dataset "
                "directory or a datasets name. Text, chat 'messages', prompt/completion or Alpaca records."})
    out: str | None = field(default=None, metadata={"help": "Directory the distilled student is saved to."})
    data_split: str = field(default="train", metadata={"help": "Split of a datasets name."})
    data_config: str | None = field(default=None, metadata={"help": "Config name of a datasets name."})
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N examples."})
    student_dtype: str = field(default="float32", metadata={
        "help": "dtype the student is loaded (and trained) in: float32, bfloat16 or float16."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty --out directory."})


def _parser():
    from trl import TrlParser

    from ..distill import DistillationConfig

    return TrlParser((DistillScriptArguments, DistillationConfig), prog="hf-minitron distill", description=HELP)


def _check_script_args(script, cached: bool = False) -> None:
    missing = [name for name in ("student", "data", "out") if not getattr(script, name)
               and not (name == "data" and cached)]
    if missing:
        raise SystemExit(f"hf-minitron distill: missing required {', '.join('--' + m for m in missing)}")
    from ..loading import check_output_dir

    try:
        check_output_dir(script.out, overwrite=script.overwrite, name="--out", fix="pass --overwrite")
    except FileExistsError as e:
        raise SystemExit(f"hf-minitron distill: {e}") from None


def _cache_argv(argv: list[str]) -> list[str]:
    """``--cache CACHE``: train from an offline teacher cache (``hf-minitron cache-teacher``) instead of a teacher and
    data: becomes ``--teacher_cache CACHE`` plus, unless given, ``--kd_loss topk_kl`` and the cache's ``--max_length``."""
    if not any(a == "--cache" or a.startswith("--cache=") for a in argv):
        return argv
    out, cache = [], None
    it = iter(argv)
    for a in it:
        if a == "--cache" or a.startswith("--cache="):
            cache = a.split("=", 1)[1] if "=" in a else next(it, None)
            out += ["--teacher_cache", str(cache)]
        else:
            out.append(a)
    given = {a.split("=", 1)[0] for a in argv}
    if "--kd_loss" not in given:
        out += ["--kd_loss", "topk_kl"]
    if "--max_length" not in given:
        from ..teacher_cache import TeacherCache

        out += ["--max_length", str(TeacherCache(cache, verify=False).settings.max_length)]
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _cache_argv(list(sys.argv[1:] if argv is None else argv))
    parser = _parser()
    script, config = parser.parse_args_and_config(argv)
    _check_script_args(script, cached=config.teacher_cache is not None)
    if config.output_dir in (None, "trainer_output"):
        config.output_dir = str(Path(script.out).expanduser()) + ".run"  # checkpoints and logs beside the student

    from ..distill import DistillationTrainer
    from ..distill.data import load_sft_dataset
    from ..loading import load_causal_lm

    dataset = None
    if config.teacher_cache is not None:  # the cache holds the tokens; --data, if given, must be what it was built on
        if script.data:
            raise SystemExit("hf-minitron distill: --cache supplies the training tokens; drop --data (build the cache "
                             "from that data with `hf-minitron cache-teacher`)")
    else:
        dataset = load_sft_dataset(script.data, text_field=config.dataset_text_field, split=script.data_split,
                                   name=script.data_config, max_samples=script.max_samples)
    student, tokenizer = load_causal_lm(script.student, dtype=script.student_dtype,
                                        trust_remote_code=config.trust_remote_code)
    teacher = None if config.teacher_cache is not None else script.teacher
    trainer = DistillationTrainer(student, args=config, train_dataset=dataset, processing_class=tokenizer,
                                  teacher_model=teacher)
    result = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    path = trainer.save_student(script.out, overwrite=script.overwrite)
    if trainer.accelerator.is_main_process:
        print(f"distilled student saved to {path} ({result.global_step} steps, train loss {result.training_loss:.4f})")
    return 0
