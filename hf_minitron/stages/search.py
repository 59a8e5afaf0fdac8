"""The ``search`` stage: architectures within a parameter budget, ranked after pruning and after a short distillation.

Writes to ``output_dir``: ``architecture.json`` (the chosen prune targets, the prune stage's ``architecture``),
``candidates.json`` (every evaluated candidate with its parameters, losses and both ranks) and ``search.json`` (the
budget, the counts, Kendall's tau between the rankings, timings, the settings). See :mod:`hf_minitron.search`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..distill.config import DistillationConfig
from ..errors import ConfigError, DataError
from ..outputs import read_json
from .base import StageResult, register_stage

AXES = ("hidden_size", "intermediate_size", "attention", "depth")  # hf_minitron.search.AXES, without importing torch
Dtype = Literal["float32", "bfloat16", "float16"]
ARCHITECTURE_FILE = "architecture.json"
CANDIDATES_FILE = "candidates.json"
REPORT_FILE = "search.json"


@dataclass
class SearchConfig(DistillationConfig):
    r"""Configuration of :func:`run_search`: the fields below plus every
    :class:`~hf_minitron.distill.DistillationConfig` field, which sets up the short distillation of the
    `distill_top_n` best candidates (`--max_steps`, `--learning_rate`, `--per_device_train_batch_size`, `--kd_loss`,
    `--seed`, ...). `output_dir` is where the search's report goes; the Trainer's checkpoints and logs go to
    `checkpoint_dir`.

    > Parameters that control the input

        model (`str`, *optional*, defaults to `"default"`):
            The teacher to search under: a Hub id, a local directory or a `.gguf` file (`"default"`: the embedded
            SmolLM2-135M-Instruct).
        scores (`str`):
            Directory written by the `importance` stage for this model (no rescoring happens).
        data (`str`):
            Text for the ranking loss and the distillation: `.txt` (one document per line),
            `.jsonl`/`.json`/`.parquet`/`.csv` records (field `dataset_text_field`), a saved dataset directory or a
            `datasets` name. The last `eval_fraction` of its documents give the evaluation blocks, the rest the
            training blocks.
        dtype (`Literal["float32", "bfloat16", "float16"]`, *optional*, defaults to `"float32"`):
            dtype the teacher is loaded and the candidates are pruned in.

    > Parameters that control the budget and the search space

        target_params (`int` or `None`, *optional*, defaults to `None`):
            Budget in non-embedding parameters (the input embedding and an untied LM head left out).
        target_ratio (`float` or `None`, *optional*, defaults to `None`):
            Budget as a fraction of the teacher's non-embedding parameters (give this or `target_params`).
        tolerance (`float`, *optional*, defaults to `0.05`):
            Candidates have `|params - budget| <= tolerance * budget`.
        width_multiple (`int`, *optional*, defaults to `64`):
            Hidden and intermediate sizes tried: the multiples of this up to the teacher's (and the teacher's own).
        axes (`list[str]`, *optional*, defaults to `["hidden_size", "intermediate_size", "attention"]`):
            What is searched, one or more of `hidden_size`, `intermediate_size`, `attention` (query heads and KV
            heads) and `depth`; the rest stays at the teacher's size.
        layer_choices (`list[int]`, *optional*, defaults to `[]`):
            Layer counts tried with the `depth` axis (empty: every count from 1 to the teacher's). Layers are dropped
            by the best depth criterion the scores hold, as in the prune stage.
        max_candidates (`int`, *optional*, defaults to `64`):
            Evaluate at most this many, those closest to the budget.

    > Parameters that control the ranking

        num_samples (`int`, *optional*, defaults to `16`):
            Evaluation blocks the losses are measured on.
        seq_len (`int`, *optional*, defaults to `256`):
            Tokens per block (evaluation and distillation).
        eval_fraction (`float`, *optional*, defaults to `0.1`):
            Fraction of `data`'s documents (the last ones) held out for evaluation; never trained on.
        distill_top_n (`int`, *optional*, defaults to `0`):
            Distil the best N zero-shot candidates for `max_steps` steps each and re-rank them (0: zero-shot only,
            as NVIDIA's Model Optimizer).

    > Parameters that control the output

        output_dir (`str`):
            Directory for `architecture.json`, `candidates.json` and `search.json` (written atomically).
        checkpoint_dir (`str` or `None`, *optional*, defaults to `None`):
            Trainer checkpoints and logs of the distillation runs, one `candidate-K` folder each (default:
            `OUTPUT_DIR.checkpoints`).
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace a non-empty `output_dir`.

    > Defaults that differ from `DistillationConfig`

        max_steps (`int`, *optional*, defaults to `50`):
            Optimizer steps of each candidate's distillation (the short fixed budget).
        learning_rate (`float`, *optional*, defaults to `1e-4`):
            AdamW learning rate of those runs.
        save_strategy (`str`, *optional*, defaults to `"no"`):
            The candidates' runs save no checkpoints unless asked.
    """

    model: str = field(default="default", metadata={
        "help": "Teacher to search under: Hub id, local directory or .gguf file ('default': embedded "
                "SmolLM2-135M-Instruct)."})
    scores: str | None = field(default=None, metadata={
        "help": "Directory written by the importance stage for this model."})
    data: str | None = field(default=None, metadata={
        "help": "Text for the ranking loss and the distillation (.txt, .jsonl/.json/.parquet/.csv, saved dataset, "
                "datasets name); the last eval_fraction of the documents is held out for evaluation."})
    dtype: Dtype = field(default="float32", metadata={"help": "dtype the teacher is loaded and pruned in."})
    target_params: int | None = field(default=None, metadata={
        "help": "Budget in non-embedding parameters (or give target_ratio)."})
    target_ratio: float | None = field(default=None, metadata={
        "help": "Budget as a fraction of the teacher's non-embedding parameters (or give target_params)."})
    tolerance: float = field(default=0.05, metadata={"help": "Candidates lie within this fraction of the budget."})
    width_multiple: int = field(default=64, metadata={
        "help": "Hidden and intermediate sizes tried are multiples of this (plus the teacher's own)."})
    # list[str] with choices, not list[Literal]: HfArgumentParser cannot parse a list of Literal values
    axes: list[str] = field(default_factory=lambda: ["hidden_size", "intermediate_size", "attention"], metadata={
        "help": "What is searched: hidden_size, intermediate_size, attention (query + KV heads), depth.",
        "choices": list(AXES)})
    layer_choices: list[int] = field(default_factory=list, metadata={
        "help": "Layer counts tried with the depth axis (empty: 1 to the teacher's)."})
    max_candidates: int = field(default=64, metadata={
        "help": "Evaluate at most this many candidates, those closest to the budget."})
    num_samples: int = field(default=16, metadata={"help": "Evaluation blocks the losses are measured on."})
    seq_len: int = field(default=256, metadata={"help": "Tokens per block (evaluation and distillation)."})
    eval_fraction: float = field(default=0.1, metadata={
        "help": "Fraction of data's documents (the last ones) held out for evaluation."})
    distill_top_n: int = field(default=0, metadata={
        "help": "Distil the best N zero-shot candidates for max_steps each and re-rank them (0: zero-shot only)."})
    checkpoint_dir: str | None = field(default=None, metadata={
        "help": "Trainer checkpoints and logs of the distillation runs (default: OUTPUT_DIR.checkpoints)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output_dir."})

    # Defaults that differ from DistillationConfig
    max_steps: int = field(default=50, metadata={"help": "Optimizer steps of each candidate's distillation."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate of the distillation runs."})
    save_strategy: str = field(default="no", metadata={
        "help": "Checkpoint saving of the candidates' runs (no, steps, epoch)."})

    def __post_init__(self):
        super().__post_init__()
        if self.output_dir in (None, "", "trainer_output"):
            raise ConfigError("output_dir is not set: give the directory the search report goes to (--output_dir DIR)")
        if not self.scores:
            raise ConfigError("scores is not set: give the importance stage's output for this model (--scores DIR)")
        if not self.data:
            raise ConfigError("data is not set: give text for the ranking loss (--data FILE, e.g. a .jsonl)")
        if (self.target_params is None) == (self.target_ratio is None):
            raise ConfigError("give exactly one budget: target_params (non-embedding parameters) or target_ratio "
                              "(a fraction of the teacher's, e.g. --target_ratio 0.5)")
        if self.target_ratio is not None and not 0 < self.target_ratio <= 1:
            raise ConfigError(f"target_ratio={self.target_ratio}: must be in (0, 1]")
        if self.target_params is not None and self.target_params < 1:
            raise ConfigError(f"target_params={self.target_params}: must be >= 1")
        if not 0 <= self.tolerance < 1:
            raise ConfigError(f"tolerance={self.tolerance}: must be in [0, 1) (0.05 = within 5% of the budget)")
        if not 0 < self.eval_fraction < 1:
            raise ConfigError(f"eval_fraction={self.eval_fraction}: must be in (0, 1)")
        for name in ("width_multiple", "max_candidates", "num_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.seq_len < 2:
            raise ConfigError(f"seq_len={self.seq_len}: need at least 2 tokens per block")
        if self.distill_top_n < 0:
            raise ConfigError(f"distill_top_n={self.distill_top_n}: must be >= 0 (0 = zero-shot ranking only)")
        if self.distill_top_n and self.max_steps < 1:
            raise ConfigError(f"max_steps={self.max_steps}: distill_top_n={self.distill_top_n} needs a fixed step "
                              "budget per candidate (e.g. --max_steps 50)")
        unknown = [a for a in self.axes if a not in AXES]
        if unknown or not self.axes:
            raise ConfigError(f"axes={list(self.axes)}: choose one or more of {', '.join(AXES)}")
        if self.layer_choices and "depth" not in self.axes:
            raise ConfigError("layer_choices is set but 'depth' is not in axes: add it (--axes hidden_size "
                              "intermediate_size attention depth) or drop layer_choices")
        if self.max_length is not None and self.max_length != self.seq_len:
            raise ConfigError(f"max_length={self.max_length} but seq_len={self.seq_len}: the search trains on its "
                              "seq_len blocks; set seq_len and leave max_length unset")
        if self.teacher_cache is not None:
            raise ConfigError("teacher_cache is not used by the search (each candidate distils from the model "
                              "directly); drop it")

    def trainer_args(self) -> DistillationConfig:
        """The distillation runs' config: the DistillationConfig fields, ``output_dir`` = the checkpoint directory."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(DistillationConfig) if f.init}
        values.update(output_dir=self.checkpoint_path(), max_length=self.seq_len)
        return DistillationConfig(**values)

    def checkpoint_path(self) -> str:
        return str(self.checkpoint_dir or f"{Path(self.output_dir).expanduser()}.checkpoints")


@dataclass
class SearchResult(StageResult):
    """``metrics``: ``budget``, ``enumerated``/``evaluated``/``distilled`` counts, the ``chosen`` architecture, the
    ``zero_shot_winner``, ``winner_changed``, ``kendall_tau`` and ``seconds`` per phase."""


def _split_texts(config: SearchConfig) -> tuple[list[str], list[str]]:
    from ..data import load_texts, split_held_out

    texts = load_texts(config.data, text_field=config.dataset_text_field)
    if len(texts) < 2:
        raise DataError(f"data {config.data!r} holds {len(texts)} document; the search needs at least 2 (the last "
                        f"eval_fraction={config.eval_fraction} are held out for evaluation)")
    return split_held_out(texts, config.eval_fraction)


def _blocks(texts, tokenizer, config: SearchConfig, count: int, what: str):
    from ..data import token_blocks

    blocks = token_blocks(texts, tokenizer, config.seq_len, count)
    if blocks.shape[0] < count:
        raise DataError(f"data {config.data!r}: the {what} documents give {blocks.shape[0]} blocks of "
                        f"seq_len={config.seq_len} tokens, {count} needed; give more text, or lower seq_len or "
                        f"{'num_samples' if what == 'held-out' else 'max_steps / per_device_train_batch_size'}")
    return blocks


@register_stage("search", config=SearchConfig, inputs={"model": "teacher", "scores": "scores", "data": "data"},
                produces="architecture")
def run_search(config: SearchConfig) -> SearchResult:
    """Search architectures of ``config.model`` within the budget and write the chosen one to ``config.output_dir``.

    Checked before the model loads: the output directory, the model's files, the scores directory, the data.
    """
    from ..importance import ImportanceScores, ScoresMismatchError
    from ..loading import check_model_source, load_causal_lm
    from ..outputs import atomic_output_dir, check_output_dir
    from ..search import budget_from, search_architectures
    from .prune import check_scores_dir

    check_output_dir(config.output_dir, overwrite=config.overwrite, name="output_dir", fix="set overwrite (--overwrite)")
    check_model_source(config.model, trust_remote_code=config.trust_remote_code)
    check_scores_dir(config.scores)
    train_texts, eval_texts = _split_texts(config)
    model, tokenizer = load_causal_lm(config.model, dtype=config.dtype, trust_remote_code=config.trust_remote_code)
    try:
        scores = ImportanceScores.load(config.scores, model=model)
    except ScoresMismatchError as err:
        raise ConfigError(f"scores={config.scores!r}: {err}") from None
    if "depth" in config.axes and not scores.available_depth_criteria():
        raise ConfigError(f"axes has 'depth' but the scores in {config.scores!r} hold no depth criterion; re-run the "
                          "importance stage with --depth_criteria block_influence (or drop 'depth')")
    eval_blocks = _blocks(eval_texts, tokenizer, config, config.num_samples, "held-out")
    train_blocks, args = None, None
    if config.distill_top_n:
        args = config.trainer_args()
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
        train_blocks = _blocks(train_texts, tokenizer, config, config.max_steps * per_step, "training")
    try:
        budget = budget_from(model, target_params=config.target_params, target_ratio=config.target_ratio)
        outcome = search_architectures(
            model, scores, eval_blocks, budget=budget, tolerance=config.tolerance,
            width_multiple=config.width_multiple, axes=list(config.axes), layer_choices=config.layer_choices or None,
            max_candidates=config.max_candidates, top_n=config.distill_top_n, train_blocks=train_blocks,
            distill_args=args, tokenizer=tokenizer, batch_size=config.per_device_eval_batch_size,
            progress=not config.disable_tqdm)
    except ValueError as err:
        if isinstance(err, (ConfigError, DataError)) or "no architecture within" not in str(err):
            raise
        raise ConfigError(str(err)) from None
    summary = outcome.summary()
    with atomic_output_dir(config.output_dir, overwrite=config.overwrite, name="output_dir",
                           fix="set overwrite (--overwrite)") as tmp:
        _write_json(tmp / ARCHITECTURE_FILE, outcome.chosen.architecture.targets())
        _write_json(tmp / CANDIDATES_FILE, [c.to_dict(outcome.budget) for c in outcome.candidates])
        _write_json(tmp / REPORT_FILE, {**summary, "settings": _settings(config)})
    return SearchResult(stage="search", output_dir=str(config.output_dir), metrics=summary)


def _settings(config: SearchConfig) -> dict:
    keys = ("model", "scores", "data", "target_params", "target_ratio", "tolerance", "width_multiple", "axes",
            "layer_choices", "max_candidates", "num_samples", "seq_len", "eval_fraction", "distill_top_n",
            "max_steps", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "kd_loss",
            "seed")
    return {k: getattr(config, k) for k in keys}


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")


def read_architecture(path) -> dict:
    """The prune targets in a search's ``output_dir`` (or its ``architecture.json``)."""
    file, targets = read_json(path, ARCHITECTURE_FILE, error=ConfigError, invalid="re-run the search",
                              label="architecture=",
                              missing="run the search stage first (`hf-minitron search --output_dir DIR`) or give "
                                      "the file")
    from ..search import ARCH_FIELDS

    if not isinstance(targets, dict) or not targets or set(targets) - set(ARCH_FIELDS):
        raise ConfigError(f"{file} must be a JSON object with keys among {', '.join(ARCH_FIELDS)}; got {targets!r}")
    return targets
