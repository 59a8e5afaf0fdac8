"""Intermediate-state distillation: a student→teacher hidden-state map, cosine or MSE loss, learned projections.

Hidden-state indices follow ``output_hidden_states``: ``0`` is the embedding output, ``i`` (1-based) the output of
decoder layer ``i``, and ``num_hidden_layers`` the final (normed) hidden state. When the student's hidden size differs
from the teacher's, each mapped student state goes through its own learned ``Linear(h_student, h_teacher)``.
The projections live in ``HiddenProjections``; the trainer registers them on the student for the run (so every engine
syncs and shards them with the student) and keeps them out of every saved checkpoint.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

INTERMEDIATE_LOSSES = ("cosine", "mse")

# Attribute under which the trainer registers the projections on the student model during a run.
PROJECTIONS_ATTR = "distill_projections"


def parse_layer_map(spec, student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """``[(student_index, teacher_index), ...]`` from ``spec``.

    ``spec``: ``"auto"`` (student state ``i`` ↔ teacher state ``round(i * teacher_layers / student_layers)`` for
    ``i = 1..student_layers``), a string ``"2:4,8:16"``, a dict ``{2: 4}`` or a list of pairs. Indices are checked
    against ``0..num_hidden_layers`` of each model.
    """
    if spec is None:
        return []
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() == "auto":
            pairs = [(i, round(i * teacher_layers / student_layers)) for i in range(1, student_layers + 1)]
        else:
            pairs = []
            for item in filter(None, (part.strip() for part in text.split(","))):
                left, sep, right = item.partition(":")
                if not sep:
                    raise ValueError(f"intermediate_layer_map item {item!r} is not 'student:teacher' (e.g. '4:8,8:16')")
                try:
                    pairs.append((int(left), int(right)))
                except ValueError:
                    raise ValueError(f"intermediate_layer_map item {item!r}: indices must be integers") from None
    elif isinstance(spec, dict):
        pairs = [(int(k), int(v)) for k, v in spec.items()]
    else:
        pairs = [(int(a), int(b)) for a, b in spec]
    if not pairs:
        raise ValueError("intermediate_layer_map is empty; give 'auto' or pairs like '4:8,8:16'")
    for s, t in pairs:
        if not 0 <= s <= student_layers:
            raise ValueError(f"intermediate_layer_map: student index {s} is outside 0..{student_layers} "
                             f"(0 = embeddings, i = output of layer i, {student_layers} = final hidden state)")
        if not 0 <= t <= teacher_layers:
            raise ValueError(f"intermediate_layer_map: teacher index {t} is outside 0..{teacher_layers} "
                             f"(0 = embeddings, i = output of layer i, {teacher_layers} = final hidden state)")
    students = [s for s, _ in pairs]
    if len(set(students)) != len(students):
        raise ValueError(f"intermediate_layer_map maps a student index twice: {pairs}")
    return pairs


class HiddenProjections(nn.Module):
    """One bias-free ``Linear(student_hidden, teacher_hidden)`` per mapped student index (empty when sizes match)."""

    def __init__(self, student_indices: Iterable[int], student_hidden: int, teacher_hidden: int):
        super().__init__()
        self.maps = nn.ModuleDict()
        if student_hidden != teacher_hidden:
            for i in student_indices:
                self.maps[str(i)] = nn.Linear(student_hidden, teacher_hidden, bias=False)

    def forward(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        key = str(index)
        return self.maps[key](hidden) if key in self.maps else hidden


def hidden_state_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Sum over tokens of the per-token loss between ``[n, H]`` states (fp32 math).

    ``cosine``: ``1 - cos(student, teacher)``; ``mse``: mean over the hidden dimension of the squared difference.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"hidden states {tuple(student.shape)} and {tuple(teacher.shape)} differ; a projection is "
                         "needed when hidden sizes differ")
    s, t = student.float(), teacher.float()
    if kind == "cosine":
        return (1.0 - torch.nn.functional.cosine_similarity(s, t, dim=-1, eps=1e-8)).sum()
    if kind == "mse":
        return (s - t).pow(2).mean(-1).sum()
    raise ValueError(f"intermediate_loss={kind!r} is not supported; choose one of {', '.join(INTERMEDIATE_LOSSES)}")


def intermediate_loss(student_states, teacher_states, rows: torch.Tensor, pairs, projections: HiddenProjections | None,
                      kind: str = "cosine") -> torch.Tensor:
    """Mean over the mapped pairs of :func:`hidden_state_loss`, summed over the counted token ``rows``.

    ``student_states``/``teacher_states``: ``output_hidden_states`` tuples of ``[batch, seq, H]``; ``rows``: flat
    indices of the counted tokens.
    """
    total = None
    for s_idx, t_idx in pairs:
        hs = student_states[s_idx]
        ht = teacher_states[t_idx].detach()
        hs = hs.reshape(-1, hs.shape[-1]).index_select(0, rows)
        ht = ht.reshape(-1, ht.shape[-1]).index_select(0, rows.to(ht.device)).to(hs.device)
        if projections is not None:
            hs = projections(s_idx, hs)
        term = hidden_state_loss(hs, ht, kind)
        total = term if total is None else total + term
    return total / len(pairs)
