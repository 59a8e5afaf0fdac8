"""Architecture search under a parameter budget: enumerate, rank zero-shot after pruning, re-rank after distilling.

The Minitron papers pick a pruned architecture by enumerating the ones that fit a parameter budget, pruning the
teacher to each with the saved importance scores, ranking them by language-model loss right after pruning, and then
distilling the best few for a short fixed budget and ranking them again (NVIDIA's Model Optimizer stops after the
first ranking). This module does the same for any model an adapter covers:

- **Search space** (:func:`enumerate_architectures`): every combination of hidden size, MLP intermediate size, query
  heads / KV heads and (optionally) layer count whose non-embedding parameter count lies within ``tolerance`` of the
  budget. Widths are the multiples of ``width_multiple`` up to the teacher's (plus the teacher's own size); KV heads
  divide the teacher's, query heads are a multiple of the KV heads with at most the teacher's query heads per KV
  group (pruning removes query heads equally within each kept group); ``head_dim`` is kept. An architecture is kept
  only if the family's config class accepts it (e.g. transformers' ``LlamaConfig`` wants ``hidden_size`` divisible
  by ``num_attention_heads``). An axis that is not searched stays at the teacher's size.
- **Parameter count** (:class:`ParameterCount`): exact non-embedding parameters (what
  :func:`hf_minitron.count_parameters` reports for the pruned model: the input embedding and an untied LM head left
  out), computed from the teacher's layer shapes without building anything.
- **Zero-shot ranking** (:func:`zero_shot_losses`): each candidate is pruned in memory with
  :func:`hf_minitron.prune_model` from the given scores (no rescoring) and ranked by its mean next-token NLL (nats per
  token, :func:`hf_minitron.evaluation.mean_nll`) on fixed evaluation blocks; lower is better, ties keep enumeration
  order.
- **Re-ranking after distillation** (:func:`distilled_losses`): the ``top_n`` zero-shot best are each pruned afresh
  and distilled from the teacher with :class:`hf_minitron.DistillationTrainer` for the same steps, on the same
  training blocks in the same order with the same seed, then ranked by the same loss on the same evaluation blocks.
  :func:`kendall_tau` measures how much the two rankings of those candidates agree.

The chosen architecture is the best after distillation when candidates were distilled, else the zero-shot best.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from itertools import product
from typing import Iterable, Sequence

import torch

from .arch import count_parameters, get_adapter

ARCH_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers")
#: Searchable axes; "attention" searches query heads and KV heads together.
AXES = ("hidden_size", "intermediate_size", "attention", "depth")
WIDTH_AXES = ("hidden_size", "intermediate_size", "attention")


@dataclass(frozen=True)
class Architecture:
    """The sizes of a (pruned) model; :meth:`targets` is what :func:`hf_minitron.prune_model` takes."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    num_hidden_layers: int

    @classmethod
    def of(cls, model) -> "Architecture":
        s = get_adapter(model).sizes()
        return cls(**{k: getattr(s, k) for k in ARCH_FIELDS})

    def targets(self) -> dict:
        return asdict(self)


@dataclass
class Candidate:
    """One architecture of the search: its non-embedding ``params``, zero-shot loss and rank (1 = best), and, when it
    was distilled, its loss and rank after distillation and the seconds that took."""

    architecture: Architecture
    params: int
    zero_shot_loss: float | None = None
    zero_shot_rank: int | None = None
    distill_loss: float | None = None
    distill_rank: int | None = None
    distill_seconds: float | None = None

    def to_dict(self, budget: int | None = None) -> dict:
        out = {**self.architecture.targets(), "params": self.params}
        if budget:
            out["params_vs_budget"] = round(self.params / budget, 4)
        out.update(zero_shot_loss=self.zero_shot_loss, zero_shot_rank=self.zero_shot_rank,
                   distill_loss=self.distill_loss, distill_rank=self.distill_rank,
                   distill_seconds=self.distill_seconds)
        return out


