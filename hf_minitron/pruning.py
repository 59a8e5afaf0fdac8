"""Structured pruning to a target architecture: ``prune_model(model, targets, scores)``.

Width: keep the highest-scoring embedding channels, MLP neurons, KV groups and query heads (the same number in every
layer, so the result is a stock config). Depth: drop layers by a depth criterion or an explicit list. The pruned
weights are loaded into a fresh model built from the target config, so module attributes, ``layer_idx`` and the
rotary/embedding buffers are exactly those of a model trained at that size; ``save_pretrained`` output loads with
``AutoModelForCausalLM.from_pretrained`` and no custom code.

Exactness: removing units that carry no signal (zero activations, identity layers, hidden channels that are zero in
the residual stream) leaves the logits unchanged. RMSNorms average over fewer channels afterwards, so their weights
are multiplied by ``sqrt(hidden / new_hidden)``; a ``hidden ** p`` embedding scale (Gemma) is compensated in the
embedding weights (and, when tied, in the final norm); the norm epsilon in the config grows by ``hidden / new_hidden``
so the eps term scales too (per-head ``q_norm``/``k_norm`` share that epsilon: for them the change is of the order
``eps / mean(q**2)``, negligible).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import Sequence

import torch
from torch import nn

from .arch import get_adapter
from .importance import ImportanceScores
from .loading import check_output_dir, save_model

TARGET_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers")


@dataclass
class PruningTargets:
    """Target sizes (``None`` = keep). ``num_hidden_layers`` drops layers by ``depth_criterion`` (``None``: the best
    criterion the scores hold, see :data:`DEPTH_PREFERENCE`); ``drop_layers`` names them explicitly instead."""

    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    num_hidden_layers: int | None = None
    drop_layers: Sequence[int] | None = None
    depth_criterion: str | None = None

    @classmethod
    def parse(cls, value) -> "PruningTargets":
        if isinstance(value, PruningTargets):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"targets must be a dict or PruningTargets, got {type(value).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown pruning target(s) {unknown}; valid targets: {sorted(known)}")
        return cls(**value)


#: Order in which ``depth_criterion=None`` picks a criterion present in the scores. Block Influence comes first: on
#: SmolLM2-135M (drop 15 of 30 layers, ``benchmarks/prune_quality.py``) it gave the lowest held-out perplexity of the
#: three, ahead of the per-layer LM-loss increase and the contiguous-block search.
DEPTH_PREFERENCE = ("block_influence", "lm_loss", "block")


@dataclass(frozen=True)
class PruningPlan:
    """What to keep (old indices, ascending): layers, per kept layer the query heads / KV groups / neurons, and the
    hidden channels. ``None`` = keep all."""

    kept_layers: list[int]
    dropped_layers: list[int]
    heads: dict[int, list[int]] | None
    kv_groups: dict[int, list[int]] | None
    neurons: dict[int, list[int]] | None
    channels: list[int] | None
    sizes: dict
    depth_criterion: str | None


# --- validation + planning -----------------------------------------------------------------------------------------
def plan_pruning(model, targets, scores: ImportanceScores | None) -> PruningPlan:
    """Validate ``targets`` against the model and the scores (every error names its field) and choose what to keep."""
    t = PruningTargets.parse(targets)
    a = get_adapter(model)
    src = a.sizes()
    for name in TARGET_FIELDS:
        value = getattr(t, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"targets.{name}={value!r}; must be an int")
        if value < 1:
            raise ValueError(f"targets.{name}={value}; must be >= 1")
        if value > getattr(src, name):
            raise ValueError(f"targets.{name}={value} is larger than the model's {getattr(src, name)}; pruning only "
                             "shrinks a model")

    # depth
    L = src.num_hidden_layers
    drop: list[int] | None = None
    if t.drop_layers is not None:
        drop = [int(i) for i in t.drop_layers]
        bad = [i for i in drop if not 0 <= i < L]
        if bad:
            raise ValueError(f"targets.drop_layers has unknown layer index(es) {bad}; the model has layers 0..{L - 1}")
        if len(set(drop)) != len(drop):
            raise ValueError(f"targets.drop_layers={drop} repeats a layer index")
        if len(drop) >= L:
            raise ValueError(f"targets.drop_layers removes all {L} layers; keep at least one")
        if t.num_hidden_layers is not None and t.num_hidden_layers != L - len(drop):
            raise ValueError(f"targets.num_hidden_layers={t.num_hidden_layers} but targets.drop_layers leaves "
                             f"{L - len(drop)} layers; give one of them")
    new_layers = t.num_hidden_layers if t.num_hidden_layers is not None else L - len(drop or [])
    criterion = None
    if drop is None and new_layers < L:
        if scores is None:
            raise ValueError("targets.num_hidden_layers needs importance scores (scores=None); pass scores from "
                             "estimate_importance or an explicit targets.drop_layers list")
        available = scores.available_depth_criteria(L - new_layers)
        criterion = t.depth_criterion
        if criterion is None:
            criterion = next((c for c in DEPTH_PREFERENCE if c in available), None)
            if criterion is None:
                raise ValueError("targets.num_hidden_layers: the scores hold no depth criterion; re-run "
                                 "estimate_importance with depth_criteria=('block_influence', 'lm_loss')")
        elif criterion not in available:
            hint = (f"block_sizes=({L - new_layers},)" if criterion == "block" else f"'{criterion}' in depth_criteria")
            raise ValueError(f"targets.depth_criterion={criterion!r} is not available in the scores (available for "
                             f"dropping {L - new_layers} layers: {available}); re-run estimate_importance with {hint}")

    # attention heads
    ratio = src.num_attention_heads // src.num_key_value_heads
    kv = t.num_key_value_heads if t.num_key_value_heads is not None else src.num_key_value_heads
    if t.num_attention_heads is not None:
        heads = t.num_attention_heads
        if heads % kv:
            raise ValueError(f"targets.num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}; "
                             "query heads are removed equally within each KV group")
        if heads // kv > ratio:
            raise ValueError(f"targets.num_attention_heads={heads} with num_key_value_heads={kv} needs {heads // kv} "
                             f"query heads per KV group but the model has {ratio}")
    else:
        heads = kv * ratio

    new = dict(hidden_size=t.hidden_size or src.hidden_size,
               intermediate_size=t.intermediate_size or src.intermediate_size,
               num_attention_heads=heads, num_key_value_heads=kv, num_hidden_layers=new_layers)
    width_needs = {"channels": new["hidden_size"] < src.hidden_size,
                   "neurons": new["intermediate_size"] < src.intermediate_size,
                   "heads": heads < src.num_attention_heads}
    field_of = {"channels": "hidden_size", "neurons": "intermediate_size", "heads": "num_attention_heads"}
    if any(width_needs.values()) and scores is None:
        first = next(k for k, v in width_needs.items() if v)
        raise ValueError(f"targets.{field_of[first]} needs importance scores (scores=None); pass scores from "
                         "estimate_importance")
    if scores is not None:
        scores.check_model(model)

    # the target config must build (family constraints), checked on the meta device before any real work
    if drop is None:
        drop = scores.layers_to_drop(L - new_layers, criterion) if new_layers < L else []
    kept = [i for i in range(L) if i not in set(drop)]
    try:
        config = a.pruned_config(kept_layers=kept, **{k: v for k, v in new.items() if k != "num_hidden_layers"})
        _build(config, device="meta", dtype=model.dtype)
    except Exception as err:  # noqa: BLE001 - re-raised with the targets named
        cause = getattr(err, "__cause__", None) or err
        raise ValueError(f"targets {_shown(new)} do not give a valid {model.config.model_type} config: {cause} "
                         "(choose sizes the family's config accepts, e.g. hidden_size a multiple of "
                         "num_attention_heads where the config requires it)") from err

    # what to keep
    def top(values: torch.Tensor, k: int) -> list[int]:
        return sorted(int(i) for i in torch.topk(values.float(), k, sorted=False).indices)

    head_keep = group_keep = None
    if heads < src.num_attention_heads:
        group_scores = scores.kv_group_scores(src.num_key_value_heads)
        head_keep, group_keep = {}, {}
        for i in kept:
            groups = top(group_scores[i], kv)
            per_group = heads // kv
            chosen = []
            for g in groups:
                members = scores.heads[i, g * ratio : (g + 1) * ratio]
                chosen += [g * ratio + j for j in top(members, per_group)]
            head_keep[i], group_keep[i] = chosen, groups
    neuron_keep = ({i: top(scores.neurons[i], new["intermediate_size"]) for i in kept}
                   if width_needs["neurons"] else None)
    channel_keep = top(scores.channels, new["hidden_size"]) if width_needs["channels"] else None
    return PruningPlan(kept_layers=kept, dropped_layers=sorted(drop), heads=head_keep, kv_groups=group_keep, neurons=neuron_keep,
                       channels=channel_keep, sizes=new, depth_criterion=criterion)


def _shown(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def _build(config, device, dtype):
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    with torch.device(device), no_init_weights():
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


# --- weight slicing ------------------------------------------------------------------------------------------------
def _rows(slices, per_slice_index) -> dict[int, tuple[nn.Linear, list[torch.Tensor]]]:
    """Group kept output rows by linear (fused projections collect the rows of all their slices, in slice order)."""
    out: dict[int, tuple[nn.Linear, list[torch.Tensor]]] = {}
    for sl, idx in zip(slices, per_slice_index):
        rows = torch.arange(sl.size) if idx is None else idx
        out.setdefault(id(sl.linear), (sl.linear, []))[1].append(rows + sl.start)
    return out


def _channel_rows(units: list[int] | None, width: int) -> torch.Tensor | None:
    """Row indices of ``width``-wide units (heads) ``units``."""
    if units is None:
        return None
    return (torch.tensor(units)[:, None] * width + torch.arange(width)[None, :]).flatten()


@dataclass(frozen=True)
class TensorRule:
    """How one tensor of the pruned model is made from one tensor of the source (:func:`apply_rule`).

    ``source``: the source state-dict key. ``rows``/``cols``: indices kept along dims 0/1 (``None``: all). A hidden-size
    norm (``norm_offset`` set) becomes ``(offset + w)[rows] * scale - offset``, computed in fp32; any other tensor is
    sliced and, when ``scale != 1`` (a scaled embedding), multiplied by ``scale`` in fp32. ``tied_to``: the pruned
    key this tensor is tied to (an LM head tied to the embedding), made once and shared, never written twice.
    """

    source: str
    rows: torch.Tensor | None = None
    cols: torch.Tensor | None = None
    scale: float = 1.0
    norm_offset: float | None = None
    tied_to: str | None = None


def apply_rule(rule: TensorRule, tensor: torch.Tensor) -> torch.Tensor:
    """The pruned tensor ``rule`` makes from the source ``tensor``: the one slicing step of both the in-memory
    (:func:`prune_model` on a model) and the shard-streamed (:func:`hf_minitron.streaming.prune_checkpoint`) paths, so
    their outputs agree byte for byte. May return ``tensor`` itself when nothing changes."""
    if rule.norm_offset is not None:
        eff = tensor.float() + rule.norm_offset
        if rule.rows is not None:
            eff = eff.index_select(0, rule.rows.to(eff.device))
        return (eff * rule.scale - rule.norm_offset).to(tensor.dtype)
    out = tensor
    if rule.rows is not None:
        out = out.index_select(0, rule.rows.to(out.device))
    if rule.cols is not None:
        out = out.index_select(1, rule.cols.to(out.device))
    return (out.float() * rule.scale).to(out.dtype) if rule.scale != 1.0 else out


def pruning_rules(model, plan: PruningPlan) -> dict[str, TensorRule]:
    """``{pruned key: rule}`` for every tensor of the pruned model's state dict (kept layers renumbered), from the
    source model's structure alone: ``model`` may hold its parameters on the meta device."""
    a = get_adapter(model)
    src = a.sizes()
    names = {id(m): n for n, m in model.named_modules()}
    rules: dict[str, TensorRule] = {}
    ch = None if plan.channels is None else torch.tensor(plan.channels)

    def linear_rules(linear: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None):
        name = names[id(linear)]
        rules[name + ".weight"] = TensorRule(name + ".weight", rows=rows, cols=cols)
        if linear.bias is not None:
            rules[name + ".bias"] = TensorRule(name + ".bias", rows=rows)

    norm_scale = math.sqrt(1.0 if ch is None else src.hidden_size / len(plan.channels))

    def norm_rule(norm: nn.Module, scale: float):
        key = names[id(norm)] + ".weight"
        rules[key] = TensorRule(key, rows=ch, scale=scale, norm_offset=a.norm_weight_offset)

    for i in plan.kept_layers:
        attn, mlp = a.attention(i), a.mlp(i)
        q_idx = _channel_rows(None if plan.heads is None else plan.heads[i], src.head_dim)
        kv_idx = _channel_rows(None if plan.kv_groups is None else plan.kv_groups[i], src.head_dim)
        n_idx = None if plan.neurons is None else torch.tensor(plan.neurons[i])
        readers = _rows([attn.q, attn.k, attn.v], [q_idx, kv_idx, kv_idx])
        readers.update(_rows([s for s in (mlp.gate, mlp.up) if s is not None],
                             [n_idx for s in (mlp.gate, mlp.up) if s is not None]))
        for linear, rows in readers.values():
            all_rows = torch.cat(rows)
            n = linear.out_features
            keep_all = all_rows.numel() == n and torch.equal(all_rows, torch.arange(n))
            linear_rules(linear, None if keep_all else all_rows, ch)
        linear_rules(attn.o, ch, q_idx)
        linear_rules(mlp.down, ch, n_idx)
        for norm in a.hidden_norms(i):
            norm_rule(norm, norm_scale)

    emb_key = names[id(a.embed_tokens)] + ".weight"
    emb_ratio = a.embedding_scale() / a.embedding_scale(plan.sizes["hidden_size"])
    rules[emb_key] = TensorRule(emb_key, cols=ch, scale=emb_ratio)
    norm_rule(a.final_norm, norm_scale / (emb_ratio if a.tied_embeddings else 1.0))
    head_key = names[id(a.lm_head)] + ".weight"
    if a.tied_embeddings:
        rules[head_key] = TensorRule(emb_key, tied_to=emb_key)
    else:
        linear_rules(a.lm_head, None, ch)

    # everything else is copied; layers are renumbered
    layers_prefix = names[id(a.layers)] + "."
    renumber = {old: k for k, old in enumerate(plan.kept_layers)}
    out: dict[str, TensorRule] = {}
    for key in model.state_dict(keep_vars=True):
        rule = rules.get(key, TensorRule(key))
        if key.startswith(layers_prefix):
            old, rest = key[len(layers_prefix):].split(".", 1)
            if int(old) not in renumber:
                continue
            key = f"{layers_prefix}{renumber[int(old)]}.{rest}"
        out[key] = rule
    return out


