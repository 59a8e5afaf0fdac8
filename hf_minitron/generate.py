"""Teacher-generated training data: a model's answers to prompts, sampled in batches, as chat JSONL.

Sequence-level distillation trains the student on the teacher's own inputs and responses; this module makes that
data. :func:`generate_records` is the in-memory core, :func:`run_generation` the resumable, multi-process driver the
``generate-data`` stage (:mod:`hf_minitron.stages.generate_data`) wraps.

Numerics and invariants
    * Prompts go through the tokenizer's chat template (``add_generation_prompt=True``), are left-padded and decoded
      with ``model.generate`` and its KV cache under ``torch.inference_mode``; batches hold prompts of similar length.
    * Sampling (``temperature > 0``) draws each prompt's tokens from its own ``torch.Generator`` seeded with
      ``(seed, prompt index)`` (:class:`PerPromptSampler`), so a prompt's answer does not depend on which batch, rank
      or resumed run produced it (up to the float rounding of different batch shapes). ``temperature == 0`` is greedy.
    * The answer is the new tokens up to (not including) the first end-of-sequence token, decoded without special
      tokens; ``finish_reason`` is ``"stop"`` when that token came, ``"length"`` when ``max_new_tokens`` ran out.

Files (all JSON Lines, UTF-8)
    * part files ``CHECKPOINT_DIR/part-RRRRR.jsonl``, one per rank, appended and flushed after every batch: one
      record per finished prompt, ``{"index", "messages", "prompt_tokens", "new_tokens", "finish_reason"}``. A run
      that stops (killed, interrupted, out of memory) leaves whole records plus at most one torn last line, which the
      next run drops; that run generates exactly the prompts no part file holds, so none is generated twice or lost.
    * ``CHECKPOINT_DIR/settings.json``: the :class:`GenerationSettings` of the run; a run with other settings refuses
      the directory instead of mixing answers.
    * the finished data set ``OUTPUT_DIR/data.jsonl``: ``{"messages": [..., {"role": "user"}, {"role":
      "assistant"}]}`` per prompt, in prompt order (what ``distill`` and TRL's ``SFTTrainer`` read), and
      ``OUTPUT_DIR/manifest.json`` (settings + counts), written together by one atomic directory rename.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from .errors import ConfigError, DataError
from .outputs import write_json

DATA_FILE = "data.jsonl"
MANIFEST_FILE = "manifest.json"
SETTINGS_FILE = "settings.json"
FORMAT = "hf-minitron generate-data v1"
BUILTIN = "builtin"


# --------------------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class GenerationSettings:
    """Everything that decides the generated answers; a part file or data set made with other settings is refused.

    ``prompts_fingerprint`` covers the prompt messages (including a system prompt) and their number; the batch size
    and the number of processes are not settings (they do not change a prompt's answer).
    """

    model: str
    dtype: str
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    use_chat_template: bool
    prompts: str
    num_prompts: int
    prompts_fingerprint: str

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def differences(self, recorded: dict) -> list[str]:
        """``"field: recorded -> this"`` for every setting that differs from a recorded ``to_dict()`` (``prompts``,
        the source's name, is informative only: ``prompts_fingerprint`` decides, so a moved file still matches)."""
        mine = self.to_dict()
        keys = sorted((set(mine) | set(recorded)) - {"prompts"})
        return [f"{k}: {recorded.get(k)!r} -> {mine.get(k)!r}" for k in keys if recorded.get(k) != mine.get(k)]


def check_settings(settings: GenerationSettings, recorded: dict, *, where: str, fix: str) -> None:
    """Refuse ``where`` (a directory written by an earlier run) when its recorded settings differ from ``settings``."""
    diff = settings.differences(recorded)
    if diff:
        raise ConfigError(f"{where} was generated with other settings ({'; '.join(diff)}); mixing answers of "
                          f"different settings is refused: {fix}")


# ---------------------------------------------------------------------------------------------------------- prompts
def prompt_messages(record: dict, *, prompt_field: str = "prompt", row: int = 0, source: str = "prompts",
                    system_prompt: str | None = None) -> list[dict]:
    """The chat messages of one prompt record, ending with the user turn the model answers.

    ``record[prompt_field]`` is a string (one user turn) or a list of ``{"role", "content"}`` messages (cut after
    its last user turn); without ``prompt_field``, Alpaca ``instruction`` (+ ``input``) is used. ``system_prompt``
    is put first unless the messages bring their own system turn.
    """
    value = record.get(prompt_field)
    if value is None and "instruction" in record:
        value = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    if value is None:
        raise DataError(f"{source}: record {row} has no field {prompt_field!r} (fields: {sorted(record)}); set "
                        "prompt_field to the field that holds the prompt")
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{source}: record {row} field {prompt_field!r} is empty; remove the row")
        messages = [{"role": "user", "content": value}]
    elif isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        for j, m in enumerate(value):
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise DataError(f"{source}: record {row} field {prompt_field!r} message {j} needs string 'role' and "
                                f"'content' (has {sorted(m)})")
        users = [j for j, m in enumerate(value) if m["role"] == "user"]
        if not users:
            raise DataError(f"{source}: record {row} field {prompt_field!r} has no user turn to answer")
        messages = [{"role": m["role"], "content": m["content"]} for m in value[: users[-1] + 1]]
    else:
        raise DataError(f"{source}: record {row} field {prompt_field!r} is a {type(value).__name__}; give a string "
                        "or a list of {'role', 'content'} messages")
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages


def load_prompts(source: str = BUILTIN, *, prompt_field: str = "prompt", limit: int | None = None,
                 system_prompt: str | None = None) -> list[list[dict]]:
    """Prompts as message lists, in file order: ``"builtin"`` (the package's set, see :mod:`hf_minitron.prompts`) or
    any source :func:`hf_minitron.data.load_records` reads (a ``.txt`` line is one prompt)."""
    from .data import load_records

    if source == BUILTIN:
        from .prompts import builtin_prompts

        records, shown = builtin_prompts(), "builtin prompts"
    else:
        records, shown = load_records(source, text_field=prompt_field), f"prompts {str(source)!r}"
    if limit is not None:
        records = records[:limit]
    return [prompt_messages(r, prompt_field=prompt_field, row=i, source=shown, system_prompt=system_prompt)
            for i, r in enumerate(records)]


def prompts_fingerprint(prompts: Sequence[list[dict]]) -> str:
    """A short sha256 of the prompt messages (order matters)."""
    from .data import fingerprint

    return fingerprint(len(prompts), list(prompts))


def encode_prompts(tokenizer, prompts: Sequence[list[dict]], *, use_chat_template: bool = True) -> list[list[int]]:
    """Token ids of each prompt: the chat template with the assistant header (``use_chat_template``), or the
    contents joined by blank lines (for base models without a template)."""
    if use_chat_template and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"use_chat_template is set but the tokenizer {tokenizer.name_or_path!r} has no chat "
                          "template; set use_chat_template false to feed the prompt text as it is")
    out = []
    for messages in prompts:
        if use_chat_template:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            text = "\n\n".join(m["content"] for m in messages)
            out.append(tokenizer(text)["input_ids"])
    return out


# ---------------------------------------------------------------------------------------------------------- sampling
def prompt_seed(seed: int, index: int) -> int:
    """The seed of prompt ``index``'s generator (distinct per prompt, stable across runs and machines)."""
    return (seed * 1_000_003 + index) % (2**63)


def nucleus(probs: torch.Tensor, top_p: float, k: int = 256) -> torch.Tensor:
    """``probs`` ``[B, V]`` with every token outside the nucleus zeroed: a token stays when the mass of the tokens
    more likely than it is below ``top_p``. Exact; looks only at the ``k`` most likely tokens of the rows whose
    nucleus lies among them (nearly all), and sorts the whole vocabulary for the others."""
    k = min(k, probs.shape[-1])
    top, order = probs.topk(k, dim=-1)  # [B, k], descending
    inside = (top.sum(-1) >= top_p).tolist()
    out = torch.zeros_like(probs)
    out.scatter_(-1, order, top.masked_fill(top.cumsum(-1) - top >= top_p, 0.0))
    for row in (i for i, ok in enumerate(inside) if not ok):
        sorted_probs, full = probs[row].sort(descending=True)
        out[row] = torch.zeros_like(probs[row]).scatter(
            -1, full, sorted_probs.masked_fill(sorted_probs.cumsum(-1) - sorted_probs >= top_p, 0.0))
    return out


class PerPromptSampler:
    """A ``LogitsProcessor`` that samples every row from its own generator (temperature, then nucleus ``top_p``) and
    returns scores that put all the mass on the drawn token, so ``generate(do_sample=False)`` keeps it.

    Drawing per row makes a prompt's answer independent of its batch neighbours (``generate``'s own sampling draws
    from one global stream, so the answer would change with the batch, the rank and the resume point).
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature, self.top_p = float(temperature), float(top_p)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)  # [B, V]
        if self.top_p < 1.0:
            probs = nucleus(probs, self.top_p)
        probs = probs.cpu()
        drawn = torch.stack([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, drawn.to(scores.device), 0.0)


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ConfigError("the model and its tokenizer define no end-of-sequence token; generation could not stop")
    return ids


def _pad_id(tokenizer, eos_ids: list[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` ``[B, T]`` with every row right-aligned (left padding, mask 0 on the pad)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


class TokenRate:
    """Live tokens/s on a tqdm bar: :meth:`streamer` gives ``generate`` a streamer that counts each row's answer
    tokens step by step (up to its end-of-sequence token); the bar's postfix refreshes at most twice a second."""

    def __init__(self, bar, eos_ids: Sequence[int]):
        self.bar, self.eos_ids = bar, set(eos_ids)
        self.tokens, self.start, self.shown = 0, time.perf_counter(), 0.0

    def streamer(self, rows: int) -> "_RowCounter":
        return _RowCounter(self, rows)

    def add(self, n: int) -> None:
        self.tokens += n
        now = time.perf_counter()
        if now - self.shown >= 0.5:
            self.shown = now
            self.bar.set_postfix(tok_s=f"{self.tokens / max(now - self.start, 1e-9):.1f}")


class _RowCounter:
    """The ``streamer`` protocol of ``generate`` (``put`` the prompt once, then each step's tokens; ``end``)."""

    def __init__(self, rate: TokenRate, rows: int):
        self.rate, self.open, self.prompt_seen = rate, [True] * rows, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        n = 0
        for i, row in enumerate(value.reshape(len(self.open), -1).tolist()):
            for token in row:
                if self.open[i]:
                    n += 1
                    self.open[i] = token not in self.rate.eos_ids
        self.rate.add(n)

    def end(self) -> None:
        pass


def generate_batch(model, prompt_ids: Sequence[Sequence[int]], seeds: Sequence[int], settings: GenerationSettings,
                   *, eos_ids: Sequence[int], pad_id: int, streamer=None) -> list[tuple[list[int], str]]:
    """``(answer token ids, finish_reason)`` per prompt of one left-padded batch (KV cache, inference mode)."""
    from transformers import GenerationConfig, LogitsProcessorList

    device = next(model.parameters()).device
    input_ids, attention_mask = left_pad(prompt_ids, pad_id, device)
    config = GenerationConfig(max_new_tokens=settings.max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=list(eos_ids), pad_token_id=pad_id, use_cache=True)
    processors = LogitsProcessorList(
        [PerPromptSampler(seeds, settings.temperature, settings.top_p)] if settings.do_sample else [])
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                             logits_processor=processors, streamer=streamer)
    results = []
    for row in out[:, input_ids.shape[1]:].tolist():
        stop = next((j for j, t in enumerate(row) if t in eos_ids), None)
        results.append((row, "length") if stop is None else (row[:stop], "stop"))
    return results