# --- parameter counting ----------------------------------------------------------------------------------------------
class ParameterCount:
    """Non-embedding parameter count of any pruned version of ``model``, from its layer shapes.

    Per layer: every linear that reads the hidden state has ``rows * hidden`` weights (+ ``rows`` bias), its rows
    being ``heads * head_dim`` (q), ``kv_heads * head_dim`` (k, v) or ``intermediate`` (gate, up), summed over the
    projections a fused linear holds; the attention output and MLP down projections have ``hidden * (heads *
    head_dim | intermediate)`` weights (+ ``hidden`` bias); hidden-size norms scale with ``hidden``; anything else in
    the layer (per-head q/k norms) is constant. Outside the layers: the final norm scales with ``hidden``; the input
    embedding and an untied LM head are not counted. The count at the model's own sizes is checked against the
    model's real parameters when the counter is built.
    """

    def __init__(self, model):
        a = get_adapter(model)
        s = a.sizes()
        self.head_dim = s.head_dim
        attn, mlp = a.attention(0), a.mlp(0)
        kinds = [("q", attn.q), ("kv", attn.k), ("kv", attn.v), ("ffn", mlp.gate), ("ffn", mlp.up)]
        readers: dict[int, tuple] = {}
        for kind, sl in kinds:
            if sl is not None:
                readers.setdefault(id(sl.linear), (sl.linear, []))[1].append(kind)
        self._readers = [(tuple(k), lin.bias is not None) for lin, k in readers.values()]
        self._writers = [("q", attn.o.bias is not None), ("ffn", mlp.down.bias is not None)]
        self._layer_norm_vectors = sum(p.numel() for n in a.hidden_norms(0) for p in n.parameters()) / s.hidden_size
        self._final_norm_vectors = sum(p.numel() for p in a.final_norm.parameters()) / s.hidden_size
        source = Architecture.of(model)
        layer_numel = sum(p.numel() for p in a.layers[0].parameters())
        self._layer_constant = layer_numel - self._layer_varying(source)
        non_embedding = count_parameters(model)[1]
        self._outside_constant = (non_embedding - source.num_hidden_layers * layer_numel
                                  - round(self._final_norm_vectors * source.hidden_size))
        if self(source) != non_embedding or any(sum(p.numel() for p in layer.parameters()) != layer_numel
                                                 for layer in a.layers):
            raise ValueError(f"{model.config.model_type}: the layers are not all alike or hold parameters the "
                             "adapter does not describe; the parameter count of a pruned model cannot be derived")

    def _rows(self, kind: str, arch: Architecture) -> int:
        return {"q": arch.num_attention_heads * self.head_dim, "kv": arch.num_key_value_heads * self.head_dim,
                "ffn": arch.intermediate_size}[kind]

    def _layer_varying(self, arch: Architecture) -> int:
        h = arch.hidden_size
        total = round(self._layer_norm_vectors * h)
        for kinds, bias in self._readers:
            rows = sum(self._rows(k, arch) for k in kinds)
            total += rows * h + (rows if bias else 0)
        for kind, bias in self._writers:
            total += self._rows(kind, arch) * h + (h if bias else 0)
        return total

    def __call__(self, arch: Architecture) -> int:
        per_layer = self._layer_varying(arch) + self._layer_constant
        return (arch.num_hidden_layers * per_layer + round(self._final_norm_vectors * arch.hidden_size)
                + self._outside_constant)


# --- the search space ------------------------------------------------------------------------------------------------
def width_choices(size: int, multiple: int) -> list[int]:
    """Multiples of ``multiple`` up to ``size``, plus ``size`` itself (ascending)."""
    return sorted({*range(multiple, size + 1, multiple), size})


def attention_choices(num_heads: int, num_kv_heads: int) -> list[tuple[int, int]]:
    """``(query heads, KV heads)`` pairs pruning can reach: KV heads dividing the model's, query heads a multiple of
    them with at most the model's query heads per KV group."""
    per_group = num_heads // num_kv_heads
    return [(kv * r, kv) for kv in range(1, num_kv_heads + 1) if num_kv_heads % kv == 0
            for r in range(1, per_group + 1)]


def config_accepts(model, arch: Architecture) -> bool:
    """Whether the family's config class accepts ``arch`` (built as :func:`~hf_minitron.prune_model` would)."""
    a = get_adapter(model)
    try:
        a.pruned_config(hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
                        num_attention_heads=arch.num_attention_heads, num_key_value_heads=arch.num_key_value_heads,
                        kept_layers=list(range(arch.num_hidden_layers)))
    except Exception:  # noqa: BLE001 - any refusal of the config class means "not this architecture"
        return False
    return True


