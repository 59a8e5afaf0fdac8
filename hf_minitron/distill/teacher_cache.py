"""Offline teacher cache: the teacher's top-k next-token log-probs, computed once, stored in shards with a manifest.

Layout of a cache directory::

    settings.json            what the cache was built with (teacher id + revision, tokenizer hash, k, temperature,
                             max length, packing, data fingerprint, ...); written first, checked on resume
    shard-00000.safetensors  one shard = ``shard_size`` sequences: input_ids int32 [n, L], (attention_mask int8 [n, L]
                             when not packed), topk_ids int32 [n, L, k], topk_logprobs fp16/bf16 [n, L, k],
                             tail_logmass fp32 [n, L] (log of the teacher's mass outside the stored ids)
    shard-00000.json         sidecar written after the shard: sequences, bytes, sha256, writing process
    manifest.json            settings + every shard's sidecar; written once all shards exist (the cache is complete)

Position ``t`` of a sequence holds the teacher's distribution of token ``t + 1`` (the logits at ``t``), aligned with the
student's logits. Each process of a multi-process run writes the shards ``s`` with ``s % num_processes ==
process_index``; a shard is written to a temporary file and renamed, then its sidecar, so an interrupted run resumes
without redoing finished shards. Readers refuse a cache whose settings do not match theirs and detect a truncated or
corrupt shard (size and sha256 against the manifest).

Kinds: ``topk`` (the top-k ids, their log-probs and the tail mass; for ``tail="bucket"`` / ``"renormalize"``) and
``sampled`` (for ``tail="sampled"``): the teacher's ``exact_head`` most likely ids with their exact log-probs, then
``s = k - exact_head`` draws from the teacher's distribution over the remaining ids, merged into distinct ids with
log-weights ``log(p_rest * count / s)`` and padded with unused ids of weight 0. Every weight has expectation ``p_id``
(the draws are unbiased) and the weights sum to 1; ``exact_head=0`` is plain random-sampling KD (k draws from the whole
distribution). Sampling only the remainder is stratified sampling: the head costs no variance, so for the same k the
gradient noise is far lower (``p_rest^2 / s`` instead of about ``(1 - sum p^2) / k`` per token).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..errors import MinitronError
from ..outputs import write_json

FORMAT_VERSION = 1
SETTINGS_FILE = "settings.json"
MANIFEST_FILE = "manifest.json"
KINDS = ("topk", "sampled")
LOGPROB_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
TEACHER_KEYS = ("teacher_topk_ids", "teacher_topk_logprobs", "teacher_tail_logmass")


class TeacherCacheError(MinitronError, ValueError):
    """A cache that cannot be used: incomplete, corrupt, or built with other settings than asked for."""


@dataclass
class CacheSettings:
    """What a cache was built with. Two caches (or a cache and a training run) agree when these agree."""

    teacher: str
    teacher_revision: Optional[str]
    teacher_config_hash: str
    tokenizer_hash: str
    vocab_size: int
    top_k: int
    temperature: float
    max_length: int
    packing: bool
    data_fingerprint: str
    num_sequences: int
    shard_size: int
    kind: str = "topk"
    logprob_dtype: str = "float16"
    seed: int = 0
    exact_head: int = 0
    format_version: int = FORMAT_VERSION

    @property
    def num_shards(self) -> int:
        return -(-self.num_sequences // self.shard_size)

    def shard_range(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_size
        return start, min(self.num_sequences, start + self.shard_size)


# ----------------------------------------------------------------------------------------------------------------------
# fingerprints and data
# ----------------------------------------------------------------------------------------------------------------------
def tokenizer_hash(tokenizer) -> str:
    """sha256 (16 hex) of the token -> id map and the special tokens."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    h = hashlib.sha256()
    h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
    h.update(json.dumps([str(tok.bos_token), str(tok.eos_token), str(tok.pad_token)]).encode())
    return h.hexdigest()[:16]


