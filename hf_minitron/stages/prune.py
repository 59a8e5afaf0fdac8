"""The ``prune`` stage: load a model and its importance scores, prune to the targets, save atomically."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError
from .base import StageResult, register_stage

DepthCriterion = Literal["block_influence", "lm_loss", "block"]
Dtype = Literal["float32", "bfloat16", "float16"]


@dataclass
class PruneConfig:
    r"""Configuration of :func:`run_prune`.

    > Parameters that control the input

        model (`str`, *optional*, defaults to `"default"`):
            Model to prune: a Hub id, a local directory or a `.gguf` file (`"default"`: the embedded
            SmolLM2-135M-Instruct).
        scores (`str` or `None`, *optional*, defaults to `None`):
            Directory written by the `importance` stage. Needed for every width target and for
            `num_hidden_layers` (not for `drop_layers`).
        dtype (`Literal["float32", "bfloat16", "float16"]` or `None`, *optional*, defaults to `None`):
            dtype the model is pruned and saved in (`None`: float32 in memory; with `low_memory`, the stored dtype).
        low_memory (`bool`, *optional*, defaults to `False`):
            Prune a safetensors checkpoint tensor by tensor without loading it (the same files, byte for byte, as
            the in-memory path writes); peak memory is about one output shard plus the largest tensor.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow the model's own code from the Hub.

    > Parameters that control the target architecture (unset = keep)

        hidden_size, intermediate_size, num_attention_heads, num_key_value_heads, num_hidden_layers (`int` or `None`):
            Target sizes; the same in every layer, so the result is a stock config.
        drop_layers (`list[int]` or `None`, *optional*, defaults to `None`):
            Layer indices to remove, instead of `num_hidden_layers`.
        architecture (`str` or `None`, *optional*, defaults to `None`):
            The search stage's output directory (or its `architecture.json`): the chosen targets. Targets given
            here as well win over the file's.
        depth_criterion (`Literal["block_influence", "lm_loss", "block"]` or `None`, *optional*):
            How `num_hidden_layers` picks the layers to drop (default: the best criterion the scores hold).

    > Parameters that control the output

        output_dir (`str`):
            Directory the pruned checkpoint is written to (atomically; a standard Hugging Face checkpoint).
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace a non-empty `output_dir`.
    """

    model: str = field(default="default", metadata={
        "help": "Model to prune: Hub id, local directory or .gguf file ('default': embedded SmolLM2-135M-Instruct)."})
    scores: str | None = field(default=None, metadata={
        "help": "Directory written by the importance stage (needed for width targets and num_hidden_layers)."})
    output_dir: str | None = field(default=None, metadata={"help": "Directory the pruned checkpoint is written to."})
    hidden_size: int | None = field(default=None, metadata={"help": "Target hidden size (embedding channels)."})
    intermediate_size: int | None = field(default=None, metadata={"help": "Target MLP intermediate size."})
    num_attention_heads: int | None = field(default=None, metadata={"help": "Target number of query heads."})
    num_key_value_heads: int | None = field(default=None, metadata={"help": "Target number of KV heads (groups)."})
    num_hidden_layers: int | None = field(default=None, metadata={
        "help": "Target number of layers; the layers to drop are chosen by depth_criterion."})
    drop_layers: list[int] | None = field(default=None, metadata={
        "help": "Layer indices to remove (instead of num_hidden_layers), e.g. --drop_layers 10 11 12."})
    architecture: str | None = field(default=None, metadata={
        "help": "A search stage's output (or its architecture.json): its targets, under any given here."})
    depth_criterion: DepthCriterion | None = field(default=None, metadata={
        "help": "How num_hidden_layers picks the layers to drop (default: the best criterion the scores hold)."})
    dtype: Dtype | None = field(default=None, metadata={
        "help": "dtype the model is pruned and saved in (default: float32 in memory; with low_memory, the dtype the "
                "checkpoint stores)."})
    low_memory: bool = field(default=False, metadata={
        "help": "Prune a safetensors checkpoint tensor by tensor without loading it (teachers larger than memory); "
                "peak memory is about one output shard plus the largest tensor."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output_dir."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model's own code from the Hub."})

    def __post_init__(self):
        if not self.output_dir:
            raise ConfigError("output_dir is not set: give the directory the pruned model goes to (--output_dir DIR)")
        if self.num_hidden_layers is not None and self.drop_layers is not None:
            raise ConfigError("num_hidden_layers and drop_layers both set: give one (drop_layers names the layers, "
                              "num_hidden_layers lets depth_criterion choose them)")
        for name in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                     "num_hidden_layers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}={value}: must be >= 1 (or unset to keep the model's size)")
        if not self.targets() and self.architecture is None:
            raise ConfigError("no target given: set at least one of hidden_size, intermediate_size, "
                              "num_attention_heads, num_key_value_heads, num_hidden_layers, drop_layers (or "
                              "architecture, a search stage's output)")

    def all_targets(self) -> dict:
        """:meth:`targets` over those of ``architecture`` (read now: the search may have run after validation)."""
        if self.architecture is None:
            return self.targets()
        from .search import read_architecture

        return {**read_architecture(self.architecture), **self.targets()}

    def targets(self) -> dict:
        """The pruning targets given in this config (not those of ``architecture``), as ``prune_model`` takes
        them."""
        keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
                "drop_layers", "depth_criterion")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


def check_scores_dir(path) -> None:
    """Refuse a ``scores`` directory that holds no importance scores (before any model loads)."""
    from pathlib import Path

    from ..importance import MANIFEST_FILE, SCORES_FILE

    where = Path(path).expanduser()
    if not (where / MANIFEST_FILE).is_file() or not (where / SCORES_FILE).is_file():
        raise ConfigError(f"scores={str(path)!r} holds no importance scores ({MANIFEST_FILE} + {SCORES_FILE}); "
                          "run the importance stage first (`hf-minitron importance --output_dir DIR`)")


@dataclass
class PruneResult(StageResult):
    """``metrics``: ``before``/``after`` architecture summaries, ``dropped_layers``, ``depth_criterion``."""


@register_stage("prune", config=PruneConfig, inputs={"model": "teacher", "scores": "scores",
                                                   "architecture": "architecture"}, produces="student")
def run_prune(config: PruneConfig) -> PruneResult:
    """Prune ``config.model`` to ``targets`` and save it to ``config.output_dir``.

    Checked before the model loads: the output directory, the scores directory and the model's architecture
    (from its config). Checked before any weight is sliced: every target against the model's sizes and the scores.
    """
    from ..arch import get_adapter
    from ..importance import ImportanceScores
    from ..loading import check_model_source, load_causal_lm
    from ..outputs import check_output_dir
    from ..pruning import plan_pruning, prune_model

    check_output_dir(config.output_dir, overwrite=config.overwrite, name="output_dir", fix="set overwrite (--overwrite)")
    targets = config.all_targets()
    check_model_source(config.model, trust_remote_code=config.trust_remote_code)
    check_targets_fit(config.model, targets)
    if config.scores is None and (set(targets) - {"drop_layers", "depth_criterion"}):
        raise ConfigError("scores is not set: width targets and num_hidden_layers need the importance stage's "
                          "output (--scores DIR); only drop_layers works without scores")
    if config.scores is not None:
        check_scores_dir(config.scores)
    if config.low_memory:
        return _prune_streamed(config, targets)
    model, tokenizer = load_causal_lm(config.model, dtype=config.dtype or "float32",
                                      trust_remote_code=config.trust_remote_code)
    scores = ImportanceScores.load(config.scores, model=model) if config.scores else None
    plan = plan_pruning(model, targets, scores)
    before = get_adapter(model).summary()
    pruned = prune_model(model, targets, scores, out_dir=config.output_dir, tokenizer=tokenizer,
                         overwrite=config.overwrite)
    after = get_adapter(pruned).summary()
    metrics = _metrics(before, after, plan)
    return PruneResult(stage="prune", output_dir=str(config.output_dir), metrics=metrics)


def _metrics(before: dict, after: dict, plan) -> dict:
    return {"parameters_before": before["parameters"], "parameters_after": after["parameters"],
            "non_embedding_before": before["non_embedding_parameters"],
            "non_embedding_after": after["non_embedding_parameters"],
            "dropped_layers": plan.dropped_layers, "depth_criterion": plan.depth_criterion,
            "before": before, "after": after}


def _prune_streamed(config: PruneConfig, targets: dict) -> PruneResult:
    """``low_memory``: plan from the checkpoint's config and the scores, then prune tensor by tensor."""
    import torch
    from transformers import AutoConfig

    from ..arch import get_adapter
    from ..streaming import empty_model, plan_checkpoint, prune_checkpoint

    plan = plan_checkpoint(config.model, targets, config.scores, trust_remote_code=config.trust_remote_code)
    out = prune_checkpoint(config.model, targets, config.scores, config.output_dir, dtype=config.dtype,
                           overwrite=config.overwrite, trust_remote_code=config.trust_remote_code, progress=True)
    summaries = [get_adapter(empty_model(AutoConfig.from_pretrained(str(d)), torch.float32)).summary()
                 for d in (config.model, out)]
    return PruneResult(stage="prune", output_dir=str(config.output_dir), metrics=_metrics(*summaries, plan))


