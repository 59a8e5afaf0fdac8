"""``DistillationTrainer``: ``trl.SFTTrainer`` with a frozen teacher and a logit (plus optional hidden-state) loss.

This is the offline logit distiller of the Minitron recipe: the student is trained on the data to match the teacher's
next-token distribution (forward KL at temperature 1 by default). TRL's own ``trl.DistillationTrainer`` is a different
tool: it is on-policy (the student generates, the teacher scores the generations).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass

import torch
from transformers import TrainingArguments
from transformers.utils import ModelOutput
from trl import SFTTrainer

from .config import DistillationConfig
from .intermediate import PROJECTIONS_ATTR, HiddenProjections, intermediate_loss, parse_layer_map
from ..teacher_cache import topk_distillation_loss
from .losses import distillation_loss

logger = logging.getLogger(__name__)

TEACHER_KEYS = ("teacher_topk_ids", "teacher_topk_logprobs", "teacher_tail_logmass")  # = teacher_cache.TEACHER_KEYS

PROJECTIONS_FILE = "distill_projections.safetensors"


@dataclass
class TeacherOutputs:
    """What the loss consumes from the teacher for one batch: ``logits`` ``[batch, seq, vocab]`` and, when an
    intermediate-state loss is configured, ``hidden_states`` (the ``output_hidden_states`` tuple)."""

    logits: torch.Tensor
    hidden_states: tuple | None = None


@dataclass
class StudentOutputs(ModelOutput):
    """The student's output while hidden-state projections are attached (a ``ModelOutput``, so DDP can flatten it)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple | None = None
    projected_hidden_states: tuple | None = None


def _projection_hook(projections: HiddenProjections, pairs):
    """Forward hook for the student: adds ``projected_hidden_states`` (one per mapped pair) to its output.

    Projecting inside the student's forward matters for the engines: DDP sees the projections as used by the forward
    (not as unused parameters whose gradients then arrive twice), FSDP and ZeRO-3 gather them there. A closure, not a
    trainer method, so that copying the model never copies the trainer."""

    def hook(module, args, output):
        hidden = getattr(output, "hidden_states", None)
        if hidden is None:
            return output
        projected = tuple(projections(s, hidden[s]) for s, _ in pairs)
        return StudentOutputs(loss=output.get("loss"), logits=output.get("logits"), hidden_states=hidden,
                              projected_hidden_states=projected)

    return hook


# --- checks run before any training ------------------------------------------------------------------------------

def _base_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _causal_lm_class_names() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return names


def check_causal_lm(model, role: str) -> None:
    """Refuse anything that is not a transformers ``*ForCausalLM`` (optionally PEFT-wrapped)."""
    base = _base_model(model)
    config = getattr(base, "config", None)
    is_causal = (
        isinstance(base, torch.nn.Module)
        and config is not None
        and not getattr(config, "is_encoder_decoder", False)
        and hasattr(base, "get_output_embeddings")
        and base.get_output_embeddings() is not None
        and (type(base).__name__ in _causal_lm_class_names() or type(base).__name__.endswith("ForCausalLM"))
    )
    if not is_causal:
        raise ValueError(
            f"The {role} is a {type(base).__name__}, not a causal language model with an LM head: distillation "
            f"compares next-token logits. Load the {role} with AutoModelForCausalLM.from_pretrained or "
            "hf_minitron.load_causal_lm."
        )


def _vocab_rows(model) -> int:
    return int(_base_model(model).get_output_embeddings().weight.shape[0])


def _tokenizer_of(processing_class):
    return getattr(processing_class, "tokenizer", processing_class)


def check_same_tokenizer(student_tokenizer, teacher_tokenizer) -> None:
    """Refuse two tokenizers whose token→id maps differ (names and sizes in the message)."""
    if teacher_tokenizer is None or student_tokenizer is None:
        return
    s_tok, t_tok = _tokenizer_of(student_tokenizer), _tokenizer_of(teacher_tokenizer)
    s_vocab, t_vocab = s_tok.get_vocab(), t_tok.get_vocab()
    if s_vocab == t_vocab:
        return
    only_s = sorted(set(s_vocab) - set(t_vocab))
    only_t = sorted(set(t_vocab) - set(s_vocab))
    moved = sorted(k for k in set(s_vocab) & set(t_vocab) if s_vocab[k] != t_vocab[k])
    detail = []
    if only_s:
        detail.append(f"{len(only_s)} tokens only in the student's, e.g. {only_s[0]!r}")
    if only_t:
        detail.append(f"{len(only_t)} tokens only in the teacher's, e.g. {only_t[0]!r}")
    if moved:
        k = moved[0]
        detail.append(f"{len(moved)} tokens with different ids, e.g. {k!r}: {s_vocab[k]} vs {t_vocab[k]}")
    raise ValueError(
        f"The student tokenizer {getattr(s_tok, 'name_or_path', '?')!r} ({len(s_tok)} tokens) and the teacher "
        f"tokenizer {getattr(t_tok, 'name_or_path', '?')!r} ({len(t_tok)} tokens) differ ({'; '.join(detail)}). "
        "Logit distillation compares next-token distributions over one vocabulary: use a teacher that shares the "
        "student's tokenizer."
    )