def budget_from(model, *, target_params: int | None = None, target_ratio: float | None = None) -> int:
    """The budget in non-embedding parameters: ``target_params``, or ``target_ratio`` of the model's."""
    if (target_params is None) == (target_ratio is None):
        raise ValueError("give exactly one of target_params (non-embedding parameters) and target_ratio (of the "
                         "model's non-embedding parameters)")
    if target_params is not None:
        return int(target_params)
    return int(round(target_ratio * count_parameters(model)[1]))


def enumerate_architectures(model, budget: int, *, tolerance: float = 0.05, width_multiple: int = 64,
                            axes: Sequence[str] = WIDTH_AXES, layer_choices: Iterable[int] | None = None,
                            counter: ParameterCount | None = None) -> list[Candidate]:
    """Every architecture with ``|params - budget| <= tolerance * budget`` in the search space (see the module
    docstring), ordered by hidden size, intermediate size, KV heads, query heads and layers. ``layer_choices``: layer
    counts tried when ``"depth"`` is an axis (default: every count from 1 to the model's)."""
    unknown = sorted(set(axes) - set(AXES))
    if unknown:
        raise ValueError(f"axes has {unknown}; choose among {', '.join(AXES)}")
    src = Architecture.of(model)
    counter = counter or ParameterCount(model)
    hidden = width_choices(src.hidden_size, width_multiple) if "hidden_size" in axes else [src.hidden_size]
    ffn = (width_choices(src.intermediate_size, width_multiple) if "intermediate_size" in axes
           else [src.intermediate_size])
    heads = (attention_choices(src.num_attention_heads, src.num_key_value_heads) if "attention" in axes
             else [(src.num_attention_heads, src.num_key_value_heads)])
    heads = sorted(heads, key=lambda hk: (hk[1], hk[0]))
    layers = [src.num_hidden_layers]
    if "depth" in axes:
        layers = sorted({int(n) for n in (layer_choices or range(1, src.num_hidden_layers + 1))})
        bad = [n for n in layers if not 1 <= n <= src.num_hidden_layers]
        if bad:
            raise ValueError(f"layer_choices has {bad}; the model has {src.num_hidden_layers} layers")
    low, high = budget * (1 - tolerance), budget * (1 + tolerance)
    out = []
    for h, f, (q, kv), n in product(hidden, ffn, heads, layers):
        arch = Architecture(h, f, q, kv, n)
        params = counter(arch)
        if low <= params <= high and config_accepts(model, arch):
            out.append(Candidate(arch, params))
    return out


def closest_to_budget(candidates: list[Candidate], budget: int, limit: int | None) -> list[Candidate]:
    """At most ``limit`` candidates, those whose parameter count is closest to ``budget`` (enumeration order kept)."""
    if limit is None or len(candidates) <= limit:
        return list(candidates)
    keep = sorted(range(len(candidates)), key=lambda i: (abs(candidates[i].params - budget), i))[:limit]
    return [candidates[i] for i in sorted(keep)]


