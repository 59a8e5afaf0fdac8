"""Teacher sources: the two places the teacher's side of the distillation loss can come from, behind one interface.

``DistillationTrainer`` holds one :class:`TeacherSource` and, for every batch, asks it for the teacher's
:class:`TeacherOutputs` (before the student's forward) and then for the logit loss against the student's logits. It
never asks which kind it holds.

- :class:`OnlineTeacher`: a frozen teacher model in memory, run on each batch (full-vocabulary ``forward_kl``,
  ``reverse_kl`` or ``jsd``; hidden states for an intermediate-state loss).
- :class:`CachedTeacher`: an offline :class:`~hf_minitron.distill.teacher_cache.TeacherCache` (``hf-minitron
  cache-teacher``) whose collator puts the teacher's top-k statistics into each batch (``kd_loss="topk_kl"``). The
  cache also supplies the training tokens, so building it replaces the train dataset and the collator.

:func:`make_teacher_source` picks the source from the config (``teacher_cache`` set or not) and runs the checks of
:mod:`hf_minitron.distill.checks` before any training.
"""

from __future__ import annotations

import contextlib
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from .checks import (
    base_model, check_causal_lm, check_logit_softcap, check_same_tokenizer, hidden_size, num_layers,
    shared_vocab_size,
)
from .intermediate import parse_layer_map
from .losses import DistillationLossOutput, distillation_loss, topk_distillation_loss
from .teacher_cache import TEACHER_KEYS, TeacherCache, TeacherCacheCollator, cache_index_dataset

# Batch keys that are not model inputs (the trainer's loss reads the labels itself).
NON_MODEL_KEYS = ("labels", "use_cache", "output_hidden_states", *TEACHER_KEYS)


def model_inputs(batch: dict) -> dict:
    """The keys of a training batch that go into a model's forward (student and teacher alike)."""
    return {k: v for k, v in batch.items() if k not in NON_MODEL_KEYS}


@dataclass
class TeacherOutputs:
    """The teacher's side of one batch. An online teacher fills ``logits`` ``[batch, seq, vocab]`` (and
    ``hidden_states``, the ``output_hidden_states`` tuple, when an intermediate-state loss asks for them); a cache fills
    ``topk_ids`` / ``topk_logprobs`` ``[batch, seq, k]`` and ``tail_logmass`` ``[batch, seq]``."""

    logits: torch.Tensor | None = None
    hidden_states: tuple | None = None
    topk_ids: torch.Tensor | None = None
    topk_logprobs: torch.Tensor | None = None
    tail_logmass: torch.Tensor | None = None


class TeacherSource(ABC):
    """Where the teacher's next-token distribution comes from.

    ``name`` identifies the teacher (the model card's ``base_model`` when it is a Hub id); ``layer_pairs`` are the
    ``(student, teacher)`` hidden-state pairs of an intermediate-state loss (empty when there is none);
    ``hidden_size`` is the teacher's hidden size (for the student→teacher projections)."""

    name: str = "teacher"
    layer_pairs: list[tuple[int, int]] = []
    hidden_size: int | None = None

    def prepare(self, trainer) -> None:
        """Place the source for the trainer's engine (after ``Trainer.__init__``); nothing by default."""

    @abstractmethod
    def outputs(self, batch: dict) -> TeacherOutputs:
        """The teacher's side of ``batch`` (the whole collated batch; a source may pop its own keys from it)."""

    @abstractmethod
    def loss(self, student_logits: torch.Tensor, teacher: TeacherOutputs, mask: torch.Tensor, targets: torch.Tensor,
             args) -> DistillationLossOutput:
        """The logit loss (sums over the counted tokens, ``mask``), with ``args.ce_weight`` x the cross-entropy on
        ``targets``; ``args`` is the run's ``DistillationConfig``."""


class OnlineTeacher(TeacherSource):
    """A frozen teacher model run on every batch (no gradient, eval mode, never saved)."""

    def __init__(self, model, *, shared_vocab: int | None = None, layer_pairs=()):
        self.model = model
        self.autocast = contextlib.nullcontext  # the run's mixed precision, set by prepare()
        self.shared_vocab = shared_vocab
        self.layer_pairs = list(layer_pairs)
        self.hidden_size = hidden_size(model)
        self.name = str(getattr(base_model(model).config, "name_or_path", "") or type(base_model(model)).__name__)

    @classmethod
    def build(cls, teacher, teacher_processing_class, student, processing_class, args) -> OnlineTeacher:
        """Check the pair (causal LMs, one tokenizer, one vocabulary or the opt-in, the same soft-cap, a valid layer
        map) and freeze the teacher."""
        check_causal_lm(teacher, "teacher")
        if base_model(teacher) is base_model(student):
            raise ValueError("teacher_model and model are the same object; pass a separate teacher.")
        if teacher_processing_class is None:
            warnings.warn("The teacher was passed as a model without teacher_processing_class: the tokenizers cannot "
                          "be compared. Pass teacher_processing_class to check them.", stacklevel=3)
        check_same_tokenizer(processing_class, teacher_processing_class)
        shared = shared_vocab_size(student, teacher, processing_class, args.truncate_vocab)
        check_logit_softcap(student, teacher)
        pairs = parse_layer_map(args.intermediate_layer_map, num_layers(student), num_layers(teacher))
        teacher.eval()
        teacher.requires_grad_(False)
        return cls(teacher, shared_vocab=shared, layer_pairs=pairs)

    def prepare(self, trainer) -> None:
        """DeepSpeed ZeRO-3 shards the teacher, FSDP wraps it (as TRL does for its reference models); otherwise it
        moves to the run's device unless it was loaded with a ``device_map``."""
        teacher = self.model
        if trainer.is_deepspeed_enabled:
            from trl.models import prepare_deepspeed

            teacher = prepare_deepspeed(teacher, trainer.accelerator)
        elif trainer.is_fsdp_enabled:
            from trl.models import prepare_fsdp

            teacher = prepare_fsdp(teacher, trainer.accelerator)
        elif getattr(teacher, "hf_device_map", None) is None:
            teacher = teacher.to(trainer.accelerator.device)
        self.model = teacher.eval()
        # The student's forward runs under the run's autocast (accelerate wraps the prepared model); the teacher is
        # not prepared that way, so without this an fp32 teacher would run in fp32 under bf16=True (2x slower on CPU).
        self.autocast = trainer.accelerator.autocast

    @torch.no_grad()
    def outputs(self, batch: dict) -> TeacherOutputs:
        self.model.eval()
        want_hidden = bool(self.layer_pairs)
        with self.autocast():
            out = self.model(**model_inputs(batch), use_cache=False, output_hidden_states=want_hidden)
        return TeacherOutputs(logits=out.logits, hidden_states=out.hidden_states if want_hidden else None)

    def loss(self, student_logits, teacher, mask, targets, args) -> DistillationLossOutput:
        teacher_logits = teacher.logits
        if teacher_logits.device != student_logits.device:
            teacher_logits = teacher_logits.to(student_logits.device)
        return distillation_loss(
            student_logits, teacher_logits, mask, kind=args.kd_loss, temperature=args.temperature,
            beta=args.jsd_beta, targets=targets, ce_weight=args.ce_weight, chunk_size=args.kd_chunk_size,
            vocab_size=self.shared_vocab,
        )


