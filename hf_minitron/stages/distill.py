"""The ``distill`` stage: logit-distil a teacher (or an offline teacher cache) into a student; save the student.

Its config is :class:`~hf_minitron.distill.DistillationConfig` (every TRL ``SFTConfig`` / ``TrainingArguments``
field: ``--max_steps``, ``--learning_rate``, ``--kd_loss``, ...) plus what to distil and where the student goes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..distill.config import DistillationConfig
from ..errors import ConfigError
from .base import StageResult, register_stage

LOG_HISTORY_FILE = "log_history.json"


@dataclass
class DistillStageConfig(DistillationConfig):
    r"""Configuration of :func:`run_distill`: every :class:`~hf_minitron.distill.DistillationConfig` field plus the
    ones below. ``output_dir`` is where the distilled student is saved; the Trainer's checkpoints and logs go to
    ``checkpoint_dir``.

    > Parameters that control the models and the data

        student (`str`):
            Student: a model directory (e.g. the prune stage's output), a Hub id or a `.gguf` file.
        teacher (`str`, *optional*, defaults to `"default"`):
            Teacher: a model directory, a Hub id or a `.gguf` file (`"default"`: the embedded SmolLM2-135M-Instruct).
            Not loaded when `teacher_cache` is set.
        data (`str` or `None`, *optional*, defaults to `None`):
            Training data: `.txt` (one document per line), `.jsonl`/`.json`/`.parquet`/`.csv` records, a saved dataset
            directory or a `datasets` name; text, chat `messages`/`conversations`, prompt/completion or Alpaca
            records. Not used with `teacher_cache` (the cache holds the tokens).
        data_split (`str`, *optional*, defaults to `"train"`), data_config (`str` or `None`):
            Split and config name of a `datasets` name.
        max_samples (`int` or `None`, *optional*, defaults to `None`):
            Use only the first N examples.

    > Parameters that control the output

        checkpoint_dir (`str` or `None`, *optional*, defaults to `None`):
            Trainer checkpoints and logs (default: `OUTPUT_DIR.checkpoints`). `resume_from_checkpoint="last"`
            resumes from the newest checkpoint there (and starts fresh when there is none).
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace a non-empty `output_dir`.
    """

    student: str | None = field(default=None, metadata={
        "help": "Student: model directory (e.g. the prune stage's output), Hub id or .gguf file."})
    teacher: str = field(default="default", metadata={
        "help": "Teacher: model directory, Hub id or .gguf file ('default': embedded SmolLM2-135M-Instruct). Not "
                "loaded with teacher_cache."})
    data: str | None = field(default=None, metadata={
        "help": "Training data: .txt (one document per line), .jsonl/.json/.parquet/.csv, a saved dataset directory "
                "or a datasets name (text, chat messages, prompt/completion or Alpaca records)."})
    data_split: str = field(default="train", metadata={"help": "Split of a datasets name."})
    data_config: str | None = field(default=None, metadata={"help": "Config name of a datasets name."})
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N examples."})
    checkpoint_dir: str | None = field(default=None, metadata={
        "help": "Trainer checkpoints and logs (default: OUTPUT_DIR.checkpoints)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output_dir."})

    def __post_init__(self):
        if self.teacher_cache is not None and self.data:
            raise ConfigError("teacher_cache supplies the training tokens: drop data (build the cache from that data "
                              "with the cache-teacher stage)")
        if self.teacher_cache is not None:
            self._defaults_from_cache()
        super().__post_init__()
        if not self.student:
            raise ConfigError("student is not set: give the model to train (--student DIR, e.g. the prune stage's "
                              "output)")
        if self.output_dir in (None, "", "trainer_output"):
            raise ConfigError("output_dir is not set: give the directory the distilled student goes to "
                              "(--output_dir DIR)")
        if self.teacher_cache is None and not self.data:
            raise ConfigError("data is not set: give training data (--data FILE) or an offline teacher cache "
                              "(--teacher_cache DIR from the cache-teacher stage)")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"max_samples={self.max_samples}: must be >= 1 (or unset for all examples)")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate={self.learning_rate}: must be > 0")

    def _defaults_from_cache(self) -> None:
        """With a teacher cache: ``kd_loss='topk_kl'`` unless another loss was chosen, and the cache's sequence
        length when ``max_length`` is unset."""
        from ..distill.teacher_cache import TeacherCache

        if self.kd_loss == "forward_kl":
            self.kd_loss = "topk_kl"
        if self.max_length is None:
            path = Path(self.teacher_cache).expanduser()
            if not path.is_dir():
                raise ConfigError(f"teacher_cache={self.teacher_cache!r} does not exist; build it with the "
                                  "cache-teacher stage")
            self.max_length = TeacherCache(path, verify=False).settings.max_length

    def trainer_args(self) -> DistillationConfig:
        """This config as the Trainer sees it: ``output_dir`` = the checkpoint directory."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(DistillationConfig) if f.init}
        values["output_dir"] = self.checkpoint_path()
        if not values.get("include_num_input_tokens_seen"):
            values["include_num_input_tokens_seen"] = True  # the result reports the tokens trained on
        if values.get("resume_from_checkpoint") == "last":
            values["resume_from_checkpoint"] = None
        return DistillationConfig(**values)

    def checkpoint_path(self) -> str:
        return str(self.checkpoint_dir or f"{Path(self.output_dir).expanduser()}.checkpoints")


@dataclass
class DistillResult(StageResult):
    """``metrics``: ``global_step``, ``train_loss``, ``train_tokens`` (tokens the student trained on)."""


def _last_checkpoint(directory: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(directory) if os.path.isdir(directory) else None


def check_max_length(student: str, max_length: int | None) -> None:
    """Refuse a ``max_length`` past the student's ``max_position_embeddings`` (read from its config.json)."""
    config_file = Path(str(student)).expanduser() / "config.json"
    if max_length is None or not config_file.is_file():
        return
    limit = json.loads(config_file.read_text(encoding="utf-8")).get("max_position_embeddings")
    if limit is not None and max_length > limit:
        raise ConfigError(f"max_length={max_length} is past the student's max_position_embeddings={limit}: the "
                          f"model was not built for those positions; set max_length <= {limit}")


def check_tokenizers_match(student: str, teacher: str, *, trust_remote_code: bool = False) -> None:
    """Refuse a student and a teacher whose tokenizers differ, from their tokenizer files alone (no weights), when
    both are model folders (a GGUF or Hub teacher is checked by the trainer once loaded)."""
    from transformers import AutoTokenizer

    from ..distill.checks import check_same_tokenizer
    from ..loading import resolve_source

    paths = [resolve_source(student), resolve_source(teacher)]
    if not all(isinstance(p, Path) and p.is_dir() for p in paths):
        return
    toks = [AutoTokenizer.from_pretrained(str(p), trust_remote_code=trust_remote_code) for p in paths]
    try:
        check_same_tokenizer(*toks)
    except ValueError as err:
        raise ConfigError(f"student and teacher: {err}") from None


def load_training_data(config: DistillStageConfig):
    """The training set as a ``datasets.Dataset`` ``SFTTrainer`` prepares itself (validated before models load)."""
    from ..distill.data import load_sft_dataset

    return load_sft_dataset(config.data, text_field=config.dataset_text_field, split=config.data_split,
                            name=config.data_config, max_samples=config.max_samples)


@register_stage("distill", config=DistillStageConfig,
                inputs={"student": "student", "teacher": "teacher", "data": "data", "teacher_cache": "cache"},
                produces="student", distributed=True)
def run_distill(config: DistillStageConfig) -> DistillResult:
    """Distil ``config.teacher`` (or ``config.teacher_cache``) into ``config.student`` on ``config.data``; save the
    student to ``config.output_dir`` (atomic, verified) with the Trainer's log history beside it.

    Checked before any model loads: the output directory, both models' files, the data, ``max_length``.
    """
    from ..distill import DistillationTrainer
    from ..loading import check_model_source
    from ..outputs import check_output_dir, write_json

    check_output_dir(config.output_dir, overwrite=config.overwrite, name="output_dir", fix="set overwrite (--overwrite)")
    check_model_source(config.student, role="student", trust_remote_code=config.trust_remote_code,
                       need_adapter=False)
    if config.teacher_cache is None:
        check_model_source(config.teacher, role="teacher", trust_remote_code=config.trust_remote_code,
                           need_adapter=False)
    check_max_length(config.student, config.max_length)
    if config.teacher_cache is None:
        check_tokenizers_match(config.student, config.teacher, trust_remote_code=config.trust_remote_code)
    dataset = load_training_data(config) if config.teacher_cache is None else None

    args = config.trainer_args()
    resume = config.resume_from_checkpoint
    if resume == "last":
        resume = _last_checkpoint(args.output_dir)
    teacher = None if config.teacher_cache is not None else config.teacher
    trainer = DistillationTrainer(config.student, args=args, train_dataset=dataset, teacher_model=teacher)
    result = trainer.train(resume_from_checkpoint=resume)
    path = trainer.save_student(config.output_dir, overwrite=config.overwrite)
    if path is not None:
        write_json(Path(path) / LOG_HISTORY_FILE, trainer.state.log_history, default=str)
    tokens = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0) or max(
        (int(float(e["num_tokens"])) for e in trainer.state.log_history if "num_tokens" in e), default=0)
    metrics = {"global_step": int(result.global_step), "train_loss": float(result.training_loss),
               "train_tokens": tokens or None, "resumed_from": resume}
    return DistillResult(stage="distill", output_dir=str(config.output_dir), metrics=metrics)