def length_batches(indices: Sequence[int], lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """``indices`` in batches of similar prompt length (longest first, so an out-of-memory shows at once)."""
    ordered = sorted(indices, key=lambda i: (-lengths[i], i))
    return [ordered[k:k + batch_size] for k in range(0, len(ordered), batch_size)]


def generate_records(model, tokenizer, prompts: Sequence[list[dict]], settings: GenerationSettings, *,
                     indices: Sequence[int] | None = None, prompt_ids: Sequence[list[int]] | None = None,
                     batch_size: int = 16, progress: bool = False) -> Iterator[list[dict]]:
    """Yield, batch by batch, one record per prompt of ``indices`` (default: all) with the model's answer:
    ``{"index", "messages", "prompt_tokens", "new_tokens", "finish_reason"}`` (in batch order, not prompt order)."""
    from tqdm.auto import tqdm

    model.eval()
    if prompt_ids is None:
        prompt_ids = encode_prompts(tokenizer, prompts, use_chat_template=settings.use_chat_template)
    indices = list(range(len(prompts))) if indices is None else list(indices)
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = _pad_id(tokenizer, eos_ids)
    bar = tqdm(total=len(indices), unit="prompt", desc="generate-data", disable=not progress)
    rate = TokenRate(bar, eos_ids) if progress else None
    try:
        for batch in length_batches(indices, [len(p) for p in prompt_ids], batch_size):
            answers = generate_batch(model, [prompt_ids[i] for i in batch],
                                     [prompt_seed(settings.seed, i) for i in batch], settings, eos_ids=eos_ids,
                                     pad_id=pad_id, streamer=rate.streamer(len(batch)) if rate else None)
            records = []
            for i, (ids, finish) in zip(batch, answers):
                text = tokenizer.decode(ids, skip_special_tokens=True).strip()
                records.append({"index": i, "messages": [*prompts[i], {"role": "assistant", "content": text}],
                                "prompt_tokens": len(prompt_ids[i]), "new_tokens": len(ids),
                                "finish_reason": finish})
            bar.update(len(batch))
            yield records
    finally:
        bar.close()


# ------------------------------------------------------------------------------------------------------- part files
def part_file(checkpoint_dir: str | os.PathLike, rank: int) -> Path:
    return Path(checkpoint_dir) / f"part-{rank:05d}.jsonl"


def read_part(path: Path, *, repair: bool = False) -> list[dict]:
    """Records of one part file. A torn last line (a run killed mid-write) is dropped, and cut off the file when
    ``repair`` (the owner is about to append); a damaged line before it is a :class:`DataError`."""
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    torn = lines.pop() if lines else b""  # whatever follows the last newline: empty unless a write was torn
    records = []
    for lineno, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(f"{path}: line {lineno} is damaged; delete the checkpoint directory (or set overwrite) "
                            "to generate again") from None
    if torn and repair:
        with open(path, "r+b") as f:
            f.truncate(len(raw) - len(torn))
    return records


def read_parts(checkpoint_dir: str | os.PathLike) -> dict[int, dict]:
    """``{prompt index: record}`` over every part file in ``checkpoint_dir`` (the first record of an index wins)."""
    done: dict[int, dict] = {}
    for path in sorted(Path(checkpoint_dir).glob("part-*.jsonl")):
        for rec in read_part(path):
            done.setdefault(int(rec["index"]), rec)
    return done


def append_records(path: Path, records: Sequence[dict]) -> None:
    """Append whole lines and force them to disk (a crash afterwards loses nothing already reported)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------------------------------------- driver
@dataclass
class Processes:
    """This process's place among the data-parallel ranks, and a barrier (no-ops for a single process)."""

    rank: int = 0
    world_size: int = 1
    barrier: Callable[[], None] = lambda: None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def run_generation(model, tokenizer, prompts: Sequence[list[dict]], settings: GenerationSettings, *,
                   checkpoint_dir: str | os.PathLike, batch_size: int = 16, processes: Processes | None = None,
                   progress: bool = False) -> dict:
    """Generate every prompt no part file in ``checkpoint_dir`` holds yet; each rank takes every ``world_size``-th of
    them (by length) into its own part file. Returns this rank's ``{"prompts", "new_tokens", "seconds"}``.

    ``checkpoint_dir`` must already hold ``settings.json`` for ``settings`` (:func:`start_checkpoint_dir`).
    """
    processes = processes or Processes()
    done = read_parts(checkpoint_dir)
    own = part_file(checkpoint_dir, processes.rank)
    if own.exists():
        read_part(own, repair=True)
    processes.barrier()  # every rank has read the same finished set before any rank appends
    prompt_ids = encode_prompts(tokenizer, prompts, use_chat_template=settings.use_chat_template)
    todo = [i for i in range(len(prompts)) if i not in done]
    todo = sorted(todo, key=lambda i: (-len(prompt_ids[i]), i))[processes.rank::processes.world_size]
    stats = {"prompts": 0, "new_tokens": 0, "seconds": 0.0}
    start = time.perf_counter()
    for records in generate_records(model, tokenizer, prompts, settings, indices=todo, prompt_ids=prompt_ids,
                                    batch_size=batch_size, progress=progress and processes.is_main):
        append_records(own, records)
        stats["prompts"] += len(records)
        stats["new_tokens"] += sum(r["new_tokens"] for r in records)
    stats["seconds"] = time.perf_counter() - start
    return stats


def start_checkpoint_dir(checkpoint_dir: str | os.PathLike, settings: GenerationSettings, *,
                         overwrite: bool = False) -> bool:
    """Make ``checkpoint_dir`` ready for ``settings``; ``True`` when it holds answers of an earlier run to resume.

    A directory of other settings is refused (:class:`ConfigError`) unless ``overwrite``, which empties it."""
    import shutil

    where = Path(checkpoint_dir)
    settings_path = where / SETTINGS_FILE
    if where.exists() and not where.is_dir():
        raise ConfigError(f"checkpoint_dir {where} is a file; give a directory for the unfinished run's part files")
    if settings_path.is_file():
        recorded = json.loads(settings_path.read_text(encoding="utf-8"))
        if settings.differences(recorded) and overwrite:
            shutil.rmtree(where)
        else:
            check_settings(settings, recorded, where=f"checkpoint_dir {where}",
                           fix="choose another output_dir/checkpoint_dir or set overwrite to start again")
            return any(where.glob("part-*.jsonl"))
    elif where.is_dir() and any(where.iterdir()):
        if not overwrite:
            raise ConfigError(f"checkpoint_dir {where} is not empty and holds no {SETTINGS_FILE}; choose another "
                              "checkpoint_dir or set overwrite")
        shutil.rmtree(where)
    where.mkdir(parents=True, exist_ok=True)
    write_json(settings_path, settings.to_dict())
    return False


def merge_parts(checkpoint_dir: str | os.PathLike, num_prompts: int) -> list[dict]:
    """All part records in prompt order; a missing prompt is an error (nothing is silently lost)."""
    done = read_parts(checkpoint_dir)
    missing = [i for i in range(num_prompts) if i not in done]
    if missing:
        raise RuntimeError(f"{len(missing)} prompts have no answer in {checkpoint_dir} (first: {missing[:5]}); run "
                           "the stage again to generate them")
    return [done[i] for i in range(num_prompts)]


def write_dataset(records: Sequence[dict], output_dir: str | os.PathLike, settings: GenerationSettings, *,
                  extra: dict | None = None, overwrite: bool = False) -> dict:
    """Write ``data.jsonl`` (``{"messages"}`` per record, in the given order) and ``manifest.json`` atomically;
    return the manifest."""
    from .outputs import atomic_output_dir

    finish: dict[str, int] = {}
    for r in records:
        finish[r["finish_reason"]] = finish.get(r["finish_reason"], 0) + 1
    manifest = {
        "format": FORMAT, "data_file": DATA_FILE, "records": len(records), "settings": settings.to_dict(),
        "prompt_tokens": sum(r["prompt_tokens"] for r in records),
        "new_tokens": sum(r["new_tokens"] for r in records),
        "finish_reasons": dict(sorted(finish.items())),
        "empty_answers": sum(1 for r in records if not r["messages"][-1]["content"]),
        **(extra or {}),
    }
    with atomic_output_dir(output_dir, overwrite=overwrite, name="output_dir", fix="set overwrite (--overwrite)") as tmp:
        with open(tmp / DATA_FILE, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps({"messages": r["messages"]}, ensure_ascii=False) + "\n")
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def read_manifest(output_dir: str | os.PathLike) -> dict | None:
    """The manifest of a finished data set in ``output_dir``, or ``None`` when there is none."""
    path = Path(output_dir) / MANIFEST_FILE
    if not (path.is_file() and (Path(output_dir) / DATA_FILE).is_file()):
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return manifest if manifest.get("format") == FORMAT else None


__all__ = ["BUILTIN", "DATA_FILE", "GenerationSettings", "MANIFEST_FILE", "PerPromptSampler", "Processes",
           "SETTINGS_FILE", "TokenRate", "append_records", "check_settings", "encode_prompts", "generate_batch",
           "generate_records", "left_pad", "length_batches", "load_prompts", "merge_parts", "nucleus", "prompt_messages",
           "prompt_seed", "prompts_fingerprint", "read_manifest", "read_part", "read_parts", "run_generation",
           "start_checkpoint_dir", "write_dataset"]
