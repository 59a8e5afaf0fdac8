"""Teachers larger than memory: layer-streamed importance scoring and shard-streamed pruning of a safetensors
checkpoint (a local ``save_pretrained`` directory or a Hub id), never holding the whole model.

- :func:`estimate_importance_streamed` runs the calibration batches through the embeddings, then through one decoder
  layer at a time: only that layer's tensors are read from the shards (``safetensors.safe_open``, memory-mapped) onto
  the device, every batch passes through it with the scoring hooks of :func:`hf_minitron.importance.estimate_importance`
  attached, and the layer goes back to the meta device. The hidden states of all calibration tokens live between
  layers in host memory when they fit (``hidden_states="auto"``: at most half of what is available), else in one
  memory-mapped temporary file whose size is checked against the free disk space before any work. Rotary position
  embeddings and attention masks come from the family's own ``*Model.forward``, run on a weightless copy of the model
  (parameters on the meta device, buffers real) that stops at the layer being scored, so every family gets exactly
  the arguments its decoder gives its layers. The scores equal the in-memory path's (same dtype, same batches: the
  same layer modules run on the same inputs). The LM-loss depth criteria (``lm_loss``, ``block``) need the whole
  decoder per removed layer and are refused here; Block Influence comes from the scoring pass.
- :func:`prune_checkpoint` reads one source tensor at a time, slices it with the rule of the in-memory path
  (:func:`hf_minitron.pruning.apply_rule`), and writes the shards ``save_pretrained`` would write (the same split,
  names, index and ``config.json``) through :func:`hf_minitron.outputs.atomic_output_dir`; every written shard is
  re-read tensor by tensor (key set, shapes, dtype, SHA-256 of the bytes) before the rename. Peak memory is about one
  shard (``max_shard_size``, the write buffer) plus the largest source tensor.

Refused before any work, with the path and the fix: a source that is not a safetensors checkpoint (``.bin`` weights,
a ``.gguf`` file), an index naming a shard that is missing, a tensor that is absent or whose shape disagrees with
``config.json``, too little disk for the hidden-state file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import nn

from .arch import get_adapter
from .errors import ConfigError, DataError
from .loading import ModelSourceError, _dtype, resolve_source

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
#: Files besides the weights and config that a pruned checkpoint takes over from its source when no tokenizer is given.
CARRIED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                 "tokenizer.model", "vocab.json", "merges.txt", "spiece.model", "chat_template.jinja",
                 "chat_template.json")
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
GIB = float(1 << 30)
#: Large 2-D tensors are read this many bytes of rows at a time (the embedding rows the calibration tokens use; the
#: pruned embedding / LM head, filled block by block).
READ_BLOCK_BYTES = 64 << 20


# --- reading shards ------------------------------------------------------------------------------------------------
class ShardedCheckpoint:
    """The safetensors shards of one checkpoint directory, read one tensor (or a few rows) at a time.

    ``weight_map``: tensor key -> shard file name (from ``model.safetensors.index.json``, or every key of a single
    ``model.safetensors``). Shards are opened lazily with ``safe_open`` (memory-mapped) and stay open until
    :meth:`close`."""

    def __init__(self, path: Path, weight_map: dict[str, str]):
        self.path = path
        self.weight_map = weight_map
        self._handles: dict[str, object] = {}
        self._headers: dict[str, tuple[int, dict]] = {}

    @classmethod
    def open(cls, source, *, role: str = "model", revision: str | None = None) -> "ShardedCheckpoint":
        """Resolve ``source`` (a directory or a Hub id) and check its safetensors layout; no tensor is read."""
        path = _checkpoint_dir(source, role=role, revision=revision)
        index = path / SAFE_INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as err:
                raise DataError(f"{index} is not a safetensors index ({err!r}); the checkpoint is damaged: save it "
                                "again (model.save_pretrained(dir))") from None
            missing = sorted({f for f in weight_map.values() if not (path / f).is_file()})
            if missing:
                raise DataError(f"{index} names {len(missing)} shard(s) that are missing from {path}: "
                                f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; download or copy the "
                                "complete checkpoint")
            return cls(path, dict(weight_map))
        single = path / SAFE_WEIGHTS
        if single.is_file():
            from safetensors import safe_open

            with safe_open(str(single), framework="pt") as f:
                return cls(path, {k: SAFE_WEIGHTS for k in f.keys()})
        others = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".gguf", ".safetensors"))
        raise ModelSourceError(
            f"{role}={str(source)!r} holds no safetensors checkpoint ({SAFE_WEIGHTS} or {SAFE_INDEX})"
            + (f"; found {', '.join(others[:4])}" if others else "")
            + ": streaming reads safetensors only; convert it once with "
              "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(new_dir) (safetensors is the default)")

    def _handle(self, key: str):
        from safetensors import safe_open

        if key not in self.weight_map:
            raise DataError(f"{self.path} has no tensor {key!r}, which its config.json implies; the checkpoint is "
                            "incomplete or belongs to another config: download or save it again")
        name = self.weight_map[key]
        if name not in self._handles:  # pread: a tensor's bytes are copied once and freed with it (a memory map
            # would keep every page read so far resident in this process until the end)
            self._handles[name] = safe_open(str(self.path / name), framework="pt", backend="pread")
        return self._handles[name]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._handle(key).get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        return _ST_DTYPES[self._handle(key).get_slice(key).get_dtype()]

    def get(self, key: str, *, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
        """One tensor, cast to ``dtype`` and moved to ``device`` (default: as stored, on the CPU)."""
        t = self._handle(key).get_tensor(key)
        if dtype is not None and t.dtype != dtype and t.is_floating_point():
            t = t.to(dtype)
        return t if device is None else t.to(device)

    def rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` of a tensor as stored, reading only their bytes (a row-major tensor keeps them
        contiguous at the offset its shard's header gives). ``safe_open`` slices read the whole tensor first."""
        name = self.weight_map[key]
        if name not in self._headers:
            with open(self.path / name, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                self._headers[name] = (8 + size, json.loads(f.read(size)))
        data_start, header = self._headers[name]
        entry = header[key]
        shape, dtype = entry["shape"], _ST_DTYPES[entry["dtype"]]
        row_bytes = math.prod(shape[1:]) * torch.empty((), dtype=dtype).element_size()
        stop = min(stop, shape[0])
        count = max(stop - start, 0) * row_bytes
        buf = bytearray(count)
        with open(self.path / name, "rb") as f:
            f.seek(data_start + entry["data_offsets"][0] + start * row_bytes)
            if f.readinto(buf) != count:
                raise DataError(f"{self.path / name} ends inside tensor {key!r}; the shard is truncated: download or "
                                "save the checkpoint again")
        if not count:
            return torch.empty((0, *shape[1:]), dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).view(stop - start, *shape[1:])

    def row_blocks(self, key: str, *, dtype: torch.dtype | None = None, block_bytes: int | None = None):
        """``(start, rows)`` blocks of a 2-D tensor, about ``block_bytes`` (default :data:`READ_BLOCK_BYTES`) each."""
        n, step = self._row_step(key, block_bytes)
        for start in range(0, n, step):
            block = self.rows(key, start, start + step)
            yield start, block if dtype is None or block.dtype == dtype else block.to(dtype)

    def gather_rows(self, key: str, rows: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Rows ``rows`` (ascending, distinct) of a 2-D tensor, reading only the blocks that hold them."""
        n, step = self._row_step(key, None)
        parts = []
        for start in range(0, n, step):
            sel = rows[(rows >= start) & (rows < start + step)]
            if sel.numel():
                block = self.rows(key, start, start + step).index_select(0, sel - start)
                parts.append(block if dtype is None else block.to(dtype))
        return torch.cat(parts)

    def _row_step(self, key: str, block_bytes: int | None) -> tuple[int, int]:
        shape = self.shape(key)
        row_bytes = math.prod(shape[1:]) * torch.empty((), dtype=self.dtype(key)).element_size()
        return shape[0], max(1, (block_bytes or READ_BLOCK_BYTES) // max(1, row_bytes))

    def check_matches(self, model: nn.Module) -> None:
        """Refuse shards that lack a tensor of ``model`` (weightless, built from ``config.json``) or hold it with
        another shape; tied weights need only their kept name."""
        from transformers.modeling_utils import remove_tied_weights_from_state_dict

        expected = remove_tied_weights_from_state_dict(model.state_dict(), model)
        for key, t in expected.items():
            shape = self.shape(key)
            if shape != tuple(t.shape):
                raise DataError(f"{self.path / self.weight_map[key]}: tensor {key!r} has shape {list(shape)} but "
                                f"config.json implies {list(t.shape)}; the shards and the config disagree: save the "
                                "checkpoint again with the matching config")

    def stored_dtype(self, model: nn.Module) -> torch.dtype:
        """The dtype the input embedding is stored in (the checkpoint's dtype)."""
        names = {id(m): n for n, m in model.named_modules()}
        return self.dtype(names[id(model.get_input_embeddings())] + ".weight")

    def close(self) -> None:
        self._handles.clear()


def _checkpoint_dir(source, *, role: str, revision: str | None) -> Path:
    resolved = resolve_source(source)
    if isinstance(resolved, Path):
        if resolved.is_file():
            raise ModelSourceError(f"{role}={str(source)!r} is a file, not a safetensors checkpoint directory; load it "
                                   "once with load_causal_lm and save_pretrained it to a directory, then stream that")
        if not (resolved / "config.json").is_file():
            raise ModelSourceError(f"{role}={str(source)!r} is a directory with no config.json; pass a checkpoint "
                                   "directory (save_pretrained output)")
        return resolved
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(resolved), revision=revision,
                                  allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))


def load_config(checkpoint: ShardedCheckpoint, *, trust_remote_code: bool = False):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(checkpoint.path), trust_remote_code=trust_remote_code)
    config.name_or_path = str(checkpoint.path)
    return config


