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
- ``depth``: per layer, higher = more important. ``block_influence`` (ShortGPT): per sample, 1 - the mean over its
  tokens of the cosine between the layer's input and output, then the mean over the samples (the last layer's output
  is taken before the final norm); ``lm_loss``: calibration LM loss with the layer removed minus the loss of the full
  model. ``block_losses[n]``: LM loss with layers ``j..j+n-1`` removed, for every start ``j`` (contiguous-block
  search).

Calibration texts become one sample per document by default (``packing=False``: the tokenizer's encoding with its
special tokens, truncated at ``seq_len``; documents sorted by length and right-padded per batch), or EOS-joined
blocks of ``seq_len`` tokens (``packing=True``). Documents matter for Block Influence: the first position of a
sequence is the attention sink, whose state a few layers rewrite (SmolLM2-135M: 1 - cos = 0.70 at position 0 of layer
11 against 0.036 elsewhere), and the per-document mean gives it the weight ShortGPT's does; in packed blocks it weighs
1/seq_len and such a layer ranks as unimportant (see the README's Pruning benchmark). A right-padded batch runs
without an attention mask (causal attention never lets a real token see the padding after it), so attention keeps
its fused path; the mask only decides which positions count.

The scoring pass runs the decoder without the LM head; only the LM-loss criteria project hidden states through the
head, ``chunk`` tokens at a time (:func:`lm_nll_sum`), so no ``[batch, seq, vocab]`` logits exist.
:func:`scoring_memory` estimates a run's peak memory, :func:`fit_batch_size` sizes the batch to the memory available
(``batch_size="auto"``), and an explicit batch whose estimate exceeds it is refused before any forward
(:class:`ScoringMemoryError`).

Aggregation (per channel, fp32): over the sequence ``mean`` of ``|x|`` (default), ``l2`` or ``var`` of ``x``; then over
the samples ``l2`` (default), ``mean`` or ``var``. Positions with attention mask 0 never count; a sample with no
unmasked position counts for nothing. Under ``torch.distributed`` each rank scores its shard of the data and the raw
sums are all-reduced, so every rank holds what one process computes over all the data.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Sequence

import torch

from .arch import get_adapter
from .errors import ConfigError, MinitronError
from .kernels.importance import abs_mean_accumulate

AGGREGATIONS = ("mean", "l2", "var")
DEPTH_CRITERIA = ("block_influence", "lm_loss", "block")
DEFAULT_DEPTH_CRITERIA = ("block_influence",)  # what the default pruning path uses; the LM-loss criteria are opt-in
SCORES_FILE = "importance.safetensors"
MANIFEST_FILE = "manifest.json"
FORMAT = "hf-minitron-importance"


class ScoresMismatchError(MinitronError, ValueError):
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

        from .outputs import atomic_output_dir

        tensors = {"heads": self.heads, "neurons": self.neurons, "channels": self.channels}
        tensors.update({f"depth.{k}": v for k, v in self.depth.items()})
        tensors.update({f"block_losses.{n}": v for n, v in self.block_losses.items()})
        manifest = {**self.manifest, "format": FORMAT, "version": 1, "base_loss": self.base_loss}
        with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
            save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(tmp / SCORES_FILE))
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return Path(out_dir).expanduser().resolve()

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


def _texts(calib, tokenizer, text_field: str):
    from .data import load_texts

    if tokenizer is None:
        raise ValueError("tokenizer=None: calibration texts need a tokenizer; pass tokenizer=... (or pre-tokenized "
                         "calib as a [num_samples, seq_len] tensor or a DataLoader of input_ids)")
    return load_texts(calib, text_field=text_field)


def calibration_blocks(calib, tokenizer, seq_len: int, num_samples: int | None, text_field: str = "text") -> torch.Tensor:
    """``[n, seq_len]`` packed token blocks from texts / a file / a ``datasets.Dataset`` / a token tensor."""
    from .data import token_blocks

    if isinstance(calib, torch.Tensor):
        if calib.dim() != 2:
            raise ValueError(f"calib tensor must be [num_samples, seq_len] token ids, got shape {tuple(calib.shape)}")
        return calib[:num_samples] if num_samples else calib
    return token_blocks(_texts(calib, tokenizer, text_field), tokenizer, seq_len, num_samples)


