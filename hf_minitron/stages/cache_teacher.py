"""The ``cache-teacher`` stage: run the teacher once over the data and store its top-k next-token log-probs.

Distillation then trains from the cache with no teacher in memory (``distill --teacher_cache DIR``). An interrupted
run resumes: finished shards are kept. Under ``torchrun``/``accelerate launch`` each rank writes its own shards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError
from .base import StageResult, register_stage


@dataclass
class CacheTeacherConfig:
    r"""Configuration of :func:`run_cache_teacher`.

    > Parameters that control the teacher and the data

        teacher (`str`, *optional*, defaults to `"default"`):
            Teacher: a Hub id, a local directory or a `.gguf` file (`"default"`: the embedded SmolLM2-135M-Instruct).
        data (`str`):
            Text: `.txt` (one document per line), `.jsonl`/`.json`/`.parquet`/`.csv` records, a saved dataset
            directory or a `datasets` name.
        text_field (`str`, *optional*, defaults to `"text"`):
            Record field holding the text.
        max_length (`int`, *optional*, defaults to `256`):
            Tokens per sequence.
        num_sequences (`int` or `None`, *optional*, defaults to `None`):
            Sequences to cache (default: all the data gives).
        packing (`bool`, *optional*, defaults to `True`):
            Pack EOS-joined documents into full sequences; `False`: one document per sequence, padded.
        teacher_dtype (`Literal["float32", "bfloat16", "float16"]` or `None`, *optional*):
            dtype the teacher runs in (default: float32 on CPU, bfloat16 on GPU).
        batch_size (`int`, *optional*, defaults to `4`):
            Sequences per teacher forward.
        revision (`str` or `None`), trust_remote_code (`bool`):
            Hub revision (recorded in the manifest); allow the model's own code.

    > Parameters that control what is stored

        top_k (`int`, *optional*, defaults to `64`):
            Ids stored per token.
        temperature (`float`, *optional*, defaults to `1.0`):
            Teacher softmax temperature.
        sampled (`bool`, *optional*, defaults to `False`):
            Store sampled ids with unbiased weights (for `topk_tail="sampled"`) instead of the top-k and the tail
            mass.
        exact_head (`int` or `None`, *optional*, defaults to `None`):
            With `sampled`: ids kept exactly (the teacher's most likely) before the remaining `top_k - exact_head`
            are drawn (default `top_k // 2`; 0 = plain random-sampling KD).
        logprob_dtype (`Literal["float16", "bfloat16"]`, *optional*, defaults to `"float16"`):
            Stored log-prob dtype.
        shard_size (`int`, *optional*, defaults to `64`):
            Sequences per shard (the unit of resumption).
        seed (`int`, *optional*, defaults to `0`):
            Seed of the draws (`sampled`).

    > Parameters that control the output

        output_dir (`str`):
            Cache directory; an unfinished cache there is resumed.
    """

    teacher: str = field(default="default", metadata={
        "help": "Teacher: Hub id, local directory or .gguf file ('default': embedded SmolLM2-135M-Instruct)."})
    data: str | None = field(default=None, metadata={
        "help": "Text: .txt (one document per line), .jsonl/.json/.parquet/.csv, a saved dataset directory or a "
                "datasets name."})
    output_dir: str | None = field(default=None, metadata={
        "help": "Cache directory (an unfinished cache there is resumed)."})
    text_field: str = field(default="text", metadata={"help": "Record field holding the text."})
    max_length: int = field(default=256, metadata={"help": "Tokens per sequence."})
    num_sequences: int | None = field(default=None, metadata={
        "help": "Sequences to cache (default: all the data gives)."})
    packing: bool = field(default=True, metadata={
        "help": "Pack EOS-joined documents into full sequences (false: one document per sequence, padded)."})
    top_k: int = field(default=64, metadata={"help": "Ids stored per token."})
    temperature: float = field(default=1.0, metadata={"help": "Teacher softmax temperature."})
    sampled: bool = field(default=False, metadata={
        "help": "Store sampled ids with unbiased weights (for topk_tail='sampled') instead of the top-k and the "
                "tail mass."})
    exact_head: int | None = field(default=None, metadata={
        "help": "With sampled: ids kept exactly before the rest are drawn (default top_k // 2; 0 = plain "
                "random-sampling KD)."})
    logprob_dtype: Literal["float16", "bfloat16"] = field(default="float16", metadata={
        "help": "Stored log-prob dtype."})
    shard_size: int = field(default=64, metadata={"help": "Sequences per shard (the unit of resumption)."})
    batch_size: int = field(default=4, metadata={"help": "Sequences per teacher forward."})
    teacher_dtype: Literal["float32", "bfloat16", "float16"] | None = field(default=None, metadata={
        "help": "dtype the teacher runs in (default: float32 on CPU, bfloat16 on GPU)."})
    seed: int = field(default=0, metadata={"help": "Seed of the draws (sampled)."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of the teacher."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model's own code from the Hub."})

    def __post_init__(self):
        if not self.output_dir:
            raise ConfigError("output_dir is not set: give the cache directory (--output_dir DIR)")
        if not self.data:
            raise ConfigError("data is not set: give the text to cache the teacher on (--data FILE)")
        for name in ("top_k", "max_length", "shard_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.max_length < 2:
            raise ConfigError(f"max_length={self.max_length}: need at least 2 tokens per sequence")
        if self.num_sequences is not None and self.num_sequences < 1:
            raise ConfigError(f"num_sequences={self.num_sequences}: must be >= 1 (or unset for all)")
        if not self.temperature > 0:
            raise ConfigError(f"temperature={self.temperature}: must be > 0")
        if self.exact_head is not None and not self.sampled:
            raise ConfigError("exact_head applies to sampled caches only: set sampled or drop exact_head")
        if self.exact_head is not None and not 0 <= self.exact_head < self.top_k:
            raise ConfigError(f"exact_head={self.exact_head}: must be in [0, top_k={self.top_k}) so that at least "
                              "one id is sampled")


@dataclass
class CacheTeacherResult(StageResult):
    """``metrics``: ``sequences``, ``max_length``, ``top_k``, ``kind``, ``shards``, ``bytes``, ``bytes_per_token``."""


def _teacher_vocab_size(source) -> int | None:
    import json
    from pathlib import Path

    from ..loading import resolve_source

    resolved = resolve_source(source)
    config_file = Path(resolved) / "config.json" if isinstance(resolved, Path) and resolved.is_dir() else None
    if config_file is None or not config_file.is_file():
        return None
    return json.loads(config_file.read_text(encoding="utf-8")).get("vocab_size")


@register_stage("cache-teacher", config=CacheTeacherConfig, inputs={"teacher": "teacher", "data": "data"},
                produces="cache", distributed=True)
def run_cache_teacher(config: CacheTeacherConfig) -> CacheTeacherResult:
    """Cache ``config.teacher``'s top-k statistics over ``config.data`` into ``config.output_dir``.

    Checked before the teacher loads: the teacher's files, the data, ``top_k`` against the vocabulary (when the
    teacher's config.json is at hand)."""
    import torch
    from accelerate import PartialState

    from ..data import load_texts
    from ..distill.teacher_cache import TeacherCache, encode_texts, finalize_teacher_cache, write_teacher_cache
    from ..loading import check_model_source, load_causal_lm
    from ..outputs import check_output_dir

    check_output_dir(config.output_dir, overwrite=True, name="output_dir")  # a non-empty dir is resumed
    check_model_source(config.teacher, role="teacher", trust_remote_code=config.trust_remote_code,
                       need_adapter=False)
    vocab = _teacher_vocab_size(config.teacher)
    if vocab is not None and config.top_k > vocab:
        raise ConfigError(f"top_k={config.top_k} is larger than the teacher's vocabulary ({vocab}); choose a smaller "
                          "top_k (64 is the usual setting)")
    texts = load_texts(config.data, text_field=config.text_field)
    state = PartialState(cpu=not torch.cuda.is_available())
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    dtype = names.get(config.teacher_dtype) or (torch.bfloat16 if state.device.type == "cuda" else torch.float32)
    source = None if config.teacher == "default" else config.teacher
    teacher, tokenizer = load_causal_lm(source, dtype=dtype, device=state.device, revision=config.revision,
                                        trust_remote_code=config.trust_remote_code)
    if config.top_k > teacher.get_output_embeddings().weight.shape[0]:
        raise ConfigError(f"top_k={config.top_k} is larger than the teacher's vocabulary "
                          f"({teacher.get_output_embeddings().weight.shape[0]}); choose a smaller top_k")
    input_ids, mask = encode_texts(texts, tokenizer, config.max_length, packing=config.packing,
                                   num_sequences=config.num_sequences)
    write_teacher_cache(teacher, tokenizer, input_ids, config.output_dir, top_k=config.top_k,
                        temperature=config.temperature, attention_mask=mask,
                        kind="sampled" if config.sampled else "topk", logprob_dtype=config.logprob_dtype,
                        shard_size=config.shard_size, batch_size=config.batch_size, teacher_source=config.teacher,
                        seed=config.seed, exact_head=config.exact_head, process_index=state.process_index,
                        num_processes=state.num_processes, finalize=False)
    state.wait_for_everyone()
    if state.is_main_process:
        finalize_teacher_cache(config.output_dir)
    state.wait_for_everyone()
    cache = TeacherCache(config.output_dir, verify=False)
    import json
    from pathlib import Path

    manifest = json.loads((Path(config.output_dir) / "manifest.json").read_text())
    metrics = {"sequences": len(cache), "max_length": cache.settings.max_length, "top_k": cache.settings.top_k,
               "kind": cache.settings.kind, "shards": len(cache.shards), "bytes": manifest.get("bytes"),
               "bytes_per_token": manifest.get("bytes_per_token")}
    return CacheTeacherResult(stage="cache-teacher", output_dir=str(config.output_dir), metrics=metrics)
