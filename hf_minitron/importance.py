"""Activation-based importance of heads, MLP neurons, embedding channels and layers (the Minitron recipe).

``estimate_importance(model, calib, tokenizer=...)`` runs the model over calibration data with forward hooks and
returns :class:`ImportanceScores`:

- ``heads`` ``[layers, num_heads]``: per channel of the output projection's input (the attention output), the
  aggregated activation; a head's score is the L2 norm over its ``head_dim`` channels. (The paper takes the L2 over
  the head's channels per token before aggregating; we aggregate per channel first so that one fused kernel serves
  heads, neurons and channels alike. Both rank a head whose output is zero last.)
- ``neurons`` ``[layers, intermediate_size]``: the down projection's input (the MLP activation after gating).
- ``channels`` ``[hidden_size]``: the outputs of every norm over the hidden size inside the decoder layers, summed
  over norms and layers.
- ``depth``: per layer, higher = more important. ``block_influence``: 1 - mean cosine between a layer's input and
  output over the calibration tokens; ``lm_loss``: calibration LM loss with the layer removed minus the loss of the
  full model. ``block_losses[n]``: LM loss with layers ``j..j+n-1`` removed, for every start ``j`` (contiguous-block
  search).

Aggregation (per channel, fp32): over the sequence ``mean`` of ``|x|`` (default), ``l2`` or ``var`` of ``x``; then over
the samples ``l2`` (default), ``mean`` or ``var``. Positions with attention mask 0 never count; a sample with no
unmasked position counts for nothing. Under ``torch.distributed`` each rank scores its shard of the data and the raw
sums are all-reduced, so every rank holds what one process computes over all the data.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .arch import get_adapter
from .kernels.importance import abs_mean_accumulate

AGGREGATIONS = ("mean", "l2", "var")
DEPTH_CRITERIA = ("block_influence", "lm_loss", "block")
SCORES_FILE = "importance.safetensors"
MANIFEST_FILE = "manifest.json"
FORMAT = "hf-minitron-importance"


class ScoresMismatchError(ValueError):
    """Saved importance scores do not belong to the model they are used with."""


@dataclass(frozen=True)
class Aggregation:
    """How per-token activations become one score per channel: ``seq`` over the unmasked positions of a sample
    (``mean`` of ``|x|``, ``l2`` or ``var`` of ``x``), then ``batch`` over the samples (``l2``, ``mean`` or ``var``)."""

    seq: str = "mean"
    batch: str = "l2"

    def __post_init__(self):
        for axis in ("seq", "batch"):
            if getattr(self, axis) not in AGGREGATIONS:
                raise ValueError(f"aggregation.{axis}={getattr(self, axis)!r}; choose one of {AGGREGATIONS}")

    @classmethod
    def parse(cls, value) -> "Aggregation":
        """From an ``Aggregation``, a ``(seq, batch)`` pair, a dict or a ``"seq,batch"`` string."""
        if isinstance(value, Aggregation):
            return value
        if isinstance(value, dict):
            return cls(**value)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")]
        if len(value) != 2:
            raise ValueError(f"aggregation={value!r}; give (seq, batch), e.g. ('mean', 'l2')")
        return cls(*value)


# --- per-channel accumulators --------------------------------------------------------------------------------------
class ChannelStat:
    """Per-channel fp32 sums over samples of the sequence-aggregated activation ``v`` and of ``v**2``, kept on the
    device of the module that produces the activation."""

    def __init__(self, seq: str):
        self.seq = seq
        self.sum: torch.Tensor | None = None
        self.sq: torch.Tensor | None = None

    def add(self, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        """``x``: ``[batch, seq, channels]``; ``mask``: ``[batch, seq]`` (1 = real token) or ``None``."""
        x = x.detach()
        if self.sum is None:
            self.sum = torch.zeros(x.shape[-1], dtype=torch.float32, device=x.device)
            self.sq = torch.zeros_like(self.sum)
        if self.seq == "mean":
            abs_mean_accumulate(x, mask, self.sum, self.sq)
            return
        xf = x.float()
        m = torch.ones(xf.shape[:2], device=xf.device) if mask is None else mask.to(xf.device, torch.float32)
        n = m.sum(1, keepdim=True)
        s2 = torch.bmm(m.unsqueeze(1), xf * xf).squeeze(1)
        if self.seq == "l2":
            v = s2.sqrt()
        else:  # population variance over the unmasked positions
            s1 = torch.bmm(m.unsqueeze(1), xf).squeeze(1)
            mean = s1 / n.clamp_min(1.0)
            v = (s2 / n.clamp_min(1.0) - mean * mean).clamp_min(0.0) * (n > 0)
        self.sum += v.sum(0)
        self.sq += (v * v).sum(0)

    def tensors(self) -> list[torch.Tensor]:
        return [self.sum, self.sq]


def _finalize(stat: ChannelStat, num_samples: float, batch: str) -> torch.Tensor:
    s, q = stat.sum.cpu(), stat.sq.cpu()
    n = max(num_samples, 1.0)
    if batch == "l2":
        return q.sqrt()
    if batch == "mean":
        return s / n
    return (q / n - (s / n) ** 2).clamp_min(0.0)


# --- scores container ----------------------------------------------------------------------------------------------
@dataclass
class ImportanceScores:
    """Importance of every prunable unit of one model (higher = more important); see the module docstring."""

    heads: torch.Tensor
    neurons: torch.Tensor
    channels: torch.Tensor
    depth: dict[str, torch.Tensor] = field(default_factory=dict)
    block_losses: dict[int, torch.Tensor] = field(default_factory=dict)
    base_loss: float | None = None
    manifest: dict = field(default_factory=dict)

    # --- derived rankings ------------------------------------------------------------------------------------------
    def kv_group_scores(self, num_key_value_heads: int) -> torch.Tensor:
        """``[layers, num_kv_heads]``: L2 over the scores of the query heads that share each KV head."""
        layers, heads = self.heads.shape
        return self.heads.view(layers, num_key_value_heads, heads // num_key_value_heads).norm(dim=-1)

    def available_depth_criteria(self, num_drop: int | None = None) -> list[str]:
        out = [c for c in ("block_influence", "lm_loss") if c in self.depth]
        if self.block_losses and (num_drop is None or num_drop in self.block_losses):
            out.append("block")
        return out

    def layers_to_drop(self, num_drop: int, criterion: str) -> list[int]:
        """Indices of the ``num_drop`` layers to remove under ``criterion`` (sorted)."""
        if num_drop == 0:
            return []
        if criterion == "block":
            if num_drop not in self.block_losses:
                raise ValueError(
                    f"depth_criterion='block' needs a contiguous-block search for {num_drop} layers, but the scores hold "
                    f"block sizes {sorted(self.block_losses)}; re-run estimate_importance with block_sizes=({num_drop},)")
            start = int(torch.argmin(self.block_losses[num_drop]))
            return list(range(start, start + num_drop))
        if criterion not in self.depth:
            raise ValueError(f"depth_criterion={criterion!r} is not in the scores (available: "
                             f"{self.available_depth_criteria(num_drop)}); re-run estimate_importance with it in "
                             "depth_criteria")
        order = torch.argsort(self.depth[criterion], stable=True)
        return sorted(int(i) for i in order[:num_drop])

    # --- validation ------------------------------------------------------------------------------------------------
    def check_model(self, model) -> None:
        """Raise :class:`ScoresMismatchError` if these scores were not computed on ``model`` (type, sizes, weights)."""
        expected = model_identity(model)
        got = self.manifest.get("model", {})
        for key in ("model_type", "sizes", "weights_fingerprint"):
            if got.get(key) != expected[key]:
                raise ScoresMismatchError(
                    f"importance scores do not match the model: manifest model.{key}={got.get(key)!r} but the model has "
                    f"{expected[key]!r} (scores were computed on {got.get('name_or_path')!r}); recompute them with "
                    "estimate_importance on this model")

    # --- persistence -----------------------------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``importance.safetensors`` + ``manifest.json`` atomically (temp sibling dir, then rename)."""
        from safetensors.torch import save_file

        from .loading import check_output_dir

        out = check_output_dir(out_dir, overwrite=overwrite)
        out.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"heads": self.heads, "neurons": self.neurons, "channels": self.channels}
        tensors.update({f"depth.{k}": v for k, v in self.depth.items()})
        tensors.update({f"block_losses.{n}": v for n, v in self.block_losses.items()})
        manifest = {**self.manifest, "format": FORMAT, "version": 1, "base_loss": self.base_loss}
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(tmp / SCORES_FILE))
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return out

    @classmethod
    def load(cls, in_dir: str | os.PathLike, model=None) -> "ImportanceScores":
        """Read scores written by :meth:`save`; with ``model``, reject scores computed on another model."""
        from safetensors.torch import load_file

        path = Path(in_dir).expanduser()
        if not (path / MANIFEST_FILE).is_file() or not (path / SCORES_FILE).is_file():
            raise FileNotFoundError(f"{path} holds no importance scores ({MANIFEST_FILE} + {SCORES_FILE}); "
                                    "create them with estimate_importance(...).save(dir) or `hf-minitron importance`")
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{path / MANIFEST_FILE} is not an hf-minitron importance manifest")
        t = load_file(str(path / SCORES_FILE))
        scores = cls(
            heads=t["heads"], neurons=t["neurons"], channels=t["channels"],
            depth={k.split(".", 1)[1]: v for k, v in t.items() if k.startswith("depth.")},
            block_losses={int(k.split(".", 1)[1]): v for k, v in t.items() if k.startswith("block_losses.")},
            base_loss=manifest.get("base_loss"), manifest=manifest,
        )
        if model is not None:
            scores.check_model(model)
        return scores