def calibration_documents(calib, tokenizer, seq_len: int, num_samples: int | None,
                          text_field: str = "text") -> list[torch.Tensor]:
    """One 1-D token tensor per document (the first ``num_samples`` with at least 2 tokens): the tokenizer's encoding
    with its special tokens (a BOS where the tokenizer adds one), truncated at ``seq_len``."""
    rows = []
    for text in _texts(calib, tokenizer, text_field):
        if num_samples is not None and len(rows) >= num_samples:
            break
        ids = tokenizer(text)["input_ids"][:seq_len]
        if len(ids) >= 2:
            rows.append(torch.tensor(ids, dtype=torch.long))
    if not rows:
        raise ValueError("no calibration text gives at least 2 tokens")
    return rows


def _document_batches(docs: list[torch.Tensor], indices: torch.Tensor, batch_size: int, pad_id: int):
    """Right-padded ``(ids, mask, global indices)`` batches of ``docs[indices]``, longest first (little padding; the
    first batch is the largest)."""
    order = sorted(indices.tolist(), key=lambda i: -docs[i].numel())
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = docs[idx[0]].numel()
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, : docs[i].numel()] = docs[i]
            mask[row, : docs[i].numel()] = 1
        yield ids, mask, torch.tensor(idx)


# --- memory --------------------------------------------------------------------------------------------------------
class ScoringMemoryError(ConfigError):
    """A scoring batch whose estimated memory exceeds what the device has available."""


@dataclass(frozen=True)
class ScoringMemory:
    """Estimated peak memory of a scoring run, in bytes: the weights, plus the largest forward's activations (and
    the LM-loss logit chunk). ``transient`` is what a batch adds on top of the loaded model."""

    weights: int
    activations: int
    logits: int

    @property
    def transient(self) -> int:
        return self.activations + self.logits

    @property
    def total(self) -> int:
        return self.weights + self.transient

    def describe(self) -> str:
        gib = 1 << 30
        return (f"{self.total / gib:.2f} GiB (weights {self.weights / gib:.2f} + activations "
                f"{self.activations / gib:.2f} + LM-loss logits {self.logits / gib:.2f})")


def loss_chunk_tokens(vocab_size: int) -> int:
    """Tokens per LM-head chunk of the LM-loss criteria: about 16 M fp32 logits (64 MiB) per chunk."""
    from .nll import chunk_tokens_for

    return chunk_tokens_for(vocab_size)