def teacher_identity(model, source: Optional[str] = None) -> tuple[str, Optional[str], str]:
    """``(teacher id, revision, config hash)``: the Hub id or path, the Hub commit when known, a hash of its config."""
    from ..data import fingerprint

    config = model.config
    name = source or getattr(config, "_name_or_path", "") or type(model).__name__
    revision = getattr(config, "_commit_hash", None)
    cfg = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "_commit_hash", "transformers_version")}
    return str(name), revision, fingerprint(cfg)


def data_fingerprint(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> str:
    from ..data import fingerprint

    parts = [input_ids.to(torch.int64)]
    if attention_mask is not None:
        parts.append(attention_mask.to(torch.int64))
    return fingerprint(*parts)


def encode_texts(texts: Sequence[str], tokenizer, max_length: int, *, packing: bool = True,
                 num_sequences: Optional[int] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(input_ids [n, L], attention_mask [n, L] or None)``: packed EOS-joined blocks of ``max_length`` tokens, or one
    document per row truncated to ``max_length`` and right-padded (with the mask)."""
    if packing:
        from ..data import token_blocks

        return token_blocks(texts, tokenizer, max_length, num_sequences), None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_length] for t in texts[:num_sequences]]
    rows = [r for r in rows if len(r) >= 2]
    if not rows:
        raise ValueError("no text gives at least 2 tokens")
    ids = torch.full((len(rows), max_length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), max_length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


# ----------------------------------------------------------------------------------------------------------------------
# teacher statistics of one batch
# ----------------------------------------------------------------------------------------------------------------------
def merge_draws(draws: torch.Tensor, fill_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct ids and log-weights from ``k`` draws per row: ``(ids [R, k], log(count / k) [R, k])``.

    Repeated draws merge into one id; the freed slots get ids from ``fill_ids [R, k]`` (distinct per row, e.g. the
    teacher's top-k) that were not drawn, with weight 0 (log-weight ``-inf``).
    """
    k = draws.shape[-1]
    s, _ = draws.sort(dim=-1)
    first = torch.ones_like(s, dtype=torch.bool)
    first[:, 1:] = s[:, 1:] != s[:, :-1]
    counts = (s[:, :, None] == s[:, None, :]).sum(-1)
    logw = torch.where(first, (counts.double() / k).log(), torch.full_like(counts, float("-inf"), dtype=torch.float64))
    dup = ~first
    drawn = (fill_ids[:, :, None] == s[:, None, :]).any(-1)
    free_first = fill_ids.gather(1, torch.argsort(drawn.to(torch.int8), dim=-1, stable=True))
    rank = (dup.cumsum(-1) - 1).clamp(min=0)
    ids = torch.where(dup, free_first.gather(1, rank), s)
    return ids, logw


@torch.no_grad()
def teacher_topk(logits: torch.Tensor, k: int, temperature: float = 1.0, *, kind: str = "topk", exact_head: int = 0,
                 generator: Optional[torch.Generator] = None):
    """``(ids int32 [R, k], log-weights fp32 [R, k], tail log-mass fp32 [R])`` of teacher logits ``[R, V]``, in fp32.

    ``kind="topk"``: the top-k ids, their log-probs and the log of the mass outside them.
    ``kind="sampled"``: the top ``exact_head`` ids with their log-probs, then ``k - exact_head`` draws from the teacher
    renormalised over the other ids, merged by :func:`merge_draws` and weighted by that remaining mass (tail ``-inf``:
    the weights sum to 1 and each has expectation ``p_id``).
    """
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    vals, ids = logp.topk(k, dim=-1)
    if kind == "sampled":
        h = exact_head
        rest = logp.scatter(-1, ids[:, :h], float("-inf"))                  # [R, V] teacher outside the head
        log_rest = torch.logsumexp(rest, dim=-1, keepdim=True)              # [R, 1]
        fill = ids[:, h:]                                                   # distinct, outside the head
        probs = (rest - log_rest).exp()
        empty = ~torch.isfinite(log_rest.squeeze(-1))                       # no mass left: any ids, weight 0
        probs[empty] = 0.0
        probs[empty] = probs[empty].scatter(-1, fill[empty], 1.0)
        draws = torch.multinomial(probs, k - h, replacement=True, generator=generator)
        rest_ids, rest_logw = merge_draws(draws, fill)
        logw = torch.cat([vals[:, :h].double(), rest_logw + log_rest.double()], dim=-1)
        ids = torch.cat([ids[:, :h], rest_ids], dim=-1)
        return ids.to(torch.int32), logw.float(), torch.full(ids.shape[:1], float("-inf"))
    tail = torch.logsumexp(logp.scatter_(-1, ids, float("-inf")), dim=-1)
    return ids.to(torch.int32), vals, tail


# ----------------------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path: Path, obj) -> None:
    write_json(path, obj, indent=1, sort_keys=True)


def _shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.safetensors"


def _check_settings_match(found: dict, wanted: dict, where: str) -> None:
    for key, value in wanted.items():
        if key in found and found[key] != value:
            raise TeacherCacheError(
                f"{where} was started with {key}={found[key]!r}, this run asks for {key}={value!r}. "
                "Resume with the same settings, or write the new cache to another --out directory.")


def _shard_done(out: Path, shard: int) -> Optional[dict]:
    """The sidecar of a finished shard whose file is intact, else ``None``."""
    meta_path = out / _shard_name(shard).replace(".safetensors", ".json")
    path = out / _shard_name(shard)
    if not (meta_path.is_file() and path.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    if path.stat().st_size != meta["bytes"] or _sha256(path) != meta["sha256"]:
        return None
    return meta


def write_teacher_cache(teacher, tokenizer, input_ids: torch.Tensor, out_dir, *, top_k: int = 64,
                        temperature: float = 1.0, attention_mask: Optional[torch.Tensor] = None,
                        kind: str = "topk", logprob_dtype: str = "float16", shard_size: int = 64,
                        batch_size: int = 4, teacher_source: Optional[str] = None, seed: int = 0,
                        exact_head: Optional[int] = None,
                        process_index: int = 0, num_processes: int = 1, finalize: bool = True,
                        on_shard: Optional[Callable[[int], None]] = None) -> Path:
    """Run ``teacher`` over ``input_ids [n, L]`` and store its top-k statistics in ``out_dir`` (see module docstring).

    Shards already finished (intact file + sidecar) are skipped, so calling it again after an interruption resumes.
    In a multi-process run, call it in every process with its ``process_index`` and ``finalize=False``, wait for all,
    then call :func:`finalize_teacher_cache` once. ``on_shard(shard)`` is called after each shard written.
    ``exact_head`` (``kind="sampled"`` only): ids kept exactly before sampling the rest, in ``[0, top_k)``; default
    ``top_k // 2``. Returns ``out_dir``.
    """
    from safetensors.torch import save_file

    vocab = int(teacher.get_output_embeddings().weight.shape[0])
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} must be [sequences, max_length >= 2]")
    if not 1 <= top_k <= vocab:
        raise ValueError(f"top_k={top_k}; must be in [1, vocab size {vocab}]")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature}; must be > 0")
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; choose one of {KINDS}")
    if kind == "topk" and exact_head not in (None, 0):
        raise ValueError(f"exact_head={exact_head} applies to kind='sampled' only; leave it unset for kind='topk'")
    exact_head = 0 if kind == "topk" else (top_k // 2 if exact_head is None else int(exact_head))
    if not 0 <= exact_head < top_k:
        raise ValueError(f"exact_head={exact_head}; must be in [0, top_k={top_k}) so that at least one id is sampled")
    if logprob_dtype not in LOGPROB_DTYPES:
        raise ValueError(f"logprob_dtype={logprob_dtype!r}; choose one of {sorted(LOGPROB_DTYPES)}")
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size={shard_size}, batch_size={batch_size}; both must be >= 1")
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process_index={process_index} must be in [0, num_processes={num_processes})")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError("attention_mask must have the shape of input_ids")
    if int(input_ids.max()) >= vocab:
        raise ValueError(f"input_ids hold token {int(input_ids.max())}, outside the teacher's vocabulary ({vocab})")

    name, revision, config_hash = teacher_identity(teacher, teacher_source)
    settings = CacheSettings(
        teacher=name, teacher_revision=revision, teacher_config_hash=config_hash,
        tokenizer_hash=tokenizer_hash(tokenizer), vocab_size=vocab, top_k=int(top_k), temperature=float(temperature),
        max_length=int(input_ids.shape[1]), packing=attention_mask is None,
        data_fingerprint=data_fingerprint(input_ids, attention_mask), num_sequences=int(input_ids.shape[0]),
        shard_size=int(shard_size), kind=kind, logprob_dtype=logprob_dtype, seed=int(seed),
        exact_head=exact_head)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / SETTINGS_FILE
    if settings_path.is_file():
        _check_settings_match(json.loads(settings_path.read_text()), asdict(settings), f"the cache in {out}")
    elif any(out.iterdir()) and not (out / MANIFEST_FILE).exists():
        leftovers = [p.name for p in out.iterdir() if not p.name.startswith(".")]
        if leftovers:
            raise TeacherCacheError(f"{out} is not empty and holds no cache settings ({leftovers[:3]}); "
                                    "choose an empty or new --out directory")
    _write_json(settings_path, asdict(settings))

    device = next(teacher.parameters()).device
    teacher.eval()
    store_dtype = LOGPROB_DTYPES[logprob_dtype]
    for shard in range(process_index, settings.num_shards, num_processes):
        if _shard_done(out, shard) is not None:
            continue
        lo, hi = settings.shard_range(shard)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + shard)
        ids_out, lp_out, tail_out = [], [], []
        for b0 in range(lo, hi, batch_size):
            ids_b = input_ids[b0: min(hi, b0 + batch_size)].to(device)
            mask_b = None if attention_mask is None else attention_mask[b0: b0 + ids_b.shape[0]].to(device)
            with torch.no_grad():
                logits = teacher(input_ids=ids_b, attention_mask=mask_b, use_cache=False).logits
            for row in logits:  # one sequence at a time: [L, V] fp32 temporaries only
                i, lp, t = teacher_topk(row, top_k, temperature, kind=kind, exact_head=exact_head,
                                         generator=gen)
                ids_out.append(i.cpu())
                lp_out.append(lp.to(store_dtype).cpu())
                tail_out.append(t.float().cpu())
        tensors = {"input_ids": input_ids[lo:hi].to(torch.int32).contiguous(),
                   "topk_ids": torch.stack(ids_out).contiguous(), "topk_logprobs": torch.stack(lp_out).contiguous(),
                   "tail_logmass": torch.stack(tail_out).contiguous()}
        if attention_mask is not None:
            tensors["attention_mask"] = attention_mask[lo:hi].to(torch.int8).contiguous()
        path = out / _shard_name(shard)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file(tensors, str(tmp), metadata={"shard": str(shard), "format_version": str(FORMAT_VERSION)})
        os.replace(tmp, path)
        _write_json(path.with_suffix(".json"), {"shard": shard, "file": path.name, "sequences": [lo, hi],
                                                "bytes": path.stat().st_size, "sha256": _sha256(path),
                                                "process_index": process_index})
        if on_shard is not None:
            on_shard(shard)
    if finalize:
        finalize_teacher_cache(out)
    return out


def finalize_teacher_cache(out_dir) -> dict:
    """Collect the shards' sidecars into ``manifest.json`` (refuses while shards are missing). Returns the manifest."""
    out = Path(out_dir)
    settings_path = out / SETTINGS_FILE
    if not settings_path.is_file():
        raise TeacherCacheError(f"{out} holds no {SETTINGS_FILE}: it is not a teacher cache")
    settings = CacheSettings(**json.loads(settings_path.read_text()))
    shards, missing = [], []
    for shard in range(settings.num_shards):
        meta_path = out / _shard_name(shard).replace(".safetensors", ".json")
        if not meta_path.is_file() or not (out / _shard_name(shard)).is_file():
            missing.append(shard)
        else:
            shards.append(json.loads(meta_path.read_text()))
    if missing:
        raise TeacherCacheError(f"{out} misses {len(missing)} of {settings.num_shards} shards (e.g. {missing[:5]}); "
                                "run cache-teacher again with the same arguments to finish it")
    tokens = settings.num_sequences * settings.max_length
    manifest = {"settings": asdict(settings), "shards": shards, "tokens": tokens,
                "bytes": sum(s["bytes"] for s in shards),
                "bytes_per_token": round(sum(s["bytes"] for s in shards) / tokens, 2)}
    _write_json(out / MANIFEST_FILE, manifest)
    return manifest


# ----------------------------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------------------------
TAIL_KINDS = {"bucket": "topk", "renormalize": "topk", "sampled": "sampled"}


class TeacherCache:
    """A finished cache: the manifest, shard verification, compatibility checks, and rows by sequence index.

    ``cache[i]`` is a dict of tensors for sequence ``i``: ``input_ids [L]`` (int64), ``attention_mask [L]``,
    ``teacher_topk_ids [L, k]`` (int32), ``teacher_topk_logprobs [L, k]`` (fp16/bf16), ``teacher_tail_logmass [L]``.
    """

    def __init__(self, path, *, verify: bool = True):
        self.path = Path(path)
        mpath = self.path / MANIFEST_FILE
        if not mpath.is_file():
            hint = ("it is unfinished: run cache-teacher again with the same arguments to resume"
                    if (self.path / SETTINGS_FILE).is_file() else "build one with `hf-minitron cache-teacher`")
            raise TeacherCacheError(f"{self.path} has no {MANIFEST_FILE}: {hint}")
        self.manifest = json.loads(mpath.read_text())
        self.settings = CacheSettings(**self.manifest["settings"])
        if self.settings.format_version != FORMAT_VERSION:
            raise TeacherCacheError(f"{self.path} has cache format {self.settings.format_version}; this version reads "
                                    f"{FORMAT_VERSION}: rebuild it with cache-teacher")
        self.shards = sorted(self.manifest["shards"], key=lambda s: s["shard"])
        self.verify(full=verify)
        self._open = {}

    def verify(self, *, full: bool = True) -> None:
        """Every shard present with the manifest's size (and, when ``full``, sha256); else a clear error."""
        for meta in self.shards:
            path = self.path / meta["file"]
            fix = f"delete {path.name} and its .json, then rerun cache-teacher with the same arguments to rebuild it"
            if not path.is_file():
                raise TeacherCacheError(f"teacher cache shard {path} is missing; {fix}")
            size = path.stat().st_size
            if size != meta["bytes"]:
                raise TeacherCacheError(f"teacher cache shard {path} is truncated or altered ({size} bytes, the "
                                        f"manifest says {meta['bytes']}); {fix}")
            if full and _sha256(path) != meta["sha256"]:
                raise TeacherCacheError(f"teacher cache shard {path} is corrupt (sha256 differs from the manifest); "
                                        f"{fix}")

    # --- compatibility -----------------------------------------------------------------------------------------------
    def check_compatible(self, *, tokenizer=None, max_length: Optional[int] = None, packing: Optional[bool] = None,
                         temperature: Optional[float] = None, tail: Optional[str] = None,
                         vocab_size: Optional[int] = None, data_fingerprint: Optional[str] = None,
                         top_k: Optional[int] = None) -> None:
        """Refuse (``TeacherCacheError`` naming the field, both values and the fix) a cache built otherwise."""
        s = self.settings
        rebuild = "rebuild the cache with `hf-minitron cache-teacher` for these settings, or use matching ones"

        def refuse(field, cached, asked, fix=rebuild):
            raise TeacherCacheError(f"teacher cache {self.path} was built with {field}={cached!r}, the run asks for "
                                    f"{field}={asked!r}: {fix}")

        if tokenizer is not None and tokenizer_hash(tokenizer) != s.tokenizer_hash:
            refuse("tokenizer_hash", s.tokenizer_hash, tokenizer_hash(tokenizer),
                   "the student's tokenizer differs from the one the cache was built with (ids would not line up); "
                   "use the teacher's tokenizer or rebuild the cache")
        if vocab_size is not None and vocab_size != s.vocab_size:
            refuse("vocab_size", s.vocab_size, vocab_size)
        if max_length is not None and max_length != s.max_length:
            refuse("max_length", s.max_length, max_length, f"set max_length={s.max_length} or rebuild the cache")
        if packing is not None and bool(packing) != s.packing:
            refuse("packing", s.packing, bool(packing), f"set packing={s.packing} or rebuild the cache")
        if top_k is not None and top_k != s.top_k:
            refuse("top_k", s.top_k, top_k)
        if tail is not None:
            if tail not in TAIL_KINDS:
                raise ValueError(f"tail={tail!r}; choose one of {sorted(TAIL_KINDS)}")
            if TAIL_KINDS[tail] != s.kind:
                refuse("kind", s.kind, TAIL_KINDS[tail],
                       f"tail={tail!r} needs a {TAIL_KINDS[tail]!r} cache (cache-teacher "
                       f"{'--sampled' if tail == 'sampled' else 'without --sampled'})")
        if temperature is not None and float(temperature) != s.temperature and tail != "renormalize":
            refuse("temperature", s.temperature, float(temperature),
                   f"set temperature={s.temperature}, rebuild the cache at temperature {temperature}, or use "
                   "tail='renormalize' (exact under a temperature change)")
        if data_fingerprint is not None and data_fingerprint != s.data_fingerprint:
            refuse("data_fingerprint", s.data_fingerprint, data_fingerprint,
                   "the data gives other token blocks than the cache holds; train from the cache alone or rebuild it")

    # --- rows -------------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.settings.num_sequences

    @property
    def bytes_per_token(self) -> float:
        return float(self.manifest["bytes_per_token"])

    def _shard(self, shard: int):
        handle = self._open.get(shard)
        if handle is None:
            from safetensors import safe_open

            handle = safe_open(str(self.path / self.shards[shard]["file"]), framework="pt")
            self._open[shard] = handle
        return handle

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"sequence {index} is outside the cache's {len(self)} sequences")
        shard, row = divmod(index, self.settings.shard_size)
        f = self._shard(shard)
        get = lambda name: f.get_slice(name)[row]  # noqa: E731
        ids = get("input_ids").to(torch.long)
        has_mask = "attention_mask" in f.keys()
        return {
            "input_ids": ids,
            "attention_mask": get("attention_mask").to(torch.long) if has_mask else torch.ones_like(ids),
            "teacher_topk_ids": get("topk_ids"),
            "teacher_topk_logprobs": get("topk_logprobs"),
            "teacher_tail_logmass": get("tail_logmass"),
        }

    def __getstate__(self):  # picklable for DataLoader workers: file handles reopen lazily
        state = dict(self.__dict__)
        state["_open"] = {}
        return state

    def input_ids(self) -> torch.Tensor:
        """All sequences' token ids ``[n, L]`` (int64)."""
        return torch.stack([self[i]["input_ids"] for i in range(len(self))])


class TeacherCacheCollator:
    """Batches rows of a :class:`TeacherCache` by ``cache_index`` (the only column a Trainer dataset needs): model
    inputs, ``labels`` (``-100`` at padding) and the teacher tensors under :data:`TEACHER_KEYS`."""

    def __init__(self, cache: TeacherCache):
        self.cache = cache

    def __call__(self, features: list) -> dict:
        rows = [self.cache[int(f["cache_index"] if isinstance(f, dict) else f)] for f in features]
        batch = {key: torch.stack([r[key] for r in rows]) for key in rows[0]}
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return batch


def cache_index_dataset(cache: TeacherCache):
    """A ``datasets.Dataset`` of ``input_ids`` + ``cache_index`` rows for Trainer (the collator loads the rest)."""
    import datasets

    return datasets.Dataset.from_dict({"input_ids": cache.input_ids().tolist(),
                                       "cache_index": list(range(len(cache)))})


__all__ = [
    "TEACHER_KEYS", "CacheSettings", "TeacherCache", "TeacherCacheCollator", "TeacherCacheError",
    "cache_index_dataset", "encode_texts", "finalize_teacher_cache", "merge_draws", "teacher_topk", "tokenizer_hash",
    "write_teacher_cache",
]