def model_identity(model) -> dict:
    """What a scores manifest records about the model: type, sizes and a fingerprint of a few weight slices
    (rounded to bf16, so the same checkpoint in fp32/bf16 matches)."""
    from .data import fingerprint

    a = get_adapter(model)
    probe = [a.embed_tokens.weight[:4], a.final_norm.weight, a.attention(0).o.weight[:4], a.mlp(a.num_layers - 1).down.weight[:4]]
    probe = [p.detach().to(torch.bfloat16).float().cpu() for p in probe]
    return {
        "name_or_path": getattr(model.config, "name_or_path", None) or getattr(model.config, "_name_or_path", None),
        "model_type": model.config.model_type,
        "sizes": asdict(a.sizes()),
        "weights_fingerprint": fingerprint(*probe),
    }


# --- calibration data ----------------------------------------------------------------------------------------------
def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _as_batch(item) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(item, torch.Tensor):
        return item, None
    if isinstance(item, dict) or hasattr(item, "keys"):
        if "input_ids" not in item:
            raise ValueError(f"calibration batch has no 'input_ids' (keys: {sorted(item.keys())})")
        return item["input_ids"], item.get("attention_mask")
    if isinstance(item, (list, tuple)) and item and isinstance(item[0], torch.Tensor):
        return item[0], item[1] if len(item) > 1 else None
    raise TypeError(f"calibration batch of type {type(item).__name__}; yield tensors or dicts with input_ids")


