"""The ``eval`` stage: teacher and students side by side, one report (``eval.json`` + ``eval.md``).

Per model, loaded once: parameter counts, perplexity on non-overlapping windows, greedy-generation throughput and
first-token latency, function-calling validity, lm-evaluation-harness tasks. Every model is measured in the same run
with the same settings; the report holds each figure with the settings it was measured with, and student/teacher
ratios.

Tokenizers: each model's windows are cut from the same texts by its own tokenizer. Models that share a tokenizer are
therefore scored on exactly the same token ids (the report's ``windows_fingerprint`` is equal); models whose
tokenizers differ are scored on different windows, and the report says so in ``notes``: their perplexities are per
token of different vocabularies, so compare them with care.

Runs on the main process only (``distributed=False``): evaluation is cheap next to training, and timing figures are
only meaningful without other ranks competing for the device.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError
from .base import StageResult, register_stage


@dataclass
class EvalConfig:
    r"""Configuration of :func:`run_eval`.

    > Parameters that control the models

        teacher (`str` or `None`, *optional*, defaults to `None`):
            The teacher: a Hub id, a local directory or a `.gguf` file (`"default"`: the embedded
            SmolLM2-135M-Instruct). Ratios in the report are student / teacher.
        student (`str` or `None`, *optional*, defaults to `None`):
            The student (the pruned and distilled model).
        models (`list[str]`, *optional*, defaults to `[]`):
            More models to evaluate beside them (e.g. the pruned model before distillation).
        dtype (`Literal["float32", "bfloat16", "float16"]`, *optional*, defaults to `"float32"`):
            dtype every model is evaluated in.
        device (`str` or `None`, *optional*, defaults to `None`):
            Device to evaluate on (`"cuda"`, `"cpu"`); default: where the model loads.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow the models' own code from the Hub.

    > Parameters that control perplexity

        data (`str` or `None`, *optional*, defaults to `None`):
            Text to score: `.txt` (one document per line), `.jsonl`/`.json`/`.parquet`/`.csv` records, a saved dataset
            directory or a `datasets` name. Unset: no perplexity.
        text_field (`str`, *optional*, defaults to `"text"`):
            Record field holding the text.
        split (`str`, *optional*, defaults to `"train"`):
            Split of a `datasets` name or saved dataset dict.
        held_out_fraction (`float`, *optional*, defaults to `0.1`):
            Score the last fraction of the documents (the slice the training stages hold out); `1` scores all.
        seq_len (`int`, *optional*, defaults to `256`):
            Tokens per window (windows do not overlap; documents are joined with EOS).
        num_windows (`int` or `None`, *optional*, defaults to `32`):
            Windows to score (`None`: all the text gives).
        add_bos (`bool`, *optional*, defaults to `False`):
            Start every window with the tokenizer's BOS token (then the first text token of a window is predicted
            too). Recorded in the report.
        batch_size (`int`, *optional*, defaults to `4`):
            Windows per forward pass (also lm-eval's batch size).

    > Parameters that control speed

        throughput (`bool`, *optional*, defaults to `True`):
            Measure greedy-generation tokens/s and first-token latency.
        prompts (`list[str]`, *optional*, defaults to `[]`):
            Prompts for the speed measurement (empty: four built-in prompts).
        max_new_tokens (`int`, *optional*, defaults to `32`):
            Tokens generated per prompt (exactly; EOS does not stop generation).

    > Parameters that control function calling

        toolcall_data (`str` or `None`, *optional*, defaults to `None`):
            Sharegpt tool-call records (`conversations` with `function_call` turns, `tools`). Unset: skipped.
        toolcall_limit (`int` or `None`, *optional*, defaults to `50`):
            Function-call turns to test (`None`: all).
        toolcall_max_new_tokens (`int`, *optional*, defaults to `128`):
            Tokens generated per answer.

    > Parameters that control lm-evaluation-harness (the `eval` extra)

        lm_eval_tasks (`list[str]`, *optional*, defaults to `[]`):
            lm-eval task names, run on the loaded model.
        lm_eval_include_path (`str` or `None`, *optional*, defaults to `None`):
            Folder of extra task YAML files (e.g. a local task over a local JSONL file).
        lm_eval_limit (`float` or `None`, *optional*, defaults to `None`):
            Examples per task (a fraction when < 1).
        lm_eval_num_fewshot (`int` or `None`, *optional*, defaults to `None`):
            Few-shot examples (default: the task's).

    > Parameters that control the output

        output_dir (`str`):
            Directory for `eval.json` and `eval.md` (written atomically).
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace a non-empty `output_dir`.
    """

    teacher: str | None = field(default=None, metadata={
        "help": "Teacher: Hub id, local directory or .gguf file ('default': embedded SmolLM2-135M-Instruct)."})
    student: str | None = field(default=None, metadata={"help": "Student (the pruned and distilled model)."})
    models: list[str] = field(default_factory=list, metadata={"help": "More models to evaluate beside them."})
    data: str | None = field(default=None, metadata={
        "help": "Text to score: .txt (one document per line), .jsonl/.json/.parquet/.csv, a saved dataset directory "
                "or a datasets name (unset: no perplexity)."})
    text_field: str = field(default="text", metadata={"help": "Record field holding the text."})
    split: str = field(default="train", metadata={"help": "Split of a datasets name or saved dataset dict."})
    held_out_fraction: float = field(default=0.1, metadata={
        "help": "Score the last fraction of the documents (what training holds out); 1 scores all."})
    seq_len: int = field(default=256, metadata={"help": "Tokens per window (non-overlapping, documents joined by EOS)."})
    num_windows: int | None = field(default=32, metadata={"help": "Windows to score (None: all the text gives)."})
    add_bos: bool = field(default=False, metadata={
        "help": "Start every window with BOS (the first text token is then predicted too); recorded in the report."})
    batch_size: int = field(default=4, metadata={"help": "Windows per forward pass (and lm-eval batch size)."})
    throughput: bool = field(default=True, metadata={"help": "Measure generation tokens/s and first-token latency."})
    prompts: list[str] = field(default_factory=list, metadata={
        "help": "Prompts for the speed measurement (empty: four built-in prompts)."})
    max_new_tokens: int = field(default=32, metadata={"help": "Tokens generated per speed prompt (exactly)."})
    toolcall_data: str | None = field(default=None, metadata={
        "help": "Sharegpt tool-call records (conversations with function_call turns, tools); unset: skipped."})
    toolcall_limit: int | None = field(default=50, metadata={"help": "Function-call turns to test (None: all)."})
    toolcall_max_new_tokens: int = field(default=128, metadata={"help": "Tokens generated per tool-call answer."})
    lm_eval_tasks: list[str] = field(default_factory=list, metadata={
        "help": "lm-evaluation-harness task names (needs the eval extra)."})
    lm_eval_include_path: str | None = field(default=None, metadata={"help": "Folder of extra lm-eval task YAMLs."})
    lm_eval_limit: float | None = field(default=None, metadata={"help": "Examples per lm-eval task (fraction if < 1)."})
    lm_eval_num_fewshot: int | None = field(default=None, metadata={"help": "lm-eval few-shot examples."})
    dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata={
        "help": "dtype every model is evaluated in."})
    device: str | None = field(default=None, metadata={"help": "Device to evaluate on (default: where models load)."})
    output_dir: str | None = field(default=None, metadata={"help": "Directory for eval.json and eval.md."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output_dir."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the models' own code from the Hub."})

    def __post_init__(self):
        if not self.output_dir:
            raise ConfigError("output_dir is not set: give the directory the report goes to (--output_dir DIR)")
        if not self.model_list():
            raise ConfigError("no model to evaluate: set teacher, student and/or models (--student DIR)")
        if not 0 < self.held_out_fraction <= 1:
            raise ConfigError(f"held_out_fraction={self.held_out_fraction}: must be in (0, 1] (1 scores all the data)")
        if self.seq_len < 2 + self.add_bos:
            raise ConfigError(f"seq_len={self.seq_len}: a window needs at least {2 + self.add_bos} tokens")
        for name in ("num_windows", "batch_size", "max_new_tokens", "toolcall_limit", "toolcall_max_new_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}={value}: must be >= 1")
        if self.lm_eval_limit is not None and self.lm_eval_limit <= 0:
            raise ConfigError(f"lm_eval_limit={self.lm_eval_limit}: must be > 0 (a count, or a fraction below 1)")

    def model_list(self) -> list[tuple[str, str]]:
        """``[(role, source)]`` in report order: teacher, student, then the other models."""
        out = [("teacher", self.teacher)] if self.teacher else []
        out += [("student", self.student)] if self.student else []
        return out + [("model", m) for m in self.models]


@dataclass
class EvalResult(StageResult):
    """``metrics``: per model ``<name>/perplexity``, ``<name>/tokens_per_s``, ``<name>/valid_call_rate``, ...; the
    student/teacher ratios (``ratio/<figure>``); ``report``: the ``eval.json`` path."""


def _display_name(source: str) -> str:
    from ..loading import DEFAULT_TEACHER_NAME

    if source in ("default", "smollm2"):
        return DEFAULT_TEACHER_NAME
    from pathlib import Path

    path = Path(source).expanduser()
    return path.name if path.exists() else source  # a local folder or file by its name, a Hub id as it is


def _read_inputs(config: EvalConfig):
    """Everything the models will be run on, read and validated before any model loads."""
    from ..data import load_records, load_texts, split_held_out
    from ..evaluation.harness import check_lm_eval
    from ..evaluation.toolcall import toolcall_turns

    texts = turns = None
    if config.data:
        texts = load_texts(config.data, text_field=config.text_field, split=config.split)
        if config.held_out_fraction < 1 and len(texts) > 1:
            texts = split_held_out(texts, config.held_out_fraction)[1]
    if config.toolcall_data:
        records = load_records(config.toolcall_data)
        turns = toolcall_turns(records, source=repr(str(config.toolcall_data)), limit=config.toolcall_limit)
    check_lm_eval(config.lm_eval_tasks, config.lm_eval_include_path)
    return texts, turns


def _evaluate_model(config: EvalConfig, model, tokenizer, name: str, texts, turns, prompts) -> dict:
    from ..evaluation.harness import run_lm_eval
    from ..evaluation.windows import eval_windows, evaluate_perplexity
    from ..evaluation.speed import generation_throughput, parameter_counts
    from ..evaluation.toolcall import evaluate_toolcalls

    entry = parameter_counts(model)
    if texts is not None:
        windows = eval_windows(texts, tokenizer, config.seq_len, config.num_windows, add_bos=config.add_bos,
                               model_name=name)
        entry["perplexity"] = evaluate_perplexity(model, windows, batch_size=config.batch_size)
    if config.throughput:
        entry["throughput"] = generation_throughput(model, tokenizer, prompts, max_new_tokens=config.max_new_tokens)
    if turns is not None:
        entry["toolcall"] = evaluate_toolcalls(model, tokenizer, turns, max_new_tokens=config.toolcall_max_new_tokens)
    if config.lm_eval_tasks:
        entry["lm_eval"] = run_lm_eval(model, tokenizer, config.lm_eval_tasks, include_path=config.lm_eval_include_path,
                                       limit=config.lm_eval_limit, num_fewshot=config.lm_eval_num_fewshot,
                                       batch_size=config.batch_size)
    return entry


def _settings(config: EvalConfig, texts, turns, prompts, first_model) -> dict:
    from ..evaluation.harness import lm_eval_settings
    from ..evaluation.speed import speed_settings

    settings = {}
    if texts is not None:
        settings["perplexity"] = {
            "data": str(config.data), "text_field": config.text_field, "held_out_fraction": config.held_out_fraction,
            "documents": len(texts), "seq_len": config.seq_len, "num_windows": config.num_windows,
            "add_bos": config.add_bos, "windows": "non-overlapping; documents joined with EOS; tail dropped; each "
            "model's own tokenizer", "predictions_per_window": config.seq_len - 1, "dtype": config.dtype}
    if config.throughput:
        settings["throughput"] = speed_settings(first_model, prompts=prompts, max_new_tokens=config.max_new_tokens)
    if turns is not None:
        settings["toolcall"] = {"data": str(config.toolcall_data), "turns": len(turns), "limit": config.toolcall_limit,
                                "max_new_tokens": config.toolcall_max_new_tokens, "decoding": "greedy"}
    if config.lm_eval_tasks:
        settings["lm_eval"] = lm_eval_settings(config.lm_eval_tasks, include_path=config.lm_eval_include_path,
                                               limit=config.lm_eval_limit, num_fewshot=config.lm_eval_num_fewshot,
                                               batch_size=config.batch_size)
    return settings


def _notes(models: list[dict]) -> list[str]:
    prints = {m["name"]: m["perplexity"]["windows_fingerprint"] for m in models if "perplexity" in m}
    if len(set(prints.values())) > 1:
        return ["The models' tokenizers differ, so each was scored on windows cut from the same text by its own "
                f"tokenizer (windows_fingerprint: {prints}); their perplexities are per token of different "
                "vocabularies and are not directly comparable."]
    return []


def _metrics(report: dict, path) -> dict:
    metrics: dict = {"report": str(path)}
    for m in report["models"]:
        key = m["role"] if m["role"] != "model" else m["name"]
        metrics[f"{key}/parameters"] = m["parameters"]
        for section, figure in (("perplexity", "perplexity"), ("throughput", "tokens_per_s"),
                                ("toolcall", "valid_call_rate")):
            if section in m:
                metrics[f"{key}/{figure}"] = m[section][figure]
    for name, value in report["comparison"].get("student_over_teacher", {}).items():
        metrics[f"ratio/{name}"] = value
    return metrics


@register_stage("eval", config=EvalConfig, inputs={"teacher": "teacher", "student": "student", "data": "data"},
                produces="report")
def run_eval(config: EvalConfig) -> EvalResult:
    """Evaluate every model of ``config`` and write ``eval.json`` + ``eval.md`` to ``config.output_dir``.

    Checked before any model loads: the output directory, every model's files, the perplexity text, the tool-call
    records (a malformed one is named by number) and that lm-eval is installed when tasks are asked for.
    """
    from ..evaluation.report import REPORT_JSON, build_report, write_report
    from ..evaluation.speed import DEFAULT_PROMPTS
    from ..loading import check_model_source, load_causal_lm
    from ..outputs import check_output_dir

    check_output_dir(config.output_dir, overwrite=config.overwrite, name="output_dir", fix="set overwrite (--overwrite)")
    for role, source in config.model_list():
        check_model_source(source, role=role, trust_remote_code=config.trust_remote_code, need_adapter=False)
    texts, turns = _read_inputs(config)
    prompts = list(config.prompts) or list(DEFAULT_PROMPTS)
    models, settings = [], None
    for role, source in config.model_list():
        model, tokenizer = load_causal_lm(source, dtype=config.dtype, device=config.device,
                                          trust_remote_code=config.trust_remote_code)
        name = _display_name(source)
        entry = {"name": name, "role": role, "source": str(source)}
        entry.update(_evaluate_model(config, model, tokenizer, name, texts, turns, prompts))
        models.append(entry)
        if settings is None:
            settings = _settings(config, texts, turns, prompts, model)
        del model, tokenizer
        gc.collect()
    report = build_report(models, settings, _notes(models))
    out = write_report(report, config.output_dir, overwrite=config.overwrite)
    return EvalResult(stage="eval", output_dir=str(out), metrics=_metrics(report, out / REPORT_JSON))