def empty_model(config, dtype: torch.dtype) -> nn.Module:
    """``*ForCausalLM`` of ``config`` with its parameters on the meta device and its buffers (rotary frequencies,
    embedding scales) computed on the CPU, cast like ``model.to(dtype)`` casts them; tied weights tied."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # from_config leaves a weightless model untied
    for module in model.modules():
        for name, buf in module._buffers.items():
            if buf is not None and buf.is_floating_point():
                module._buffers[name] = buf.to(dtype)
    return model.eval()


@contextmanager
def _probed(checkpoint: ShardedCheckpoint, model: nn.Module):
    """Within the block, the weightless ``model`` holds the rows :func:`~hf_minitron.importance.model_identity`
    fingerprints (read from the shards), so ``model_identity`` and ``ImportanceScores.check_model`` work on it."""
    a = get_adapter(model)
    names = {id(m): n for n, m in model.named_modules()}
    tied = a.tied_embeddings
    probes = [(a.embed_tokens, 4), (a.final_norm, None), (a.attention(0).o, 4), (a.mlp(a.num_layers - 1).down, 4)]
    saved = [(m, m.weight) for m, _ in probes] + ([(a.lm_head, a.lm_head.weight)] if tied else [])
    try:
        for module, rows in probes:
            key = names[id(module)] + ".weight"
            t = checkpoint.get(key) if rows is None else checkpoint.rows(key, 0, rows)
            module.weight = nn.Parameter(t.to(module.weight.dtype), requires_grad=False)
        if tied:
            a.lm_head.weight = a.embed_tokens.weight
        yield model
    finally:
        for module, weight in saved:
            module.weight = weight


def checkpoint_identity(checkpoint: ShardedCheckpoint, model: nn.Module) -> dict:
    """:func:`hf_minitron.importance.model_identity` of the checkpoint (``model``: its weightless copy), from the few
    rows it fingerprints: the dict the loaded model gives, so scores computed either way check against either."""
    from .importance import model_identity

    with _probed(checkpoint, model):
        return model_identity(model)


# --- moving one layer in and out -----------------------------------------------------------------------------------
def _module_keys(model: nn.Module, module: nn.Module) -> str:
    return {id(m): n for n, m in model.named_modules()}[id(module)] + "."


def _materialize(module: nn.Module, prefix: str, checkpoint: ShardedCheckpoint, dtype, device) -> None:
    """Give ``module``'s parameters (and persistent buffers) their tensors from the shards."""
    state = {name: checkpoint.get(prefix + name, dtype=dtype, device=device) for name in module.state_dict()}
    module.load_state_dict(state, strict=True, assign=True)