def _is_loader(calib) -> bool:
    """A DataLoader / iterable of batches (including a list of tensors or dicts), as opposed to texts or blocks."""
    if isinstance(calib, (list, tuple)):
        return bool(calib) and not isinstance(calib[0], str)
    return isinstance(calib, torch.utils.data.DataLoader) or (
        not isinstance(calib, (str, os.PathLike, torch.Tensor)) and not hasattr(calib, "column_names")
        and isinstance(calib, Iterable))


def calibration_blocks(calib, tokenizer, seq_len: int, num_samples: int | None, text_field: str = "text") -> torch.Tensor:
    """``[n, seq_len]`` packed token blocks from texts / a file / a ``datasets.Dataset`` / a token tensor."""
    from .data import load_texts, token_blocks

    if isinstance(calib, torch.Tensor):
        if calib.dim() != 2:
            raise ValueError(f"calib tensor must be [num_samples, seq_len] token ids, got shape {tuple(calib.shape)}")
        return calib[:num_samples] if num_samples else calib
    if tokenizer is None:
        raise ValueError("tokenizer=None: calibration texts need a tokenizer; pass tokenizer=... (or pre-tokenized "
                         "calib as a [num_samples, seq_len] tensor or a DataLoader of input_ids)")
    return token_blocks(load_texts(calib, text_field=text_field), tokenizer, seq_len, num_samples)