def shared_vocab_size(student, teacher, tokenizer, truncate_vocab: bool) -> int | None:
    """``None`` when both LM heads have the same rows; the shared row count when the opt-in allows truncating."""
    v_s, v_t = _vocab_rows(student), _vocab_rows(teacher)
    if v_s == v_t:
        return None
    n_tok = len(_tokenizer_of(tokenizer)) if tokenizer is not None else None
    shared = min(v_s, v_t)
    if not truncate_vocab:
        smaller = "teacher" if v_t < v_s else "student"
        raise ValueError(
            f"The student's LM head has {v_s} rows and the teacher's {v_t} (the {smaller}'s vocabulary is smaller; "
            f"the tokenizer has {n_tok} tokens). If the larger vocabulary is the smaller one plus padding rows, set "
            f"truncate_vocab=True (--truncate_vocab) to distil over the shared {shared} rows; otherwise use models "
            "with the same vocabulary."
        )
    if n_tok is not None and n_tok > shared:
        raise ValueError(
            f"truncate_vocab=True, but the tokenizer has {n_tok} tokens, more than the shared {shared} rows "
            f"(student {v_s}, teacher {v_t}): the extra rows are real tokens, not padding, so they cannot be dropped."
        )
    return shared


def _logit_softcap(model):
    from ..arch import UnsupportedArchitectureError, get_adapter

    try:
        return get_adapter(model).logit_softcap
    except UnsupportedArchitectureError:
        config = _base_model(model).config
        return getattr(config.get_text_config(), "final_logit_softcapping", None)


def check_logit_softcap(student, teacher) -> None:
    """Both models must apply the same final-logit soft-capping (each in its own forward), or neither."""
    cap_s, cap_t = _logit_softcap(student), _logit_softcap(teacher)
    if cap_s == cap_t:
        return
    raise ValueError(
        f"Final-logit soft-capping differs: student final_logit_softcapping={cap_s}, teacher {cap_t}. The teacher's "
        "distribution would be matched under a different logit transform. Set "
        f"student.config.final_logit_softcapping = {cap_t} (the student's forward then applies the same cap), or use "
        "a teacher with the student's setting."
    )


def _num_layers(model) -> int:
    return int(_base_model(model).config.get_text_config().num_hidden_layers)


def _hidden_size(model) -> int:
    return int(_base_model(model).config.get_text_config().hidden_size)


def _param_dtype(model) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _as_config(args, model) -> DistillationConfig:
    if args is None:
        name = model if isinstance(model, (str, os.PathLike)) else getattr(model.config, "_name_or_path", "") or "model"
        return DistillationConfig(output_dir=f"{str(name).rstrip('/').split('/')[-1]}-distill")
    if isinstance(args, DistillationConfig):
        return args
    if isinstance(args, TrainingArguments):
        values = args.to_dict()
        values["hub_token"] = args.hub_token
        known = DistillationConfig.__dataclass_fields__
        return DistillationConfig(**{k: v for k, v in values.items() if k in known and known[k].init})
    raise TypeError(f"args must be a DistillationConfig (or TrainingArguments), got {type(args).__name__}")


# --- the trainer --------------------------------------------------------------------------------------------------