def load_model_config(source, *, trust_remote_code: bool = False):
    """The ``PretrainedConfig`` of a model source (no weights), or ``None`` when it cannot be read offline."""
    from pathlib import Path

    from transformers import AutoConfig

    from ..loading import resolve_source

    resolved = resolve_source(source)
    try:
        if isinstance(resolved, Path) and resolved.is_file():
            return AutoConfig.from_pretrained(str(resolved.parent), gguf_file=resolved.name)
        return AutoConfig.from_pretrained(str(resolved), trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None


def check_targets_fit(model, targets: dict, *, where: str = "prune") -> None:
    """Refuse targets the model cannot be pruned to, from its config alone (no weights): a size larger than the
    model's, query heads that are not a multiple of the KV heads, KV heads that do not divide the model's, layers
    out of range. ``model``: a ``PretrainedConfig`` or a model source (skipped when its config cannot be read)."""
    config = model if hasattr(model, "to_dict") else load_model_config(model)
    if config is None:
        return
    config = getattr(config, "text_config", None) or config
    sizes = {k: getattr(config, k, None) for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                                    "num_key_value_heads", "num_hidden_layers")}
    if sizes["num_key_value_heads"] is None:
        sizes["num_key_value_heads"] = sizes["num_attention_heads"]
    for key, have in sizes.items():
        want = targets.get(key)
        if want is not None and have is not None and want > have:
            raise ConfigError(f"{where}: {key}={want} is larger than the model's {have}; pruning only shrinks a "
                              f"model: choose {key} <= {have}")
    heads = targets.get("num_attention_heads") or sizes["num_attention_heads"]
    kv = targets.get("num_key_value_heads") or sizes["num_key_value_heads"]
    if heads and kv and heads % kv:
        raise ConfigError(f"{where}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}; "
                          "each KV head must serve the same number of query heads")
    if kv and sizes["num_key_value_heads"] and targets.get("num_key_value_heads") and \
            sizes["num_key_value_heads"] % kv:
        raise ConfigError(f"{where}: num_key_value_heads={kv} does not divide the model's "
                          f"{sizes['num_key_value_heads']}; KV heads are pruned as whole groups, choose a divisor")
    layers = sizes["num_hidden_layers"]
    drop = targets.get("drop_layers")
    if drop is not None and layers is not None:
        bad = [i for i in drop if not 0 <= i < layers]
        if bad or len(set(drop)) != len(drop) or len(set(drop)) >= layers:
            raise ConfigError(f"{where}: drop_layers={list(drop)} must be distinct indices in [0, {layers - 1}] that "
                              "leave at least one layer")