class CachedTeacher(TeacherSource):
    """An offline teacher cache: the batches carry the teacher's top-k statistics (no teacher in memory)."""

    def __init__(self, cache: TeacherCache):
        self.cache = cache
        self.name = cache.settings.teacher

    @classmethod
    def build(cls, args, student, processing_class, *, teacher_model=None, train_dataset=None, data_collator=None):
        """``(source, train_dataset, data_collator)`` for training from ``args.teacher_cache``. Refuses, before any
        training, a teacher or dataset passed as well, a loss other than ``topk_kl``, an intermediate-state loss, and
        a cache built for another tokenizer, vocabulary, sequence length, temperature or tail kind. Sets
        ``args.topk_tail`` to the cache's kind when unset."""
        if teacher_model is not None:
            raise ValueError("pass either teacher_model or teacher_cache (--cache), not both: training from the cache "
                             "needs no teacher in memory")
        if train_dataset is not None:
            raise ValueError("the teacher cache holds the training tokens: do not pass train_dataset (--data) together "
                             "with teacher_cache; build the cache from that data with `hf-minitron cache-teacher`")
        if args.kd_loss != "topk_kl":
            raise ValueError(f"teacher_cache holds top-k teacher statistics, kd_loss={args.kd_loss!r} needs full "
                             "teacher logits: set kd_loss='topk_kl' (--kd_loss topk_kl) or pass a teacher instead")
        if getattr(args, "intermediate_layer_map", None):
            raise ValueError("intermediate_layer_map needs the teacher's hidden states, which a teacher cache does not "
                             "hold: unset it or train with the teacher in memory")
        cache = TeacherCache(args.teacher_cache)
        if args.topk_tail is None:  # the tail the cache was built for
            args.topk_tail = "sampled" if cache.settings.kind == "sampled" else "bucket"
        cache.check_compatible(tokenizer=processing_class, max_length=args.max_length, temperature=args.temperature,
                               tail=args.topk_tail, vocab_size=int(base_model(student).get_output_embeddings()
                                                                   .weight.shape[0]))
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        args.remove_unused_columns = False  # keep `cache_index` for the collator
        return cls(cache), cache_index_dataset(cache), data_collator or TeacherCacheCollator(cache)

    def outputs(self, batch: dict) -> TeacherOutputs:
        ids, logprobs, tail = (batch.pop(k) for k in TEACHER_KEYS)
        return TeacherOutputs(topk_ids=ids, topk_logprobs=logprobs, tail_logmass=tail)

    def loss(self, student_logits, teacher, mask, targets, args) -> DistillationLossOutput:
        return topk_distillation_loss(
            student_logits, teacher.topk_ids, teacher.topk_logprobs, teacher.tail_logmass, mask, tail=args.topk_tail,
            temperature=args.temperature, cache_temperature=self.cache.settings.temperature, targets=targets,
            ce_weight=args.ce_weight,
        )


def make_teacher_source(args, student, processing_class, *, teacher_model=None, teacher_processing_class=None,
                        train_dataset=None, data_collator=None):
    """``(source, train_dataset, data_collator)``: a :class:`CachedTeacher` when ``args.teacher_cache`` is set (the
    cache replaces the dataset and the collator), else an :class:`OnlineTeacher` around ``teacher_model`` (a model)."""
    if args.teacher_cache is not None:
        return CachedTeacher.build(args, student, processing_class, teacher_model=teacher_model,
                                   train_dataset=train_dataset, data_collator=data_collator)
    source = OnlineTeacher.build(teacher_model, teacher_processing_class, student, processing_class, args)
    return source, train_dataset, data_collator


def prepare_cache_training(args, model, processing_class, *, teacher_model=None, train_dataset=None,
                           data_collator=None):
    """Deprecated (one release): ``(cache, train_dataset, data_collator)``; use ``CachedTeacher.build``."""
    source, dataset, collator = CachedTeacher.build(args, model, processing_class, teacher_model=teacher_model,
                                                    train_dataset=train_dataset, data_collator=data_collator)
    return source.cache, dataset, collator


__all__ = [
    "CachedTeacher", "OnlineTeacher", "TeacherOutputs", "TeacherSource", "make_teacher_source", "model_inputs",
]