@torch.no_grad()
def _pruned_state_dict(model, plan: PruningPlan) -> dict[str, torch.Tensor]:
    rules = pruning_rules(model, plan)
    sd = dict(model.state_dict(keep_vars=False))
    out = {key: apply_rule(rule, sd[rule.source]) for key, rule in rules.items() if rule.tied_to is None}
    out.update({key: out[rule.tied_to] for key, rule in rules.items() if rule.tied_to is not None})
    out = {key: out[key] for key in rules}  # the source's key order
    # no storage is shared with the source model
    source_ptrs = {t.data_ptr() for t in sd.values()}
    return {k: (v.clone() if v.data_ptr() in source_ptrs else v) for k, v in out.items()}


# --- public entry point --------------------------------------------------------------------------------------------
def prune_model(model, targets, scores: ImportanceScores | str | os.PathLike | None = None, *,
                out_dir: str | os.PathLike | None = None, tokenizer=None, overwrite: bool = False):
    """Prune ``model`` to ``targets`` (dict or :class:`PruningTargets`) using ``scores`` (an
    :class:`ImportanceScores` or a directory written by ``ImportanceScores.save``) and return the new model.

    The source model is not modified. Every target is validated before any work. With ``out_dir``, the pruned model
    (and ``tokenizer``) is written with the atomic :func:`~hf_minitron.loading.save_model`. The result lives on the
    source model's device (on CPU when the source is spread over several devices).

    ``model`` may instead be a safetensors checkpoint (a directory path or Hub id, as a ``str`` or path): it is then
    pruned tensor by tensor into ``out_dir`` (required) without loading it, by
    :func:`hf_minitron.streaming.prune_checkpoint`, and the output directory is returned.
    """
    if isinstance(model, (str, os.PathLike)):
        from .streaming import prune_checkpoint

        if out_dir is None:
            raise ValueError(f"prune_model({str(model)!r}, ...) streams the checkpoint's shards into out_dir; pass "
                             "out_dir=DIR (or load the model first to prune it in memory)")
        return prune_checkpoint(model, targets, scores, out_dir, tokenizer=tokenizer, overwrite=overwrite)
    if out_dir is not None:
        check_output_dir(out_dir, overwrite=overwrite)
    if isinstance(scores, (str, os.PathLike)):
        scores = ImportanceScores.load(scores, model=model)
    plan = plan_pruning(model, targets, scores)
    a = get_adapter(model)
    s = plan.sizes
    config = a.pruned_config(kept_layers=plan.kept_layers, **{k: v for k, v in s.items() if k != "num_hidden_layers"})
    state = _pruned_state_dict(model, plan)
    pruned = _build(config, device="cpu", dtype=model.dtype)
    pruned.load_state_dict({k: v.cpu() for k, v in state.items()}, strict=True, assign=True)
    pruned.tie_weights()
    devices = {p.device for p in model.parameters()}
    if len(devices) == 1 and next(iter(devices)).type != "cpu":
        pruned.to(next(iter(devices)))
    pruned.eval()
    pruned.config.name_or_path = getattr(model.config, "name_or_path", "") or ""
    get_adapter(pruned).check_consistent()
    if out_dir is not None:
        save_model(pruned, tokenizer, out_dir, overwrite=overwrite)
    return pruned


__all__ = ["DEPTH_PREFERENCE", "PruningPlan", "PruningTargets", "TensorRule", "apply_rule", "plan_pruning",
           "prune_model", "pruning_rules"]
