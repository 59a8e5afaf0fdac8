"""The ``importance`` stage: score a model's heads, neurons, channels and layers on calibration data; save scores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError
from .base import StageResult, register_stage

DEPTH_CRITERIA = ("block_influence", "lm_loss", "block")
SeqAggregation = Literal["mean", "l2", "var"]


@dataclass
class ImportanceConfig:
    r"""Configuration of :func:`run_importance`.

    > Parameters that control the model

        model (`str`, *optional*, defaults to `"default"`):
            Model to score: a Hub id, a local directory or a `.gguf` file (`"default"`: the embedded
            SmolLM2-135M-Instruct).
        dtype (`Literal["float32", "bfloat16", "float16"]`, *optional*, defaults to `"float32"`):
            dtype the model runs in while scoring.
        device (`str` or `None`, *optional*, defaults to `None`):
            Device to score on (`"cuda"`, `"cpu"`); default: where the model loads.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow the model's own code from the Hub.

    > Parameters that control the calibration data

        data (`str`):
            Calibration text: `.txt` (one document per line), `.jsonl`/`.json`/`.parquet`/`.csv` records, a saved
            dataset directory or a `datasets` name.
        text_field (`str`, *optional*, defaults to `"text"`):
            Record field holding the text.
        num_samples (`int`, *optional*, defaults to `1024`):
            Calibration samples (the paper's setting is 1024 x 4096 tokens): documents, or packed blocks.
        seq_len (`int`, *optional*, defaults to `4096`):
            Tokens per sample (documents are cut there).
        packing (`bool`, *optional*, defaults to `False`):
            `False`: each document is one sample (with the tokenizer's special tokens), as ShortGPT computes Block
            Influence; `True`: EOS-joined blocks of `seq_len` tokens (position 0 of a block then weighs far less in
            Block Influence, which changes the layers it drops: see the README's pruning table).
        batch_size (`int`, *optional*, defaults to `0`):
            Samples per forward pass; `0` sizes it to the memory available. A batch whose estimated memory exceeds
            what is available is refused before any forward, with the estimate and the size to use.
        offload (`Literal["layers"]` or `None`, *optional*, defaults to `None`):
            `"layers"`: score a safetensors checkpoint one decoder layer at a time, reading only that layer's tensors
            (teachers larger than memory; Block Influence only).
        offload_dir (`str` or `None`, *optional*, defaults to `None`):
            With `offload`: where the calibration hidden states go when they do not fit in memory.

    > Parameters that control the scores

        depth_criteria (`list[Literal["block_influence", "lm_loss", "block"]]`, *optional*, defaults to
        `["block_influence"]`):
            Layer-importance criteria. `block_influence` comes free with the scoring pass; `lm_loss` costs one
            extra forward per layer over `loss_num_samples` blocks (about `num_layers + 2` forwards of them);
            `block` one extra forward per start position and size in `block_sizes`.
        block_sizes (`list[int]`, *optional*, defaults to `[]`):
            Layer counts for the contiguous-block search (implies `block`).
        loss_num_samples (`int`, *optional*, defaults to `64`):
            Blocks used by the LM-loss passes.
        aggregation_seq (`Literal["mean", "l2", "var"]`, *optional*, defaults to `"mean"`):
            Aggregation of an activation over a block's tokens (`mean` of `|x|`).
        aggregation_batch (`Literal["mean", "l2", "var"]`, *optional*, defaults to `"l2"`):
            Aggregation over the blocks.

    > Parameters that control the output

        output_dir (`str`):
            Directory for `importance.safetensors` + `manifest.json` (written atomically).
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace a non-empty `output_dir`.
    """

    model: str = field(default="default", metadata={
        "help": "Model to score: Hub id, local directory or .gguf file ('default': embedded SmolLM2-135M-Instruct)."})
    data: str | None = field(default=None, metadata={
        "help": "Calibration text: .txt (one document per line), .jsonl/.json/.parquet/.csv, a saved dataset "
                "directory or a datasets name."})
    output_dir: str | None = field(default=None, metadata={
        "help": "Directory for importance.safetensors + manifest.json."})
    text_field: str = field(default="text", metadata={"help": "Record field holding the text."})
    num_samples: int = field(default=1024, metadata={
        "help": "Calibration samples (paper: 1024 x 4096 tokens): documents, or packed blocks with packing."})
    seq_len: int = field(default=4096, metadata={"help": "Tokens per sample (documents are cut there)."})
    packing: bool = field(default=False, metadata={
        "help": "Pack EOS-joined documents into seq_len blocks (default: one document per sample, as ShortGPT)."})
    batch_size: int = field(default=0, metadata={
        "help": "Samples per forward pass; 0 sizes it to the available memory (a batch that does not fit is "
                "refused before any forward, with the estimate)."})
    offload: Literal["layers"] | None = field(default=None, metadata={
        "help": "'layers': score a safetensors checkpoint one decoder layer at a time (teachers larger than "
                "memory; Block Influence only)."})
    offload_dir: str | None = field(default=None, metadata={
        "help": "With offload: where the calibration hidden states go when they do not fit in memory."})
    depth_criteria: list[str] = field(default_factory=lambda: ["block_influence"], metadata={
        "help": "Layer criteria: block_influence (default; free with the scoring pass), lm_loss (opt-in: one extra "
                "forward per layer over loss_num_samples samples, ~32x a forward of them on SmolLM2), block (opt-in: "
                "one extra forward per start position and size in block_sizes)."})
    block_sizes: list[int] = field(default_factory=list, metadata={
        "help": "Layer counts for the contiguous-block search, e.g. --block_sizes 8 12 (implies 'block')."})
    loss_num_samples: int = field(default=64, metadata={"help": "Blocks used by the LM-loss depth passes."})
    aggregation_seq: SeqAggregation = field(default="mean", metadata={
        "help": "Aggregation over a block's tokens: mean (of |x|), l2 or var."})
    aggregation_batch: SeqAggregation = field(default="l2", metadata={
        "help": "Aggregation over the blocks: l2, mean or var."})
    dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata={
        "help": "dtype the model runs in while scoring."})
    device: str | None = field(default=None, metadata={"help": "Device to score on (default: where the model loads)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output_dir."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model's own code from the Hub."})

    def __post_init__(self):
        if not self.output_dir:
            raise ConfigError("output_dir is not set: give the directory the scores go to (--output_dir DIR)")
        if not self.data:
            raise ConfigError("data is not set: give calibration text (--data FILE, e.g. a .jsonl of documents)")
        for name in ("num_samples", "seq_len", "loss_num_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.batch_size < 0:
            raise ConfigError(f"batch_size={self.batch_size}: must be >= 1 (or 0 to size it to the memory)")
        if self.offload == "layers" and set(self.depth_criteria) - {"block_influence"}:
            raise ConfigError("offload='layers' scores one layer at a time, so only block_influence is available: "
                              f"drop {sorted(set(self.depth_criteria) - {'block_influence'})} from depth_criteria "
                              "(or score in memory)")
        if self.seq_len < 2:
            raise ConfigError(f"seq_len={self.seq_len}: need at least 2 tokens per block")
        for c in self.depth_criteria:
            if c not in DEPTH_CRITERIA:
                raise ConfigError(f"depth_criteria contains {c!r}; choose from {', '.join(DEPTH_CRITERIA)}")
        if "block" in self.depth_criteria and not self.block_sizes:
            raise ConfigError("depth_criteria has 'block' but block_sizes is empty: add e.g. --block_sizes 8")
        for n in self.block_sizes:
            if n < 1:
                raise ConfigError(f"block_sizes contains {n}: each size must be >= 1")


@dataclass
class ImportanceResult(StageResult):
    """``metrics``: calibration ``samples``/``tokens``, ``base_loss`` (when a loss criterion ran), per depth criterion
    the layers ordered least important first."""


@register_stage("importance", config=ImportanceConfig, inputs={"model": "teacher", "data": "data"},
                produces="scores", distributed=True)
def run_importance(config: ImportanceConfig) -> ImportanceResult:
    """Score ``config.model`` on ``config.data`` and save the scores to ``config.output_dir``.

    Checked before the model loads: the output directory, the model's files, and that the data can be read.
    """
    from ..data import load_texts
    from ..importance import estimate_importance
    from ..loading import check_model_source, load_causal_lm
    from ..outputs import check_output_dir

    check_output_dir(config.output_dir, overwrite=config.overwrite, name="output_dir", fix="set overwrite (--overwrite)")
    check_model_source(config.model, trust_remote_code=config.trust_remote_code)
    texts = load_texts(config.data, text_field=config.text_field)
    if config.batch_size and config.offload is None:
        check_batch_fits(config)
    settings = dict(batch_size=config.batch_size or "auto", seq_len=config.seq_len, num_samples=config.num_samples,
                    packing=config.packing, depth_criteria=list(config.depth_criteria), block_sizes=config.block_sizes,
                    loss_num_samples=config.loss_num_samples,
                    aggregation=(config.aggregation_seq, config.aggregation_batch), text_field=config.text_field,
                    progress=True)
    if config.offload == "layers":
        from ..loading import load_tokenizer
        from ..streaming import estimate_importance_streamed

        tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
        scores = estimate_importance_streamed(config.model, texts, tokenizer=tokenizer, dtype=config.dtype,
                                              device=config.device, offload_dir=config.offload_dir,
                                              trust_remote_code=config.trust_remote_code, **settings)
    else:
        model, tokenizer = load_causal_lm(config.model, dtype=config.dtype, device=config.device,
                                          trust_remote_code=config.trust_remote_code)
        scores = estimate_importance(model, texts, tokenizer=tokenizer, **settings)
    if _is_main_process():
        scores.save(config.output_dir, overwrite=config.overwrite)
    _barrier()
    cal = scores.manifest["calibration"]
    metrics = {"samples": cal["samples"], "tokens": cal["tokens"], "base_loss": scores.base_loss}
    metrics.update({f"{name}_least_important_first": values.argsort().tolist()
                    for name, values in scores.depth.items()})
    for n, losses in scores.block_losses.items():
        start = int(losses.argmin())
        metrics[f"block_{n}_best_drop"] = [start, start + n - 1]
    return ImportanceResult(stage="importance", output_dir=str(config.output_dir), metrics=metrics)


def check_batch_fits(config: ImportanceConfig) -> None:
    """Refuse, from the model's config alone (before any weight loads), a ``batch_size`` whose estimated scoring
    memory (:func:`hf_minitron.importance.scoring_memory`: weights + activations) exceeds the memory available now."""
    import torch

    from ..importance import ScoringMemoryError, available_memory, fit_batch_size, scoring_memory
    from .prune import load_model_config

    model_config = load_model_config(config.model, trust_remote_code=config.trust_remote_code)
    if model_config is None:
        return
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[config.dtype]
    loss = bool(set(config.depth_criteria) & {"lm_loss", "block"})
    need = scoring_memory(model_config, config.batch_size, config.seq_len, dtype, lm_loss=loss)
    free = available_memory(config.device)
    if need.total > free:
        fit = fit_batch_size(model_config, config.seq_len, dtype=dtype, lm_loss=loss,
                             available=max(free - (need.total - need.transient), 0))
        raise ScoringMemoryError(
            f"batch_size={config.batch_size} x seq_len={config.seq_len} needs about {need.describe()}, but only "
            f"{free / (1 << 30):.2f} GiB is available; pass --batch_size {fit} (or 0 to size it to the memory), or "
            "a shorter --seq_len")


def _is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