def scoring_memory(model_or_config, batch_size: int, seq_len: int, dtype: torch.dtype | None = None, *,
                   lm_loss: bool = False, attention_mask: bool = False) -> ScoringMemory:
    """Peak-memory estimate of :func:`estimate_importance` with batches of ``batch_size`` x ``seq_len`` tokens.

    Per token and layer the largest live set is the MLP's (the residual, the norm output and three
    ``intermediate_size`` tensors: gate activation, up projection, their product), or attention's (q, k, v and the
    rotary temporaries), plus the fp32 temporaries of the scoring hooks. Eager attention (or an explicit attention
    mask, ``attention_mask=True``) adds the ``[batch, heads, seq, seq]`` scores twice; fused (SDPA) attention about
    12 bytes per ``[batch, seq, seq]`` position pair (measured: ``benchmarks/importance_memory.py``). ``lm_loss`` adds one chunk of
    fp32 logits (:func:`loss_chunk_tokens`) three times (logits, log-softmax, softcap) and the gathered hidden
    states. ``model_or_config``: a model (weights counted from its parameters) or a ``transformers`` config.
    """
    config = getattr(model_or_config, "config", model_or_config)
    if dtype is None:
        dtype = getattr(model_or_config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    b = torch.empty((), dtype=dtype).element_size()
    H, I, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    nH = config.num_attention_heads
    d = getattr(config, "head_dim", None) or H // nH
    nKV = getattr(config, "num_key_value_heads", None) or nH
    V = config.vocab_size
    if hasattr(model_or_config, "parameters"):
        weights = sum(p.numel() * p.element_size() for p in {id(p): p for p in model_or_config.parameters()}.values())
    else:
        heads = 1 if getattr(config, "tie_word_embeddings", True) else 2
        weights = b * (L * (H * d * (2 * nH + 2 * nKV) + 3 * H * I + 2 * H) + heads * V * H)
    mlp = 2 * H + 3 * I
    attention = 2 * H + (nH + 2 * nKV) * d + 3 * nH * d
    upcast = 0 if b >= 4 else 3 * H  # fp32 copies in the norms and the cosine hook
    per_token = b * max(mlp, attention) + 4 * (max(I, nH * d, H) + H + upcast)
    tokens = batch_size * seq_len
    activations = tokens * per_token
    if attention_mask or getattr(config, "_attn_implementation", None) == "eager":
        activations += 2 * 4 * batch_size * nH * seq_len * seq_len
    else:  # fused attention still grows with seq**2 (measured on CPU, SmolLM2, 1 x 4096 and 8 x 4096: ~12 B per pair)
        activations += 12 * batch_size * seq_len * seq_len
    logits = 0
    if lm_loss:
        logits = 3 * 4 * loss_chunk_tokens(V) * V + tokens * H * b
    return ScoringMemory(weights=int(weights), activations=int(activations), logits=int(logits))


def available_memory(device: torch.device | str | None = None) -> int:
    """Bytes a new allocation can use now: free memory of a CUDA device, ``MemAvailable`` of the host otherwise."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def fit_batch_size(model, seq_len: int, *, dtype: torch.dtype | None = None, lm_loss: bool = False,
                   attention_mask: bool = False, available: int | None = None, fraction: float = 0.8,
                   max_batch_size: int = 1024) -> int:
    """The largest batch (<= ``max_batch_size``) whose :func:`scoring_memory` transient part fits in ``fraction``
    of the memory available on the model's device (or of ``available`` bytes); at least 1."""
    if available is None:
        available = available_memory(next(model.parameters()).device)
    one, two = (scoring_memory(model, n, seq_len, dtype, lm_loss=lm_loss, attention_mask=attention_mask).transient
                for n in (1, 2))
    per_sample, fixed = two - one, 2 * one - two  # the estimate is linear in the batch
    fit = int((fraction * available - fixed) // max(per_sample, 1))
    return max(1, min(max_batch_size, fit))


def _check_memory(model, batch_size: int, seq_len: int, lm_loss: bool, masked: bool) -> None:
    """Refuse (before any forward) a batch whose estimate exceeds the memory available on the model's device."""
    device = next(model.parameters()).device
    need = scoring_memory(model, batch_size, seq_len, lm_loss=lm_loss, attention_mask=masked)
    free = available_memory(device)
    if need.transient > free:
        fit = fit_batch_size(model, seq_len, lm_loss=lm_loss, attention_mask=masked, available=free)
        raise ScoringMemoryError(
            f"batch_size={batch_size} x seq_len={seq_len} needs about {need.describe()}, but only "
            f"{free / (1 << 30):.2f} GiB is available on {device} beyond the loaded model; pass batch_size={fit} "
            f"(or batch_size='auto'), or a shorter seq_len")


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
        self.bi_sum = [torch.zeros((), dtype=torch.float64) for _ in range(L)]  # sum over samples of 1 - mean cos
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
            if m is None:
                per_sample = cos.double().mean(1)
            else:  # a sample with no unmasked position counts for nothing (1 - cos = 0)
                n = m.sum(1)
                per_sample = torch.where(n > 0, (cos.double() * m).sum(1) / n.clamp_min(1), 1.0)
            self.bi_sum[i] += (1.0 - per_sample).sum().cpu()
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
        return out + self.bi_sum + [self.tokens, self.samples]


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


def lm_nll_sum(adapter, hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None,
               chunk_tokens: int | None = None) -> tuple[float, float]:
    """Sum of next-token NLL from the final hidden states ``[batch, seq, hidden]`` through the LM head (and the final
    logit soft-cap), over positions whose token and target are both unmasked, and their count; ``chunk_tokens``
    positions at a time (default :func:`loss_chunk_tokens`): no ``[batch, seq, vocab]`` logits
    (:func:`hf_minitron.nll.next_token_nll_sum`)."""
    from .nll import next_token_nll_sum

    head, cap = adapter.lm_head, adapter.logit_softcap

    def project(h):
        logits = head(h).float()
        return torch.tanh(logits / cap) * cap if cap else logits

    return next_token_nll_sum(hidden, ids, mask, project=project,
                              chunk_tokens=chunk_tokens or loss_chunk_tokens(head.weight.shape[0]))


def _backbone(adapter, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The decoder's final hidden states (after the final norm); no LM head."""
    return adapter.decoder(input_ids=ids, attention_mask=mask, use_cache=False)[0]


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
@dataclass
class _Calibration:
    """This rank's batches and what the manifest records about them."""

    batches: Iterable           # (ids, mask, global row indices or None)
    total: int | None           # number of batches, for the progress bar
    batch_size: int | str       # resolved from "auto" for texts and tensors
    fingerprint: str | None     # None: computed from the batches as they pass (a loader)
    seq_len: int | None         # longest row
    packing: bool | None        # None: pre-tokenized input
    mask_in_forward: bool       # False: right-padded rows, the mask only selects the positions that count


def _calibration(calib, tokenizer, *, seq_len, num_samples, text_field, packing, batch_size, fit, rank,
                 world) -> _Calibration:
    """Rows (packed blocks or documents) split into this rank's batches; ``fit(longest_row)`` sizes an ``"auto"``
    batch."""
    from .data import fingerprint

    if _is_loader(calib):
        return _Calibration(_loader_batches(calib, num_samples), None, batch_size, None, None, None, True)
    if packing or isinstance(calib, torch.Tensor):
        blocks = calibration_blocks(calib, tokenizer, seq_len, num_samples, text_field)
        longest = int(blocks.shape[1])
        batch_size = fit(longest) if batch_size == "auto" else batch_size
        local = torch.arange(rank, blocks.shape[0], world)
        batches = [(blocks[idx], None, idx) for idx in local.split(batch_size)]
        return _Calibration(batches, len(batches), batch_size, fingerprint(blocks), longest,
                            None if isinstance(calib, torch.Tensor) else True, False)
    docs = calibration_documents(calib, tokenizer, seq_len, num_samples, text_field)
    longest = max(d.numel() for d in docs)
    batch_size = fit(longest) if batch_size == "auto" else batch_size
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = list(_document_batches(docs, torch.arange(rank, len(docs), world), batch_size, pad or 0))
    return _Calibration(batches, len(batches), batch_size, fingerprint(*docs), longest, False, False)


def _check_criteria(depth_criteria, block_sizes, num_layers: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
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
    for n in block_sizes:
        if not 1 <= n < num_layers:
            raise ValueError(f"block_sizes contains {n}; each size must be in [1, {num_layers - 1}] for a "
                             f"{num_layers}-layer model")
    return criteria, block_sizes


@torch.no_grad()
def estimate_importance(
    model,
    calib,
    *,
    tokenizer=None,
    batch_size: int | Literal["auto"] = 8,
    seq_len: int = 4096,
    num_samples: int | None = 1024,
    packing: bool = False,
    depth_criteria: Sequence[str] = DEFAULT_DEPTH_CRITERIA,
    block_sizes: Sequence[int] = (),
    loss_num_samples: int | None = 64,
    aggregation=("mean", "l2"),
    text_field: str = "text",
    progress: bool = False,
    offload: Literal["layers"] | None = None,
    **offload_options,
) -> ImportanceScores:
    """Score heads, neurons, embedding channels and layers of ``model`` on calibration data.

    ``offload="layers"``: ``model`` is a safetensors checkpoint (directory or Hub id) scored one decoder layer at a
    time (:func:`hf_minitron.streaming.estimate_importance_streamed`; ``offload_options``: ``dtype``, ``device``,
    ``hidden_states``, ``offload_dir``, ``trust_remote_code``, ``revision``); the scores equal the in-memory ones.

    ``calib``: a list of texts, a ``.txt``/``.json``/``.jsonl`` file or a ``datasets.Dataset`` (with ``tokenizer``:
    the first ``num_samples`` documents truncated at ``seq_len`` tokens, or with ``packing=True`` ``num_samples``
    EOS-joined blocks of ``seq_len`` tokens), a ``[n, seq_len]`` token tensor, or a DataLoader / iterable of batches
    (tensors or dicts with ``input_ids`` and optionally ``attention_mask``; already sharded per rank when
    distributed). ``batch_size``: rows per forward, or ``"auto"`` (:func:`fit_batch_size`); a batch whose estimated
    memory exceeds what is available raises :class:`ScoringMemoryError` before any forward.

    ``depth_criteria``: ``block_influence`` (default; free, from the scoring pass), ``lm_loss`` (opt-in: one extra
    pass per layer over the first ``loss_num_samples`` samples, about ``num_layers + 1`` forwards of them) and
    ``block`` (opt-in: one extra pass per start position and size in ``block_sizes``).
    """
    if offload == "layers":
        from .streaming import estimate_importance_streamed

        return estimate_importance_streamed(
            model, calib, tokenizer=tokenizer, batch_size=batch_size, seq_len=seq_len, num_samples=num_samples,
            packing=packing, depth_criteria=depth_criteria, block_sizes=block_sizes,
            loss_num_samples=loss_num_samples, aggregation=aggregation, text_field=text_field, progress=progress,
            **offload_options)
    if offload is not None or offload_options:
        raise ConfigError(f"offload={offload!r} with {sorted(offload_options)}: the only offload is 'layers' (its "
                          "options need it)")
    agg = Aggregation.parse(aggregation)
    adapter = get_adapter(model)
    L = adapter.num_layers
    criteria, block_sizes = _check_criteria(depth_criteria, block_sizes, L)
    if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size={batch_size!r}; must be an int >= 1 or 'auto'")
    need_loss = "lm_loss" in criteria or "block" in criteria
    rank, world = _dist_info()
    cal = _calibration(calib, tokenizer, seq_len=seq_len, num_samples=num_samples, text_field=text_field,
                       packing=packing, batch_size=batch_size, rank=rank, world=world,
                       fit=lambda longest: fit_batch_size(model, longest, lm_loss=need_loss))
    if cal.seq_len is not None:
        _check_memory(model, cal.batch_size, cal.seq_len, need_loss, masked=False)

    was_training = model.training
    model.eval()
    recorder = _Recorder(adapter, agg, "block_influence" in criteria).attach()
    try:
        try:
            loss = _scoring_pass(adapter, recorder, cal, need_loss, loss_num_samples, progress and rank == 0)
        finally:
            recorder.detach()
            recorder.set_mask(None)
        removed = _removal_losses(adapter, criteria, block_sizes, loss.batches, recorder.layer_returns_tuple,
                                  progress and rank == 0)
    finally:
        model.train(was_training)

    # --- reduce over ranks ---
    layer_losses, block_raw = removed
    raw = recorder.raw_tensors() + [layer_losses, torch.tensor(loss.base, dtype=torch.float64)]
    raw += [block_raw[n] for n in block_sizes]
    raw = _all_reduce(raw) if world > 1 else [t.cpu() for t in raw]
    raw_iter = iter(raw)
    heads, neurons, channels, depth, tokens, samples = recorder_scores(recorder, adapter, raw_iter, agg, criteria)
    layer_losses, base = next(raw_iter), next(raw_iter)
    block_raw = {n: next(raw_iter) for n in block_sizes}

    # --- final scores ---
    base_loss = float(base[0] / base[1]) if need_loss and base[1] > 0 else None
    if "lm_loss" in criteria:
        depth["lm_loss"] = (layer_losses[:, 0] / layer_losses[:, 1].clamp_min(1.0) - base_loss).float()
    block_losses = {n: (r[:, 0] / r[:, 1].clamp_min(1.0)).float() for n, r in block_raw.items()}

    manifest = {
        "model": model_identity(model),
        "calibration": {"fingerprint": cal.fingerprint or loss.fingerprint, "samples": int(samples),
                        "tokens": int(tokens), "seq_len": cal.seq_len, "packing": cal.packing, "world_size": world},
        "settings": {"aggregation": asdict(agg), "batch_size": cal.batch_size, "num_samples": num_samples,
                     "packing": packing, "depth_criteria": list(criteria), "block_sizes": list(block_sizes),
                     "loss_num_samples": loss_num_samples},
    }
    return ImportanceScores(heads=heads, neurons=neurons, channels=channels, depth=depth, block_losses=block_losses,
                            base_loss=base_loss, manifest=manifest)


@dataclass
class _LossData:
    batches: list = field(default_factory=list)   # (ids, mask, mask_in_forward) kept for the LM-loss passes
    base: list = field(default_factory=lambda: [0.0, 0.0])  # NLL sum and count of the full model over them
    fingerprint: str | None = None


def _scoring_pass(adapter, recorder: _Recorder, cal: _Calibration, need_loss: bool, loss_num_samples, progress: bool):
    """One decoder pass over the calibration batches with the recording hooks (and the full model's LM loss on the
    LM-loss subset)."""
    from tqdm.auto import tqdm

    from .data import fingerprint

    device = adapter.embed_tokens.weight.device
    out, seen, checked = _LossData(), [], cal.seq_len is not None
    for ids, mask, gidx in tqdm(cal.batches, total=cal.total, desc="importance", disable=not progress):
        if not checked:  # a loader: its first batch is checked before its forward
            _check_memory(adapter.model, ids.shape[0], ids.shape[1], need_loss, masked=mask is not None)
            checked = True
        ids = ids.to(device)
        mask = None if mask is None else mask.to(device)
        fwd_mask = mask if cal.mask_in_forward else None
        recorder.set_mask(mask)
        recorder.samples += float(ids.shape[0] if mask is None else int(mask.bool().any(1).sum()))
        recorder.tokens += float(ids.numel() if mask is None else int(mask.sum()))
        hidden = _backbone(adapter, ids, fwd_mask)
        if cal.fingerprint is None:
            seen.append(ids.cpu())
        keep = _loss_subset(gidx, ids.shape[0], loss_num_samples, gidx is not None, out.batches) if need_loss else None
        if keep is not None:
            sub_ids, sub_mask = ids[keep], None if mask is None else mask[keep]
            nll, cnt = lm_nll_sum(adapter, hidden[keep], sub_ids, sub_mask)
            out.base[0] += nll
            out.base[1] += cnt
            out.batches.append((sub_ids, sub_mask, fwd_mask is not None))
        del hidden
    out.fingerprint = fingerprint(*seen) if seen else None
    return out


def _removal_losses(adapter, criteria, block_sizes, loss_batches, returns_tuple: bool, progress: bool):
    """LM loss (sum, count) with each layer removed (``[L, 2]``) and with each contiguous block removed."""
    from tqdm.auto import tqdm

    L = adapter.num_layers
    layer_losses = torch.zeros(L, 2, dtype=torch.float64)
    block_raw = {n: torch.zeros(L - n + 1, 2, dtype=torch.float64) for n in block_sizes}
    removals = [(layer_losses[i], [i]) for i in range(L)] if "lm_loss" in criteria else []
    removals += [(block_raw[n][j], list(range(j, j + n))) for n in block_sizes for j in range(L - n + 1)]
    for target, drop in tqdm(removals, desc="depth (LM loss)", disable=not progress or not removals):
        with skip_layers(adapter, drop, returns_tuple):
            for ids, mask, mask_in_forward in loss_batches:
                hidden = _backbone(adapter, ids, mask if mask_in_forward else None)
                nll, cnt = lm_nll_sum(adapter, hidden, ids, mask)
                target += torch.tensor([nll, cnt], dtype=torch.float64)
    return layer_losses, block_raw


def recorder_scores(recorder, adapter, raw_iter, agg: Aggregation, criteria):
    """``(heads, neurons, channels, depth, tokens, samples)`` from the reduced raw sums ``raw_iter`` (in
    :meth:`_Recorder.raw_tensors` order; consumed up to the sample count): the one final step of the in-memory and the
    layer-streamed scoring."""
    L = adapter.num_layers
    for stats in (recorder.heads, recorder.neurons, *recorder.norms):
        for st in stats:
            st.sum, st.sq = next(raw_iter), next(raw_iter)
    bi_sum = [next(raw_iter) for _ in range(L)]
    tokens, samples = float(next(raw_iter)), float(next(raw_iter))
    s = adapter.sizes()
    head_channels = torch.stack([_finalize(st, samples, agg.batch) for st in recorder.heads])  # [L, nH*hd]
    heads = head_channels.view(L, s.num_attention_heads, s.head_dim).norm(dim=-1)
    neurons = torch.stack([_finalize(st, samples, agg.batch) for st in recorder.neurons])
    channels = torch.stack([_finalize(st, samples, agg.batch) for layer in recorder.norms for st in layer]).sum(0)
    depth = {}
    if "block_influence" in criteria:
        depth["block_influence"] = (torch.stack(bi_sum) / max(samples, 1.0)).float()
    return heads, neurons, channels, depth, tokens, samples


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
    texts and tensors, this rank's first ``limit`` for a loader)."""
    if limit is None:
        return torch.arange(batch)
    if global_limit:
        keep = torch.nonzero(gidx < limit).flatten()
    else:
        used = sum(b[0].shape[0] for b in loss_batches)
        keep = torch.arange(min(batch, max(limit - used, 0)))
    return keep if keep.numel() else None


__all__ = ["AGGREGATIONS", "Aggregation", "DEFAULT_DEPTH_CRITERIA", "DEPTH_CRITERIA", "ImportanceScores",
           "ScoresMismatchError", "ScoringMemory", "ScoringMemoryError", "available_memory", "calibration_documents",
           "estimate_importance", "fit_batch_size", "lm_nll_sum", "loss_chunk_tokens", "model_identity",
           "scoring_memory", "skip_layers"]