def _release(module: nn.Module) -> None:
    """Send ``module``'s parameters back to the meta device (frees their memory)."""
    for m in module.modules():
        for name, p in m._parameters.items():
            if p is not None:
                m._parameters[name] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
    _return_freed_memory()


def _return_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``). Each layer's multi-megabyte tensors are freed
    between smaller long-lived allocations; glibc keeps those holes resident, and over a few dozen layers the
    process's memory would grow by about the model's size (SmolLM2: +430 MB over 30 layers without this)."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


class _Reached(Exception):
    """Stops the decoder's forward at the layer whose arguments are wanted."""


class _LayerArguments:
    """What the family's decoder forward passes to layer ``i`` (position embeddings, masks, position ids), computed by
    that forward itself on a weightless copy of the model whose layers pass their input through; layer ``i`` raises
    with its arguments. The same copy embeds the tokens (the embedding is loaded for that pass only)."""

    def __init__(self, config, dtype, device):
        self.model = empty_model(config, dtype)
        for module in self.model.modules():
            for name, buf in module._buffers.items():
                if buf is not None:
                    module._buffers[name] = buf.to(device)
        self.adapter = get_adapter(self.model)
        self.target = 0

        def layer_forward(k):
            def forward(*args, **kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                if k == self.target:
                    raise _Reached(args, kwargs)
                return hidden
            return forward

        for k, layer in enumerate(self.adapter.layers):
            layer.forward = layer_forward(k)

    def __call__(self, i: int, *, input_ids=None, inputs_embeds=None, attention_mask=None) -> tuple[tuple, dict]:
        self.target = i
        try:
            self.adapter.decoder(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                 use_cache=False)
        except _Reached as reached:
            args, kwargs = reached.args
            return args, kwargs
        raise RuntimeError(f"the decoder never called layer {i}")


# --- hidden states between layers ----------------------------------------------------------------------------------
class _HiddenStates:
    """Every batch's hidden states ``[batch, seq, hidden]`` between two layers: CPU tensors, or views of one
    memory-mapped temporary file (``path``) removed by :meth:`close`."""

    def __init__(self, shapes: list[tuple[int, int, int]], dtype: torch.dtype, path: Path | None):
        self.path = path
        sizes = [math.prod(s) for s in shapes]
        if path is None:
            self.slots = [torch.empty(s, dtype=dtype) for s in shapes]
            return
        nbytes = sum(sizes) * torch.empty((), dtype=dtype).element_size()
        with open(path, "wb") as f:
            f.truncate(max(nbytes, 1))
        flat = torch.from_file(str(path), shared=True, size=sum(sizes), dtype=dtype)
        self.slots = [v.view(s) for v, s in zip(flat.split(sizes), shapes)]

    def close(self) -> None:
        self.slots = []
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def hidden_state_bytes(shapes, dtype: torch.dtype) -> int:
    return sum(math.prod(s) for s in shapes) * torch.empty((), dtype=dtype).element_size()


def _hidden_store(shapes, dtype, mode: str, offload_dir) -> _HiddenStates:
    """Hidden states in memory when they fit (``auto``: at most half of the available host memory), else on disk;
    the disk file is checked against the free space of ``offload_dir`` (default: the temporary directory)."""
    from .importance import available_memory

    need = hidden_state_bytes(shapes, dtype)
    free_ram = available_memory("cpu")
    if mode == "memory" or (mode == "auto" and need <= free_ram // 2):
        if need > free_ram:
            raise ConfigError(f"hidden_states='memory': the calibration hidden states need {need / GIB:.2f} GiB but "
                              f"only {free_ram / GIB:.2f} GiB of host memory is available; use hidden_states='disk' "
                              "(or 'auto'), or fewer num_samples / a shorter seq_len")
        return _HiddenStates(shapes, dtype, None)
    where = Path(offload_dir or tempfile.gettempdir()).expanduser()
    if not where.is_dir():
        raise ConfigError(f"offload_dir={str(where)!r} is not a directory; create it or pass another one")
    free = shutil.disk_usage(where).free
    if need > free:
        raise ConfigError(f"offload_dir={str(where)!r}: the calibration hidden states need {need / GIB:.2f} GiB on "
                          f"disk but only {free / GIB:.2f} GiB is free there; pass offload_dir= a disk with space, or "
                          "fewer num_samples / a shorter seq_len")
    fd, name = tempfile.mkstemp(prefix=".hf-minitron-hidden-", suffix=".bin", dir=where)
    os.close(fd)
    return _HiddenStates(shapes, dtype, Path(name))


# --- layer-streamed scoring ----------------------------------------------------------------------------------------
@dataclass
class _Batch:
    ids: torch.Tensor
    mask: torch.Tensor | None
    forward_mask: torch.Tensor | None


def _streamed_batches(cal) -> list[_Batch]:
    return [_Batch(ids, mask, mask if cal.mask_in_forward else None) for ids, mask, _ in cal.batches]


def _check_streamable_criteria(depth_criteria, block_sizes, num_layers) -> tuple[str, ...]:
    from .importance import _check_criteria

    criteria, block_sizes = _check_criteria(depth_criteria, block_sizes, num_layers)
    refused = [c for c in criteria if c in ("lm_loss", "block")]
    if refused:
        raise ConfigError(f"depth_criteria {refused} cannot be streamed: removing a layer changes every later "
                          "layer's input, so each removal needs its own pass through the whole decoder; use "
                          "depth_criteria=('block_influence',) (from the scoring pass) with offload='layers', or "
                          "score the model in memory for the LM-loss criteria")
    return criteria


@torch.no_grad()
def estimate_importance_streamed(
    checkpoint,
    calib,
    *,
    tokenizer=None,
    batch_size: int | Literal["auto"] = 8,
    seq_len: int = 4096,
    num_samples: int | None = 1024,
    packing: bool = False,
    depth_criteria: Sequence[str] = ("block_influence",),
    block_sizes: Sequence[int] = (),
    loss_num_samples: int | None = 64,
    aggregation=("mean", "l2"),
    text_field: str = "text",
    progress: bool = False,
    dtype: str | torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    hidden_states: Literal["auto", "memory", "disk"] = "auto",
    offload_dir: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
):
    """:func:`hf_minitron.importance.estimate_importance` of a safetensors checkpoint (directory or Hub id) that
    never holds more than one decoder layer: same arguments, same :class:`~hf_minitron.importance.ImportanceScores`.

    ``dtype``/``device``: what each layer is loaded as and run on (default: CUDA when available; the importance
    kernel runs there, the PyTorch path on CPU). ``hidden_states``: where the calibration hidden states live between
    layers (``auto``: host memory when they take at most half of it, else a memory-mapped file in ``offload_dir``).
    Only Block Influence is available as a depth criterion (``lm_loss``/``block`` raise :class:`ConfigError`).
    ``loss_num_samples`` is accepted for signature parity and unused.
    """
    from tqdm.auto import tqdm

    from .importance import Aggregation, _calibration, _dist_info, _Recorder, available_memory, fit_batch_size

    agg = Aggregation.parse(aggregation)
    dtype = _dtype(dtype)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if hidden_states not in ("auto", "memory", "disk"):
        raise ConfigError(f"hidden_states={hidden_states!r}; choose 'auto', 'memory' or 'disk'")
    if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size={batch_size!r}; must be an int >= 1 or 'auto'")
    ckpt = ShardedCheckpoint.open(checkpoint, revision=revision)
    config = load_config(ckpt, trust_remote_code=trust_remote_code)
    model = empty_model(config, dtype)
    ckpt.check_matches(model)
    adapter = get_adapter(model)
    L = adapter.num_layers
    criteria = _check_streamable_criteria(depth_criteria, block_sizes, L)
    rank, world = _dist_info()
    cal = _calibration(calib, tokenizer, seq_len=seq_len, num_samples=num_samples, text_field=text_field,
                       packing=packing, batch_size=batch_size, rank=rank, world=world,
                       fit=lambda longest: fit_batch_size(model, longest, available=available_memory(device)))
    batches = _streamed_batches(cal)
    if not batches:
        raise DataError("the calibration data gives no batch on this rank; pass more samples")
    widest = max(batches, key=lambda b: b.ids.numel())
    _check_batch_memory(model, widest.ids.shape[0], widest.ids.shape[1], widest.forward_mask is not None, device)
    H = config.hidden_size
    identity = checkpoint_identity(ckpt, model)
    store = _hidden_store([(*b.ids.shape, H) for b in batches], dtype, hidden_states, offload_dir)
    recorder = _Recorder(adapter, agg, "block_influence" in criteria)
    try:
        layer_args = _LayerArguments(config, dtype, device)
        _embed(layer_args, ckpt, batches, store, recorder, dtype, device)
        recorder.attach()
        try:
            for i in tqdm(range(L), desc="importance (layers)", disable=not progress or rank != 0):
                _score_layer(i, adapter, layer_args, ckpt, batches, store, recorder, model, dtype, device)
        finally:
            recorder.detach()
            recorder.set_mask(None)
    finally:
        store.close()
        ckpt.close()
    fingerprint = cal.fingerprint
    if fingerprint is None:
        from .data import fingerprint as fp

        fingerprint = fp(*[b.ids.cpu() for b in batches])
    return _scores(recorder, adapter, agg, criteria, world, identity, cal, fingerprint, num_samples, packing,
                   loss_num_samples)


def _check_batch_memory(model, batch_size: int, seq_len: int, masked: bool, device) -> None:
    """Refuse (before any layer loads) a batch whose activations and the largest layer exceed the device's memory."""
    from .importance import ScoringMemoryError, available_memory, fit_batch_size, scoring_memory

    layer = max(sum(p.numel() * p.element_size() for p in m.parameters()) for m in get_adapter(model).layers)
    need = scoring_memory(model, batch_size, seq_len, attention_mask=masked).transient + layer
    free = available_memory(device)
    if need > free:
        fit = fit_batch_size(model, seq_len, attention_mask=masked, available=max(free - layer, 0))
        raise ScoringMemoryError(
            f"batch_size={batch_size} x seq_len={seq_len} needs about {need / GIB:.2f} GiB on {device} (one layer "
            f"{layer / GIB:.2f} + the batch's activations), but only {free / GIB:.2f} GiB is available; pass "
            f"batch_size={fit} (or batch_size='auto'), or a shorter seq_len")


def _embed(layer_args: _LayerArguments, ckpt, batches, store, recorder, dtype, device) -> None:
    """Layer 0's input for every batch (the family's own embedding module and decoder forward), into the
    hidden-state store. Only the embedding rows of the tokens that occur are read: the module gets those rows and
    the ids are renumbered into them (a lookup, so the values are exactly those of the full table)."""
    emb = layer_args.adapter.embed_tokens
    vocab = torch.unique(torch.cat([b.ids.reshape(-1) for b in batches]))  # sorted
    key = _module_keys(layer_args.model, emb) + "weight"
    meta_weight, padding_idx = emb.weight, getattr(emb, "padding_idx", None)
    emb.weight = nn.Parameter(ckpt.gather_rows(key, vocab, dtype=dtype).to(device), requires_grad=False)
    emb.padding_idx = None  # an index into the full table; it only matters for gradients
    try:
        for b, slot in zip(batches, store.slots):
            ids = torch.searchsorted(vocab, b.ids).to(device)
            args, kwargs = layer_args(0, input_ids=ids, attention_mask=_on(b.forward_mask, device))
            slot.copy_(args[0] if args else kwargs["hidden_states"])
            recorder.samples += float(b.ids.shape[0] if b.mask is None else int(b.mask.bool().any(1).sum()))
            recorder.tokens += float(b.ids.numel() if b.mask is None else int(b.mask.sum()))
    finally:
        emb.weight, emb.padding_idx = meta_weight, padding_idx
        _return_freed_memory()


def _score_layer(i, adapter, layer_args, ckpt, batches, store, recorder, model, dtype, device) -> None:
    """Load layer ``i``, run every batch through it with the recording hooks, store its outputs, release it."""
    layer = adapter.layers[i]
    _materialize(layer, _module_keys(model, layer), ckpt, dtype, device)
    try:
        for b, slot in zip(batches, store.slots):
            hidden = slot.to(device)
            args, kwargs = layer_args(i, inputs_embeds=hidden, attention_mask=_on(b.forward_mask, device))
            recorder.set_mask(_on(b.mask, device))
            out = layer(*args, **kwargs)
            slot.copy_(out[0] if isinstance(out, tuple) else out)
            del hidden, out
    finally:
        _release(layer)


def _on(t, device):
    return None if t is None else t.to(device)


def _scores(recorder, adapter, agg, criteria, world, identity, cal, fingerprint, num_samples, packing,
            loss_num_samples):
    """Reduce over ranks and finalize as :func:`~hf_minitron.importance.estimate_importance` does."""
    from .importance import ImportanceScores, _all_reduce, recorder_scores

    raw = recorder.raw_tensors()
    raw = _all_reduce(raw) if world > 1 else [t.cpu() for t in raw]
    heads, neurons, channels, depth, tokens, samples = recorder_scores(recorder, adapter, iter(raw), agg, criteria)
    manifest = {
        "model": identity,
        "calibration": {"fingerprint": fingerprint, "samples": int(samples), "tokens": int(tokens),
                        "seq_len": cal.seq_len, "packing": cal.packing, "world_size": world},
        "settings": {"aggregation": asdict(agg), "batch_size": cal.batch_size, "num_samples": num_samples,
                     "packing": packing, "depth_criteria": list(criteria), "block_sizes": [],
                     "loss_num_samples": loss_num_samples, "offload": "layers"},
    }
    return ImportanceScores(heads=heads, neurons=neurons, channels=channels, depth=depth, block_losses={},
                            base_loss=None, manifest=manifest)


# --- shard-streamed pruning ----------------------------------------------------------------------------------------
def _parse_size(size: int | str) -> int:
    from huggingface_hub.serialization._base import parse_size_to_int

    return size if isinstance(size, int) else parse_size_to_int(size)


def _tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a CPU tensor's bytes, hashed in place (no copy)."""
    flat = t.detach().contiguous().reshape(-1)
    return hashlib.sha256(memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else b"").hexdigest()


def _load_scores(scores, skeleton):
    from .importance import ImportanceScores

    if isinstance(scores, (str, os.PathLike)):
        scores = ImportanceScores.load(scores)
    if scores is not None:
        scores.check_model(skeleton)
    return scores


def _pruning_setup(checkpoint, targets, scores, dtype, trust_remote_code, revision):
    """Open and check the shards, build the weightless source in ``dtype`` (default: as stored), check the scores
    against it and plan: ``(checkpoint, source, dtype, plan)``."""
    from .pruning import plan_pruning

    ckpt = ShardedCheckpoint.open(checkpoint, revision=revision)
    try:
        config = load_config(ckpt, trust_remote_code=trust_remote_code)
        source = empty_model(config, torch.float32)
        ckpt.check_matches(source)
        want = ckpt.stored_dtype(source) if dtype is None else _dtype(dtype)
        if want != torch.float32:
            source = empty_model(config, want)
        with _probed(ckpt, source):
            scores = _load_scores(scores, source)
            plan = plan_pruning(source, targets, scores)
    except BaseException:
        ckpt.close()
        raise
    return ckpt, source, source.dtype, plan


def plan_checkpoint(checkpoint, targets, scores=None, *, trust_remote_code: bool = False,
                    revision: str | None = None):
    """:func:`hf_minitron.pruning.plan_pruning` for a safetensors checkpoint, from its config and the few rows the
    scores' model check reads (no weights loaded): the kept/dropped layers, units and sizes ``prune_checkpoint``
    will use. Raises what ``prune_checkpoint`` raises for bad targets, scores or shards."""
    ckpt, _, _, plan = _pruning_setup(checkpoint, targets, scores, None, trust_remote_code, revision)
    ckpt.close()
    return plan


@torch.no_grad()
def prune_checkpoint(checkpoint, targets, scores=None, out_dir=None, *, dtype: str | torch.dtype | None = None,
                     tokenizer=None, overwrite: bool = False, max_shard_size: int | str = "2GB",
                     trust_remote_code: bool = False, revision: str | None = None, progress: bool = False) -> Path:
    """Prune the safetensors checkpoint ``checkpoint`` (directory or Hub id) to ``targets`` with ``scores`` (an
    :class:`~hf_minitron.importance.ImportanceScores` or its directory) and write the result to ``out_dir``, one
    tensor at a time; returns ``out_dir`` resolved.

    Same validation, plan and tensors as :func:`hf_minitron.pruning.prune_model` on the loaded model; the files are
    those ``save_pretrained(out_dir, max_shard_size=max_shard_size)`` writes for the in-memory result (shards, index,
    ``config.json``, ``generation_config.json``) plus the tokenizer (``tokenizer``, else the source's tokenizer
    files). ``dtype``: cast every tensor first (default: as stored). Written atomically; each shard is re-read and
    checked (keys, shapes, dtype, SHA-256) before the rename.
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from .outputs import atomic_output_dir, check_output_dir
    from .pruning import _build, pruning_rules

    out = check_output_dir(out_dir, overwrite=overwrite, name="out_dir", fix="pass overwrite=True")
    shard_bytes = _parse_size(max_shard_size)
    ckpt, source, dtype, plan = _pruning_setup(checkpoint, targets, scores, dtype, trust_remote_code, revision)
    try:
        new_config = get_adapter(source).pruned_config(
            kept_layers=plan.kept_layers, **{k: v for k, v in plan.sizes.items() if k != "num_hidden_layers"})
        target = _build(new_config, device="meta", dtype=dtype)
        target.tie_weights()
        rules = pruning_rules(source, plan)
        layout = _shard_layout(target, shard_bytes)
        with atomic_output_dir(out, overwrite=overwrite, name="out_dir", fix="pass overwrite=True") as tmp:
            digests = {}
            for shard, keys in tqdm(layout.filename_to_tensors.items(), desc="pruning shards", disable=not progress):
                buffer = {k: _pruned_tensor(ckpt, rules[k], dtype) for k in keys}
                digests.update({k: _tensor_digest(t) for k, t in buffer.items()})
                save_file(buffer, str(tmp / shard), metadata={"format": "pt"})
                del buffer
                _return_freed_memory()
            _write_metadata(tmp, target, layout, ckpt, tokenizer)
            _verify_written(tmp, target, layout, digests)
    finally:
        ckpt.close()
    return out


def _shard_layout(target, shard_bytes: int):
    """The shards ``save_pretrained`` writes for ``target``: its state dict without tied copies, split by size."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    state = remove_tied_weights_from_state_dict(target.state_dict(), target)
    return split_torch_state_dict_into_shards(state, filename_pattern="model{suffix}.safetensors",
                                              max_shard_size=shard_bytes)


def _pruned_tensor(ckpt: ShardedCheckpoint, rule, dtype) -> torch.Tensor:
    """The pruned tensor of ``rule``; a large 2-D tensor whose rows are all kept (embedding, LM head) is filled
    block of rows by block (the rule acts on each row alone), so its source never sits in memory whole."""
    from .pruning import apply_rule

    shape = ckpt.shape(rule.source)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if rule.rows is not None or rule.norm_offset is not None or len(shape) != 2 or \
            math.prod(shape) * itemsize <= READ_BLOCK_BYTES:
        return apply_rule(rule, ckpt.get(rule.source, dtype=dtype)).contiguous()
    out = None
    for start, block in ckpt.row_blocks(rule.source, dtype=dtype):
        part = apply_rule(rule, block)
        if out is None:
            out = torch.empty((shape[0], *part.shape[1:]), dtype=part.dtype)
        out[start : start + part.shape[0]] = part
    return out


def _write_metadata(tmp: Path, target, layout, ckpt: ShardedCheckpoint, tokenizer) -> None:
    """``config.json``, ``generation_config.json`` and the index as ``save_pretrained`` writes them; the tokenizer."""
    config = target.config
    config.dtype = str(target.dtype).split(".")[1]
    config.architectures = [type(target).__name__]
    config.save_pretrained(tmp)
    if target.can_generate():
        target.generation_config.save_pretrained(tmp)
    if layout.is_sharded:
        index = {"metadata": {"total_parameters": target.num_parameters(), **layout.metadata},
                 "weight_map": layout.tensor_to_filename}
        (tmp / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
        return
    for name in CARRIED_FILES:
        if (ckpt.path / name).is_file():
            shutil.copy2(ckpt.path / name, tmp / name)


def _verify_written(tmp: Path, target, layout, digests: dict[str, str]) -> None:
    """Re-read every written tensor, one at a time: the key set a stock model loads without missing or unexpected
    keys, the target config's shapes and dtype, and the bytes that were meant to be written."""
    from safetensors import safe_open
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    expected = remove_tied_weights_from_state_dict(target.state_dict(), target)
    seen = set()
    for shard in layout.filename_to_tensors:
        with safe_open(str(tmp / shard), framework="pt", backend="pread") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                want = expected.get(key)
                if want is None or tuple(t.shape) != tuple(want.shape) or t.dtype != want.dtype:
                    raise RuntimeError(f"written shard {shard}: tensor {key!r} is {t.dtype} {list(t.shape)}, the "
                                       "pruned config expects "
                                       f"{None if want is None else (want.dtype, list(want.shape))}; nothing was "
                                       "written to the output directory")
                if _tensor_digest(t) != digests[key]:
                    raise RuntimeError(f"written shard {shard}: tensor {key!r} does not read back as written; nothing "
                                       "was written to the output directory")
                seen.add(key)
    if seen != set(expected):
        raise RuntimeError(f"written shards lack {sorted(set(expected) - seen)[:3]}; nothing was written to the "
                           "output directory")


__all__ = ["ShardedCheckpoint", "checkpoint_identity", "empty_model", "estimate_importance_streamed",
           "hidden_state_bytes", "plan_checkpoint", "prune_checkpoint"]