class DistillationTrainer(SFTTrainer):
    """``SFTTrainer`` that distils a frozen ``teacher_model`` into the student.

    Use it exactly where you would use ``SFTTrainer`` (same data handling: plain text packed or not, chat data through
    the tokenizer's template, prompt-completion) and add ``teacher_model`` (a model or a path/Hub id/GGUF file loaded
    with ``hf_minitron.load_causal_lm``). The loss (see ``DistillationConfig``) is a divergence between the student's
    and the teacher's next-token distributions at every position whose label is not ``-100``, summed and divided by
    ``num_items_in_batch``, so gradient accumulation and several processes give the gradient of one big batch.

    This is the offline logit distiller of the Minitron recipe. TRL's ``trl.DistillationTrainer`` is on-policy
    (trains on the student's own generations) and solves a different problem.

    The teacher is frozen, in eval mode, never saved, and placed for the run's engine (DeepSpeed ZeRO-3 shards it,
    FSDP wraps it, otherwise it is moved to the device). Intermediate-state projections (when hidden sizes differ) are
    registered on the student for the run, trained and synchronised with it, and kept out of saved models.
    """

    _tag_names = ["trl", "sft", "distillation", "hf-minitron"]
    _name = "Distillation"
    # compute_loss divides by num_items_in_batch (the whole accumulated batch), so Trainer must not divide again
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model,
        args: DistillationConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        *,
        teacher_model=None,
        teacher_processing_class=None,
        **kwargs,
    ):
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError("DistillationTrainer computes its own loss; compute_loss_func is not supported. "
                             "Choose the divergence with DistillationConfig(kd_loss=...).")
        if teacher_model is None and getattr(args, "teacher_cache", None) is None:
            raise ValueError("teacher_model is required: pass a model or a path / Hub id / .gguf file (or a "
                             "teacher_cache built by `hf-minitron cache-teacher`).")
        args = _as_config(args, model)

        from ..loading import load_causal_lm

        # Student
        if isinstance(model, (str, os.PathLike)):
            model, tok = load_causal_lm(model, tokenizer=processing_class is None,
                                        trust_remote_code=args.trust_remote_code)
            processing_class = processing_class if processing_class is not None else tok
        check_causal_lm(model, "student")
        if processing_class is None:
            from transformers import AutoTokenizer

            processing_class = AutoTokenizer.from_pretrained(_base_model(model).config._name_or_path,
                                                             trust_remote_code=args.trust_remote_code)

        # Teacher: a model, or an offline cache of its top-k statistics (no teacher in memory)
        self.teacher_cache = None
        if args.teacher_cache is not None:
            from ..teacher_cache import prepare_cache_training

            self.teacher_cache, train_dataset, data_collator = prepare_cache_training(
                args, model, processing_class, teacher_model=teacher_model, train_dataset=train_dataset,
                data_collator=data_collator)
            self._shared_vocab, self._layer_pairs = None, []
        else:
            if isinstance(teacher_model, (str, os.PathLike)):
                dtype = args.teacher_dtype or _param_dtype(model)
                teacher_model, t_tok = load_causal_lm(teacher_model, dtype=dtype,
                                                      tokenizer=teacher_processing_class is None,
                                                      trust_remote_code=args.trust_remote_code)
                teacher_processing_class = teacher_processing_class if teacher_processing_class is not None else t_tok
            check_causal_lm(teacher_model, "teacher")
            if _base_model(teacher_model) is _base_model(model):
                raise ValueError("teacher_model and model are the same object; pass a separate teacher.")
            if teacher_processing_class is None:
                warnings.warn("The teacher was passed as a model without teacher_processing_class: the tokenizers cannot "
                              "be compared. Pass teacher_processing_class to check them.", stacklevel=2)
            check_same_tokenizer(processing_class, teacher_processing_class)
            self._shared_vocab = shared_vocab_size(model, teacher_model, processing_class, args.truncate_vocab)
            check_logit_softcap(model, teacher_model)
            self._layer_pairs = parse_layer_map(args.intermediate_layer_map, _num_layers(model), _num_layers(teacher_model))
            if self._layer_pairs and _hidden_size(model) != _hidden_size(teacher_model):
                if kwargs.get("optimizers", (None, None))[0] is not None:
                    raise ValueError("An intermediate-state loss with a learned projection needs the trainer to build the "
                                     "optimizer (the projection is trained with the student): do not pass optimizers=.")
            teacher_model.eval()
            teacher_model.requires_grad_(False)

        super().__init__(model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)

        # Trainer only counts num_items_in_batch for models it believes take loss kwargs; our loss always needs it,
        # over the shifted labels (position i predicts label i + 1)
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = True
        self._loss_sums: dict[str, list[float]] = {}
        self.teacher_model = self._prepare_teacher(teacher_model) if teacher_model is not None else None
        self.projections = self._attach_projections(teacher_model)

    # --- setup ----------------------------------------------------------------------------------------------------
    def _prepare_teacher(self, teacher):
        """Place the frozen teacher for the run's engine (as TRL's trainers do for their reference models)."""
        if self.is_deepspeed_enabled:
            from trl.models import prepare_deepspeed

            return prepare_deepspeed(teacher, self.accelerator)
        if self.is_fsdp_enabled:
            from trl.models import prepare_fsdp

            return prepare_fsdp(teacher, self.accelerator)
        if getattr(teacher, "hf_device_map", None) is None:
            teacher = teacher.to(self.accelerator.device)
        return teacher.eval()

    def _attach_projections(self, teacher) -> HiddenProjections | None:
        """Register learned student→teacher projections on the student (trained, synced and sharded with it by
        whatever engine wraps it) and exclude them from saved checkpoints."""
        if not self._layer_pairs:
            return None
        proj = HiddenProjections([s for s, _ in self._layer_pairs], _hidden_size(self.model), _hidden_size(teacher))
        if not proj.maps:
            return None
        ref = self.model.get_output_embeddings().weight
        proj.to(device=ref.device, dtype=_param_dtype(self.model))
        self.model.add_module(PROJECTIONS_ATTR, proj)
        ignore = getattr(self.model, "_keys_to_ignore_on_save", None)
        names = {f"{PROJECTIONS_ATTR}.{k}" for k in proj.state_dict()}
        if isinstance(ignore, set):
            ignore.update(names)
        else:
            self.model._keys_to_ignore_on_save = set(ignore or ()) | names
        self._projection_hook = self.model.register_forward_hook(_projection_hook(proj, self._layer_pairs))
        return proj

    # --- teacher ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _teacher_outputs(self, inputs: dict) -> TeacherOutputs:
        """The teacher's outputs for the student's model inputs (no labels): the one place teacher outputs are made."""
        self.teacher_model.eval()
        want_hidden = bool(self._layer_pairs)
        out = self.teacher_model(**inputs, use_cache=False, output_hidden_states=want_hidden)
        return TeacherOutputs(logits=out.logits, hidden_states=out.hidden_states if want_hidden else None)

    # --- loss ------------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        args = self.args
        labels = inputs["labels"]
        cached = {k: inputs.pop(k) for k in TEACHER_KEYS if k in inputs}  # from a teacher cache's collator
        model_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "use_cache", "output_hidden_states")}
        want_hidden = bool(self._layer_pairs)
        outputs = model(**model_inputs, use_cache=False, output_hidden_states=want_hidden)

        # Position i predicts label i + 1 (the last position predicts nothing). Shifting the labels, not the logits,
        # keeps the [batch, seq, vocab] tensors as contiguous views.
        targets = torch.full_like(labels, -100)
        targets[:, :-1] = labels[:, 1:]
        mask = targets != -100
        if self.teacher_cache is not None:
            parts = topk_distillation_loss(
                outputs.logits, cached["teacher_topk_ids"], cached["teacher_topk_logprobs"],
                cached["teacher_tail_logmass"], mask, tail=args.topk_tail, temperature=args.temperature,
                cache_temperature=self.teacher_cache.settings.temperature, targets=targets, ce_weight=args.ce_weight,
            )
        else:
            teacher = self._teacher_outputs(model_inputs)
            teacher_logits = teacher.logits
            if teacher_logits.device != outputs.logits.device:
                teacher_logits = teacher_logits.to(outputs.logits.device)
            parts = distillation_loss(
                outputs.logits, teacher_logits, mask, kind=args.kd_loss, temperature=args.temperature,
                beta=args.jsd_beta, targets=targets, ce_weight=args.ce_weight, chunk_size=args.kd_chunk_size,
                vocab_size=self._shared_vocab,
            )
        total = parts.loss
        hidden_sum = weight = None
        if want_hidden:
            rows = mask.reshape(-1).nonzero().squeeze(-1)
            projected = outputs.get("projected_hidden_states")  # set by the projection hook
            student_states = projected or tuple(outputs.hidden_states[s] for s, _ in self._layer_pairs)
            teacher_states = tuple(teacher.hidden_states[t] for _, t in self._layer_pairs)
            same_index = [(i, i) for i in range(len(self._layer_pairs))]
            hidden_sum = intermediate_loss(student_states, teacher_states, rows, same_index, None,
                                           args.intermediate_loss)
            weight = self._intermediate_weight(parts.loss.detach(), hidden_sum.detach())
            total = total + weight * hidden_sum

        # Sum over counted tokens / tokens of the whole (accumulated, all-process) batch: the gradient of one big batch
        denom = num_items_in_batch if num_items_in_batch is not None else max(parts.num_tokens, 1)
        loss = total / denom
        if args.average_tokens_across_devices and num_items_in_batch is not None:
            # DDP averages gradients over processes, while num_items_in_batch counts every process's tokens
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())

        self._log_parts(mode, inputs, parts, hidden_sum, weight)
        return (loss, outputs) if return_outputs else loss

    def _intermediate_weight(self, logit_sum: torch.Tensor, hidden_sum: torch.Tensor):
        """``intermediate_weight``, times ``logit loss / intermediate loss`` (all processes) when balancing."""
        w = self.args.intermediate_weight
        if not self.args.intermediate_balance:
            return w
        pair = torch.stack([logit_sum.float(), hidden_sum.float()])
        if self.accelerator.num_processes > 1:
            pair = self.accelerator.reduce(pair, reduction="sum")
        return w * pair[0] / pair[1].clamp_min(1e-12)

    def _log_parts(self, mode, inputs, parts, hidden_sum, weight) -> None:
        """Accumulate token sums of the loss parts (all processes); ``log`` turns them into per-token means."""
        device = parts.kd.device
        zero = torch.zeros((), device=device)
        stats = torch.stack([
            parts.kd, parts.ce,
            hidden_sum.detach().float() if hidden_sum is not None else zero,
            torch.tensor(float(parts.num_tokens), device=device),
        ])
        stats = self.accelerator.gather(stats).reshape(-1, 4).sum(0).tolist()
        sums = self._loss_sums.setdefault(mode, [0.0, 0.0, 0.0, 0.0])
        for i, value in enumerate(stats):
            sums[i] += value
        if weight is not None:
            self._metrics[mode]["intermediate_weight"].append(float(weight))
        if mode == "train":
            if "attention_mask" in inputs:
                local = inputs["attention_mask"].sum()
            else:
                local = torch.tensor(inputs["input_ids"].numel(), device=inputs["input_ids"].device)
            self._total_train_tokens += int(self.accelerator.gather(local.reshape(1)).sum()) // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        sums = self._loss_sums.pop(mode, None)
        if sums is not None:
            prefix = "eval_" if mode == "eval" else ""
            n = max(sums[3], 1.0)
            logs[f"{prefix}kd_loss"] = sums[0] / n
            logs[f"{prefix}ce_loss"] = sums[1] / n
            if self._layer_pairs:
                logs[f"{prefix}intermediate_loss"] = sums[2] / n
        super().log(logs, start_time)

    # --- checkpoints: projections travel beside the student's weights, never inside them -------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        super().save_model(output_dir, _internal_call=_internal_call)
        if self.projections is not None and _internal_call and self.args.should_save and not self.is_deepspeed_enabled:
            from safetensors.torch import save_file

            out = output_dir or self.args.output_dir
            state = {k: v.detach().cpu().contiguous() for k, v in self.projections.state_dict().items()}
            save_file(state, os.path.join(out, PROJECTIONS_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model=model)
        path = os.path.join(resume_from_checkpoint, PROJECTIONS_FILE)
        if self.projections is not None and os.path.isfile(path):
            from safetensors.torch import load_file

            self.projections.load_state_dict(load_file(path))

    def save_student(self, out_dir, *, overwrite: bool = False):
        """Save the student alone (no teacher, no projections) with ``hf_minitron.save_model`` (atomic, verified).

        A PEFT student is merged into its base model first (on a copy when the adapters stay in use)."""
        from ..loading import save_model

        if not self.accelerator.is_main_process:
            self.accelerator.wait_for_everyone()
            return None
        student = self.accelerator.unwrap_model(self.model)
        detached = self.projections is not None and hasattr(student, PROJECTIONS_ATTR)
        if detached:
            delattr(student, PROJECTIONS_ATTR)
        try:
            if hasattr(student, "merge_and_unload"):
                import copy

                student = copy.deepcopy(student).merge_and_unload()
                # SFTTrainer patched the base model's forward with a closure over the original model: the copy must
                # run its own (class) forward
                student.__dict__.pop("forward", None)
            path = save_model(student, self.processing_class, out_dir, overwrite=overwrite)
        finally:
            if detached:
                self.accelerator.unwrap_model(self.model).add_module(PROJECTIONS_ATTR, self.projections)
        self.accelerator.wait_for_everyone()
        return path