# --- ranking -------------------------------------------------------------------------------------------------------
def ranks(values: Sequence[float]) -> list[int]:
    """1-based ranks, lowest value first; ties keep their order."""
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    out = [0] * len(values)
    for r, i in enumerate(order, start=1):
        out[i] = r
    return out


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b between two rankings (or scores) of the same items; ``None`` for fewer than two items or when
    one side is all ties. 1 = the same order, -1 = reversed."""
    n = len(x)
    if n != len(y):
        raise ValueError(f"kendall_tau: {n} and {len(y)} items")
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return None if denom == 0 else (concordant - discordant) / denom


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _shown(arch: Architecture) -> str:
    return (f"hidden {arch.hidden_size}, ffn {arch.intermediate_size}, heads {arch.num_attention_heads}/"
            f"{arch.num_key_value_heads} kv, layers {arch.num_hidden_layers}")


@torch.no_grad()
def zero_shot_losses(model, scores, candidates: Sequence[Candidate], blocks: torch.Tensor, *, batch_size: int = 4,
                     progress: bool = False) -> list[float]:
    """Mean next-token NLL on ``blocks`` of ``model`` pruned to each candidate with ``scores`` (in memory)."""
    from .evaluation import mean_nll
    from .pruning import prune_model

    losses = []
    for k, cand in enumerate(candidates, start=1):
        student = prune_model(model, cand.architecture.targets(), scores)
        losses.append(mean_nll(student, blocks, batch_size=batch_size))
        del student
        _say(progress, f"search: zero-shot {k}/{len(candidates)}: {_shown(cand.architecture)} "
                       f"({cand.params:,} params) loss {losses[-1]:.4f}")
    return losses


def distilled_losses(teacher, tokenizer, scores, candidates: Sequence[Candidate], train_blocks: torch.Tensor,
                     eval_blocks: torch.Tensor, args, *, batch_size: int = 4,
                     progress: bool = False) -> list[tuple[float, float]]:
    """``(loss, seconds)`` per candidate: prune ``teacher`` to it, distil with ``args`` (a ``DistillationConfig``;
    each run writes to ``{args.output_dir}/candidate-K``) on ``train_blocks``, then the mean NLL on ``eval_blocks``.
    Every run starts from the same seed and sees the training blocks in the same order."""
    import datasets

    from .distill import DistillationTrainer
    from .evaluation import mean_nll
    from .pruning import prune_model

    train = datasets.Dataset.from_dict({"input_ids": train_blocks.tolist()})
    trainable = [p.requires_grad for p in teacher.parameters()]  # the trainer freezes the teacher; restored below
    out = []
    for k, cand in enumerate(candidates, start=1):
        torch.manual_seed(args.seed)
        student = prune_model(teacher, cand.architecture.targets(), scores).train()
        run_args = replace(args, output_dir=f"{args.output_dir}/candidate-{k}")
        trainer = DistillationTrainer(student, args=run_args, train_dataset=train, processing_class=tokenizer,
                                      teacher_model=teacher, teacher_processing_class=tokenizer)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        out.append((mean_nll(student.eval(), eval_blocks, batch_size=batch_size), seconds))
        del trainer, student
        _say(progress, f"search: distilled {k}/{len(candidates)}: {_shown(cand.architecture)} loss "
                       f"{out[-1][0]:.4f} ({seconds:.0f}s)")
    teacher.eval()
    for p, flag in zip(teacher.parameters(), trainable):
        p.requires_grad_(flag)
    return out


# --- the whole search ----------------------------------------------------------------------------------------------
@dataclass
class SearchOutcome:
    """What :func:`search_architectures` found. ``candidates``: the evaluated ones in enumeration order;
    ``enumerated``: how many fitted the budget before ``max_candidates``; ``kendall_tau``: between the zero-shot and
    the post-distillation ranks of the distilled candidates (``None`` with fewer than two)."""

    budget: int
    teacher_params: int
    candidates: list[Candidate]
    enumerated: int
    chosen: Candidate
    kendall_tau: float | None = None
    seconds: dict = field(default_factory=dict)

    @property
    def zero_shot_winner(self) -> Candidate:
        return min(self.candidates, key=lambda c: c.zero_shot_rank)

    def summary(self) -> dict:
        distilled = [c for c in self.candidates if c.distill_rank is not None]
        return {"budget": self.budget, "teacher_non_embedding_params": self.teacher_params,
                "enumerated": self.enumerated, "evaluated": len(self.candidates), "distilled": len(distilled),
                "chosen": self.chosen.to_dict(self.budget),
                "zero_shot_winner": self.zero_shot_winner.to_dict(self.budget),
                "winner_changed": bool(distilled) and self.chosen is not self.zero_shot_winner,
                "kendall_tau": self.kendall_tau, "seconds": self.seconds}


def search_architectures(model, scores, eval_blocks: torch.Tensor, *, budget: int, tolerance: float = 0.05,
                         width_multiple: int = 64, axes: Sequence[str] = WIDTH_AXES,
                         layer_choices: Iterable[int] | None = None, max_candidates: int | None = 64,
                         top_n: int = 0, train_blocks: torch.Tensor | None = None, distill_args=None,
                         tokenizer=None, batch_size: int = 4, progress: bool = False) -> SearchOutcome:
    """Enumerate, rank zero-shot, and (``top_n > 0``) distil the ``top_n`` best and re-rank them; see the module
    docstring. ``distill_args``: the :class:`~hf_minitron.DistillationConfig` of each short run."""
    t0 = time.perf_counter()
    counter = ParameterCount(model)
    found = enumerate_architectures(model, budget, tolerance=tolerance, width_multiple=width_multiple, axes=axes,
                                    layer_choices=layer_choices, counter=counter)
    if not found:
        raise ValueError(f"no architecture within {tolerance:.0%} of {budget:,} non-embedding parameters in the "
                         f"search space (width_multiple={width_multiple}, axes={list(axes)}); widen the tolerance, "
                         "use a smaller width_multiple or search more axes")
    candidates = closest_to_budget(found, budget, max_candidates)
    _say(progress, f"search: {len(found)} architectures fit {budget:,} +- {tolerance:.0%}; evaluating "
                   f"{len(candidates)}")
    t1 = time.perf_counter()
    for cand, loss in zip(candidates, zero_shot_losses(model, scores, candidates, eval_blocks,
                                                       batch_size=batch_size, progress=progress)):
        cand.zero_shot_loss = loss
    for cand, r in zip(candidates, ranks([c.zero_shot_loss for c in candidates])):
        cand.zero_shot_rank = r
    seconds = {"enumerate": t1 - t0, "zero_shot": time.perf_counter() - t1}
    chosen, tau = min(candidates, key=lambda c: c.zero_shot_rank), None
    if top_n > 0:
        top = sorted(candidates, key=lambda c: c.zero_shot_rank)[:top_n]
        t2 = time.perf_counter()
        results = distilled_losses(model, tokenizer, scores, top, train_blocks, eval_blocks, distill_args,
                                   batch_size=batch_size, progress=progress)
        seconds["distill"] = time.perf_counter() - t2
        for cand, (loss, secs) in zip(top, results):
            cand.distill_loss, cand.distill_seconds = loss, secs
        for cand, r in zip(top, ranks([c.distill_loss for c in top])):
            cand.distill_rank = r
        tau = kendall_tau([c.zero_shot_rank for c in top], [c.distill_rank for c in top])
        chosen = min(top, key=lambda c: c.distill_rank)
    return SearchOutcome(budget=budget, teacher_params=count_parameters(model)[1], candidates=candidates,
                         enumerated=len(found), chosen=chosen, kendall_tau=tau, seconds=seconds)


def choose_widths(model, scores, calib, *, tokenizer=None, target_ratio: float = 0.5,
                  target_params: int | None = None, tolerance: float = 0.05, width_multiple: int = 64,
                  num_samples: int = 16, seq_len: int = 256, batch_size: int = 4, max_candidates: int | None = 64,
                  progress: bool = False) -> dict:
    """Width targets (hidden, intermediate, query/KV heads; all layers kept) for about ``target_ratio`` of the model's
    non-embedding parameters (or ``target_params``), chosen zero-shot: the candidate with the lowest LM loss on
    ``calib`` right after pruning with ``scores``. ``calib``: texts, a data file (with ``tokenizer``) or a
    ``[n, seq]`` token tensor. Returns the dict :func:`~hf_minitron.prune_model` takes.

    >>> targets = choose_widths(model, scores, "c4_calib.jsonl", tokenizer=tok)       # doctest: +SKIP
    >>> student = prune_model(model, targets, scores)                                  # doctest: +SKIP
    """
    from .importance import ImportanceScores, calibration_blocks

    if not isinstance(scores, ImportanceScores):
        scores = ImportanceScores.load(scores, model=model)
    blocks = calibration_blocks(calib, tokenizer, seq_len, num_samples)
    budget = budget_from(model, target_params=target_params,
                         target_ratio=None if target_params is not None else target_ratio)
    outcome = search_architectures(model, scores, blocks, budget=budget, tolerance=tolerance,
                                   width_multiple=width_multiple, axes=WIDTH_AXES, max_candidates=max_candidates,
                                   batch_size=batch_size, progress=progress)
    targets = outcome.chosen.architecture.targets()
    del targets["num_hidden_layers"]
    return targets


__all__ = ["AXES", "ARCH_FIELDS", "Architecture", "Candidate", "ParameterCount", "SearchOutcome", "WIDTH_AXES",
           "attention_choices", "budget_from", "choose_widths", "closest_to_budget", "config_accepts",
           "distilled_losses", "enumerate_architectures", "kendall_tau", "ranks", "search_architectures",
           "width_choices", "zero_shot_losses"]