# --- hooks ---------------------------------------------------------------------------------------------------------
class _Recorder:
    """Forward hooks that feed the accumulators; ``mask`` is the current batch's attention mask."""

    def __init__(self, adapter, aggregation: Aggregation, block_influence: bool):
        self.adapter = adapter
        self.mask: torch.Tensor | None = None
        self._masks: dict = {}
        L = adapter.num_layers
        self.heads = [ChannelStat(aggregation.seq) for _ in range(L)]
        self.neurons = [ChannelStat(aggregation.seq) for _ in range(L)]
        self.norms = [[ChannelStat(aggregation.seq) for _ in adapter.hidden_norms(i)] for i in range(L)]
        self.block_influence = block_influence
        self.cos_sum = [torch.zeros((), dtype=torch.float64) for _ in range(L)]
        self.tokens = torch.zeros((), dtype=torch.float64)
        self.samples = torch.zeros((), dtype=torch.float64)
        self.layer_returns_tuple = False
        self._layer_inputs: dict[int, tuple] = {}
        self._last_out: tuple | None = None
        self._handles = []

    def set_mask(self, mask: torch.Tensor | None) -> None:
        self.mask, self._masks, self._last_out = mask, {}, None

    def mask_on(self, device) -> torch.Tensor | None:
        if self.mask is None:
            return None
        if device not in self._masks:
            self._masks[device] = self.mask.to(device)
        return self._masks[device]

    def _stat_pre_hook(self, stat):
        def hook(module, args):
            x = args[0]
            stat.add(x, self.mask_on(x.device))
        return hook

    def _stat_hook(self, stat):
        def hook(module, args, output):
            stat.add(output, self.mask_on(output.device))
        return hook

    def _layer_pre_hook(self, i):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            # a layer's input is usually the previous layer's output tensor: reuse its per-token norm
            norm = self._last_out[1] if self._last_out is not None and self._last_out[0] is x else None
            self._layer_inputs[i] = (x, norm)
        return hook

    def _layer_hook(self, i):
        def hook(module, args, output):
            self.layer_returns_tuple = isinstance(output, tuple)
            out = output[0] if isinstance(output, tuple) else output
            x, x_norm = self._layer_inputs.pop(i)
            if x_norm is None:
                x_norm = torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32)
            out_norm = torch.linalg.vector_norm(out, dim=-1, dtype=torch.float32)
            self._last_out = (out, out_norm)
            dot = torch.linalg.vecdot(x.float(), out.float())  # [batch, seq]
            cos = dot / (x_norm * out_norm).clamp_min(1e-8)  # as torch.cosine_similarity
            m = self.mask_on(cos.device)
            self.cos_sum[i] += (cos if m is None else cos * m).sum().double().cpu()
        return hook

    def attach(self):
        a = self.adapter
        for i in range(a.num_layers):
            self._handles.append(a.attention(i).o.register_forward_pre_hook(self._stat_pre_hook(self.heads[i])))
            self._handles.append(a.mlp(i).down.register_forward_pre_hook(self._stat_pre_hook(self.neurons[i])))
            for norm, stat in zip(a.hidden_norms(i), self.norms[i]):
                self._handles.append(norm.register_forward_hook(self._stat_hook(stat)))
            if self.block_influence:
                layer = a.layers[i]
                self._handles.append(layer.register_forward_pre_hook(self._layer_pre_hook(i), with_kwargs=True))
                self._handles.append(layer.register_forward_hook(self._layer_hook(i)))
        return self

    def detach(self):
        for h in self._handles:
            h.remove()
        self._handles = []

    def raw_tensors(self) -> list[torch.Tensor]:
        """Every raw sum, in a fixed order (for the all-reduce)."""
        out = []
        for stats in (self.heads, self.neurons):
            for s in stats:
                out += s.tensors()
        for layer in self.norms:
            for s in layer:
                out += s.tensors()
        return out + self.cos_sum + [self.tokens, self.samples]


@contextmanager
def skip_layers(adapter, indices: Iterable[int], returns_tuple: bool = False):
    """Temporarily make decoder layers ``indices`` the identity (their input passes through unchanged)."""
    layers = [adapter.layers[i] for i in indices]

    def identity(*args, **kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden,) if returns_tuple else hidden

    for layer in layers:
        layer.forward = identity
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def _nll_sum(model, ids: torch.Tensor, mask: torch.Tensor | None, logits: torch.Tensor | None = None) -> tuple[float, float]:
    """Sum of next-token NLL over positions whose token and target are both unmasked, and their count."""
    if logits is None:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    logits = logits[:, :-1].float()
    target = ids[:, 1:].to(logits.device)
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
    if mask is not None:
        keep = (mask[:, 1:] * mask[:, :-1]).reshape(-1).to(nll.device).bool()
        nll = nll[keep]
    return nll.double().sum().item(), float(nll.numel())


def _all_reduce(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sum each tensor over the ranks (moved to the backend's device for the call); returns CPU tensors."""
    dist = torch.distributed
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    flat = torch.cat([t.reshape(-1).to(device, torch.float64) for t in tensors])
    dist.all_reduce(flat)
    out, pos = [], 0
    for t in tensors:
        out.append(flat[pos : pos + t.numel()].view(t.shape).cpu().to(t.dtype))
        pos += t.numel()
    return out


# --- the estimator -------------------------------------------------------------------------------------------------
@torch.no_grad()
def estimate_importance(
    model,
    calib,
    *,
    tokenizer=None,
    batch_size: int = 8,
    seq_len: int = 4096,
    num_samples: int | None = 1024,
    depth_criteria: Sequence[str] = ("block_influence", "lm_loss"),
    block_sizes: Sequence[int] = (),
    loss_num_samples: int | None = 64,
    aggregation=("mean", "l2"),
    text_field: str = "text",
    progress: bool = False,
) -> ImportanceScores:
    """Score heads, neurons, embedding channels and layers of ``model`` on calibration data.

    ``calib``: a list of texts, a ``.txt``/``.json``/``.jsonl`` file, a ``datasets.Dataset`` (packed into
    ``num_samples`` blocks of ``seq_len`` tokens with ``tokenizer``), a ``[n, seq_len]`` token tensor, or a DataLoader /
    iterable of batches (tensors or dicts with ``input_ids`` and optionally ``attention_mask``; already sharded per
    rank when distributed). ``depth_criteria``: any of ``block_influence`` (free, from the scoring pass), ``lm_loss``
    (one extra pass per layer over the first ``loss_num_samples`` samples) and ``block`` (one extra pass per start
    position and size in ``block_sizes``).
    """
    agg = Aggregation.parse(aggregation)
    criteria = tuple(depth_criteria)
    for c in criteria:
        if c not in DEPTH_CRITERIA:
            raise ValueError(f"depth_criteria contains {c!r}; choose from {DEPTH_CRITERIA}")
    block_sizes = tuple(int(n) for n in block_sizes)
    if "block" in criteria and not block_sizes:
        raise ValueError("depth_criteria includes 'block' but block_sizes is empty; pass the numbers of layers to drop, "
                         "e.g. block_sizes=(8,)")
    if block_sizes and "block" not in criteria:
        criteria = criteria + ("block",)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; must be >= 1")
    adapter = get_adapter(model)
    L = adapter.num_layers
    for n in block_sizes:
        if not 1 <= n < L:
            raise ValueError(f"block_sizes contains {n}; each size must be in [1, {L - 1}] for a {L}-layer model")
    rank, world = _dist_info()
    need_loss = "lm_loss" in criteria or "block" in criteria

    # --- batches (this rank's shard) ---
    if _is_loader(calib):
        batches, total, calib_fp, global_loss_limit = _loader_batches(calib, num_samples), None, None, False
        block_len = None
    else:
        blocks = calibration_blocks(calib, tokenizer, seq_len, num_samples, text_field)
        from .data import fingerprint

        calib_fp = fingerprint(blocks)
        block_len = int(blocks.shape[1])
        local = torch.arange(rank, blocks.shape[0], world)
        batches = ((blocks[idx], None, idx) for idx in local.split(batch_size))
        total = math.ceil(local.numel() / batch_size)
        global_loss_limit = True

    device = adapter.embed_tokens.weight.device
    was_training = model.training
    model.eval()
    recorder = _Recorder(adapter, agg, "block_influence" in criteria).attach()
    loss_batches, base_nll, base_count, seen_fp = [], 0.0, 0.0, []
    from tqdm.auto import tqdm

    try:
        for ids, mask, gidx in tqdm(batches, total=total, desc="importance", disable=not progress or rank != 0):
            ids = ids.to(device)
            mask = None if mask is None else mask.to(device)
            recorder.set_mask(mask)
            recorder.samples += float(ids.shape[0] if mask is None else int(mask.bool().any(1).sum()))
            recorder.tokens += float(ids.numel() if mask is None else int(mask.sum()))
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            if calib_fp is None:
                seen_fp.append(ids.cpu())
            if need_loss:
                keep = _loss_subset(gidx, ids.shape[0], loss_num_samples, global_loss_limit, loss_batches)
                if keep is not None:
                    sub_ids, sub_mask = ids[keep], None if mask is None else mask[keep]
                    nll, cnt = _nll_sum(model, sub_ids, sub_mask, logits=logits[keep])
                    base_nll, base_count = base_nll + nll, base_count + cnt
                    loss_batches.append((sub_ids, sub_mask))
            del logits
    finally:
        recorder.detach()
        recorder.set_mask(None)

    # --- depth: LM loss with layers removed (extra passes) ---
    layer_losses = torch.zeros(L, 2, dtype=torch.float64)
    block_raw = {n: torch.zeros(L - n + 1, 2, dtype=torch.float64) for n in block_sizes}
    removals = ([(("layer", i), [i]) for i in range(L)] if "lm_loss" in criteria else [])
    removals += [(("block", n, j), list(range(j, j + n))) for n in block_sizes for j in range(L - n + 1)]
    for key, drop in tqdm(removals, desc="depth (LM loss)", disable=not progress or rank != 0 or not removals):
        with skip_layers(adapter, drop, recorder.layer_returns_tuple):
            acc = [0.0, 0.0]
            for sub_ids, sub_mask in loss_batches:
                nll, cnt = _nll_sum(model, sub_ids, sub_mask)
                acc[0] += nll
                acc[1] += cnt
        target = layer_losses[key[1]] if key[0] == "layer" else block_raw[key[1]][key[2]]
        target += torch.tensor(acc, dtype=torch.float64)
    model.train(was_training)

    # --- reduce over ranks ---
    raw = recorder.raw_tensors() + [layer_losses, torch.tensor([base_nll, base_count], dtype=torch.float64)]
    raw += [block_raw[n] for n in block_sizes]
    if world > 1:
        raw = _all_reduce(raw)
    else:
        raw = [t.cpu() for t in raw]
    raw_iter = iter(raw)
    for stats in (recorder.heads, recorder.neurons, *recorder.norms):
        for s in stats:
            s.sum, s.sq = next(raw_iter), next(raw_iter)
    cos_sum = [next(raw_iter) for _ in range(L)]
    tokens, samples = float(next(raw_iter)), float(next(raw_iter))
    layer_losses, base = next(raw_iter), next(raw_iter)
    block_raw = {n: next(raw_iter) for n in block_sizes}

    # --- final scores ---
    s = adapter.sizes()
    head_channels = torch.stack([_finalize(st, samples, agg.batch) for st in recorder.heads])  # [L, nH*hd]
    heads = head_channels.view(L, s.num_attention_heads, s.head_dim).norm(dim=-1)
    neurons = torch.stack([_finalize(st, samples, agg.batch) for st in recorder.neurons])
    channels = torch.stack([_finalize(st, samples, agg.batch) for layer in recorder.norms for st in layer]).sum(0)
    depth = {}
    if "block_influence" in criteria:
        depth["block_influence"] = torch.stack([1.0 - c / max(tokens, 1.0) for c in cos_sum]).float()
    base_loss = float(base[0] / base[1]) if need_loss and base[1] > 0 else None
    if "lm_loss" in criteria:
        depth["lm_loss"] = (layer_losses[:, 0] / layer_losses[:, 1].clamp_min(1.0) - base_loss).float()
    block_losses = {n: (r[:, 0] / r[:, 1].clamp_min(1.0)).float() for n, r in block_raw.items()}

    if calib_fp is None:
        from .data import fingerprint

        calib_fp = fingerprint(*seen_fp) if seen_fp else None
    manifest = {
        "model": model_identity(model),
        "calibration": {"fingerprint": calib_fp, "samples": int(samples), "tokens": int(tokens),
                        "seq_len": block_len, "world_size": world},
        "settings": {"aggregation": asdict(agg), "batch_size": batch_size, "num_samples": num_samples,
                     "depth_criteria": list(criteria), "block_sizes": list(block_sizes),
                     "loss_num_samples": loss_num_samples},
    }
    return ImportanceScores(heads=heads, neurons=neurons, channels=channels, depth=depth, block_losses=block_losses,
                            base_loss=base_loss, manifest=manifest)


def _loader_batches(loader, num_samples: int | None):
    """Batches from a DataLoader / iterable, truncated at ``num_samples`` samples (on this rank)."""
    seen = 0
    for item in loader:
        ids, mask = _as_batch(item)
        if num_samples is not None:
            if seen >= num_samples:
                return
            take = min(ids.shape[0], num_samples - seen)
            ids, mask = ids[:take], None if mask is None else mask[:take]
        seen += ids.shape[0]
        yield ids, mask, None


def _loss_subset(gidx, batch: int, limit: int | None, global_limit: bool, loss_batches) -> torch.Tensor | None:
    """Rows of this batch used by the LM-loss passes: the first ``limit`` samples of the data (global indices for
    packed data, this rank's first ``limit`` for a loader)."""
    if limit is None:
        return torch.arange(batch)
    if global_limit:
        keep = torch.nonzero(gidx < limit).flatten()
    else:
        used = sum(b[0].shape[0] for b in loss_batches)
        keep = torch.arange(min(batch, max(limit - used, 0)))
    return keep if keep.numel() else None


__all__ = ["AGGREGATIONS", "Aggregation", "DEPTH_CRITERIA", "ImportanceScores", "ScoresMismatchError",
           "estimate_importance", "model_identity", "skip_layers"]
