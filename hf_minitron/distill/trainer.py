"""``DistillationTrainer``: ``trl.SFTTrainer`` with a frozen teacher and a logit (plus optional hidden-state) loss.

This is the offline logit distiller of the Minitron recipe: the student is trained on the data to match the teacher's
next-token distribution (forward KL at temperature 1 by default). TRL's own ``trl.DistillationTrainer`` is a different
tool: it is on-policy (the student generates, the teacher scores the generations).

Where the teacher's distribution comes from (a model in memory, or an offline top-k cache) is a
:class:`~hf_minitron.distill.teacher_sources.TeacherSource`; the checks in front of the trainer are in
:mod:`hf_minitron.distill.checks`; the losses in :mod:`hf_minitron.distill.losses`.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import torch
from transformers import TrainingArguments
from transformers.utils import ModelOutput
from trl import SFTTrainer

from .checks import base_model, check_causal_lm, hidden_size, param_dtype
from .config import TEXT_MAX_LENGTH, DistillationConfig
from .intermediate import PROJECTIONS_ATTR, HiddenProjections, intermediate_loss
from .teacher_sources import TeacherOutputs, make_teacher_source, model_inputs

logger = logging.getLogger(__name__)

PROJECTIONS_FILE = "distill_projections.safetensors"
MINITRON_CITATION = """\
@inproceedings{muralidharan2024compact,
    title        = {{Compact Language Models via Pruning and Knowledge Distillation}},
    author       = {Saurav Muralidharan and Sharath Turuvekere Sreenivas and Raviraj Joshi and Marcin Chochowski and
                    Mostofa Patwary and Mohammad Shoeybi and Bryan Catanzaro and Jan Kautz and Pavlo Molchanov},
    year         = 2024,
    booktitle    = {Advances in Neural Information Processing Systems},
    eprint       = {arXiv:2407.14679},
}"""
# Hub ids of teachers hf-minitron names by a short name (the embedded GGUF is a Q4_1 copy of this model)
_KNOWN_TEACHERS = {"default": "HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
                   "SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}


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


# --- models given as paths --------------------------------------------------------------------------------------

def load_from_path(source, init_kwargs: dict | None, *, trust_remote_code: bool, default_dtype, tokenizer: bool,
                   distributed: bool = False):
    """``(model, tokenizer or None)`` for a path / Hub id / ``.gguf`` file, honouring the ``from_pretrained`` keywords
    of ``model_init_kwargs`` / ``teacher_model_init_kwargs``: ``dtype`` (else ``default_dtype``), ``revision``,
    ``attn_implementation``, ``device_map`` (dropped in a multi-process run, as TRL does), ``trust_remote_code``."""
    from ..loading import load_causal_lm

    kw = dict(init_kwargs or {})
    dtype = kw.pop("dtype", None) or kw.pop("torch_dtype", None) or default_dtype
    attn = kw.pop("attn_implementation", None)
    device_map = None if distributed else kw.pop("device_map", None)
    model, tok = load_causal_lm(source, dtype=dtype, revision=kw.pop("revision", None), device_map=device_map,
                                trust_remote_code=kw.pop("trust_remote_code", trust_remote_code), tokenizer=tokenizer)
    if attn is not None:
        model.set_attn_implementation(attn)
    return model, tok


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


def _hub_id(name: str | None) -> str | None:
    """``name`` when it can be a Hub model id (not a local path or file), the Hub id of a known short name, else
    ``None``."""
    if not name:
        return None
    text = str(name)
    if text in _KNOWN_TEACHERS or text.endswith("SmolLM2-135M-Instruct.Q4_1.gguf"):
        return _KNOWN_TEACHERS.get(text, _KNOWN_TEACHERS["default"])
    if os.path.exists(text) or text.startswith((".", "/", "~")) or text.count("/") != 1:
        return None
    return text


def _as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class _KeepAttentionMask:
    """Wraps TRL's language-modeling collator (which builds an all-ones ``attention_mask``) so that an already
    tokenized dataset's own ``attention_mask`` column is used, right-padded with zeros, and its padding positions get
    no label."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples):
        batch = self.collator(examples)
        if not examples or not all(isinstance(e, dict) and "attention_mask" in e for e in examples):
            return batch
        width = batch["input_ids"].shape[1]
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            values = torch.as_tensor(example["attention_mask"], dtype=torch.long)[:width]
            mask[row, : len(values)] = values
        batch["attention_mask"] = mask
        batch["labels"] = batch["labels"].masked_fill(mask == 0, -100)
        return batch

    def __getattr__(self, name):  # the wrapped collator's settings (pad_token_id, padding_free, ...)
        if name == "collator":  # not set yet (unpickling in a DataLoader worker)
            raise AttributeError(name)
        return getattr(self.collator, name)


# --- the trainer --------------------------------------------------------------------------------------------------

class DistillationTrainer(SFTTrainer):
    """``SFTTrainer`` that distils a frozen teacher into the student.

    Use it exactly where you would use ``SFTTrainer`` or ``Trainer`` (same data handling: plain text packed or not,
    chat data through the tokenizer's template, prompt-completion, already tokenized blocks) and add
    ``teacher_model`` (a model, or a path / Hub id / GGUF file loaded with ``args.teacher_model_init_kwargs``) or
    ``args.teacher_cache``. The loss (see ``DistillationConfig``) is a divergence between the student's and the
    teacher's next-token distributions at every position whose label is not ``-100``, summed and divided by
    ``num_items_in_batch``, so gradient accumulation and several processes give the gradient of one big batch.

    Evaluation reports the student's cross-entropy as ``eval_loss`` (so ``exp(eval_loss)`` is its perplexity, and
    ``metric_for_best_model="loss"`` and early stopping watch it) and the distillation objective as
    ``eval_distill_loss``, with its parts ``eval_kd_loss``, ``eval_ce_loss`` and ``eval_intermediate_loss``.

    The teacher is frozen, in eval mode, never saved, and placed for the run's engine (DeepSpeed ZeRO-3 shards it,
    FSDP wraps it, otherwise it is moved to the device). Intermediate-state projections (when hidden sizes differ) are
    registered on the student for the run, trained and synchronised with it, and kept out of saved models.
    """

    _tag_names = ["trl", "sft", "distillation", "hf-minitron"]
    _name = "Distillation"
    _paper = {"title": "Compact Language Models via Pruning and Knowledge Distillation", "id": "2407.14679",
              "citation": MINITRON_CITATION}
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
        from_path = isinstance(model, (str, os.PathLike))
        model, processing_class = self._load_student(model, processing_class, args, kwargs)
        if isinstance(teacher_model, (str, os.PathLike)):
            init = dict(args.teacher_model_init_kwargs or {})
            init.setdefault("dtype", args.teacher_dtype)
            teacher_model, t_tok = load_from_path(
                teacher_model, init, trust_remote_code=args.trust_remote_code, default_dtype=param_dtype(model),
                tokenizer=teacher_processing_class is None, distributed=args.world_size > 1)
            teacher_processing_class = teacher_processing_class if teacher_processing_class is not None else t_tok
        self.teacher_source, train_dataset, data_collator = make_teacher_source(
            args, model, processing_class, teacher_model=teacher_model,
            teacher_processing_class=teacher_processing_class, train_dataset=train_dataset,
            data_collator=data_collator)
        self._layer_pairs = self.teacher_source.layer_pairs
        if self._layer_pairs and hidden_size(model) != self.teacher_source.hidden_size:
            if kwargs.get("optimizers", (None, None))[0] is not None:
                raise ValueError("An intermediate-state loss with a learned projection needs the trainer to build the "
                                 "optimizer (the projection is trained with the student): do not pass optimizers=.")

        # model_init_kwargs were used to load a path student here; SFTTrainer would warn they are ignored
        init_kwargs = args.model_init_kwargs
        if from_path:
            args.model_init_kwargs = None
        try:
            super().__init__(model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                             eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)
        finally:
            args.model_init_kwargs = init_kwargs

        # Trainer only counts num_items_in_batch for models it believes take loss kwargs; our loss always needs it,
        # over the shifted labels (position i predicts label i + 1)
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = True
        self._loss_sums: dict[str, list[float]] = {}
        self._evaluating = False  # set by evaluation_loop: compute_loss then returns the student's cross-entropy
        self._keep_attention_mask()
        self.teacher_source.prepare(self)
        self.projections = self._attach_projections()

    # --- setup ----------------------------------------------------------------------------------------------------
    @staticmethod
    def _load_student(model, processing_class, args, kwargs):
        """A student given as a path is loaded with ``args.model_init_kwargs`` (dtype default fp32, as SFTTrainer);
        a student model is checked to be a causal LM. Returns ``(model, processing_class)``."""
        if isinstance(model, (str, os.PathLike)):
            if kwargs.get("quantization_config") is not None:
                raise ValueError("quantization_config with a student given as a path is not supported: load the "
                                 "quantized student with from_pretrained and pass the model (with peft_config)")
            kwargs.pop("quantization_config", None)
            model, tok = load_from_path(model, args.model_init_kwargs, trust_remote_code=args.trust_remote_code,
                                        default_dtype=torch.float32, tokenizer=processing_class is None,
                                        distributed=args.world_size > 1)
            processing_class = processing_class if processing_class is not None else tok
        check_causal_lm(model, "student")
        if processing_class is None:
            from transformers import AutoTokenizer

            processing_class = AutoTokenizer.from_pretrained(base_model(model).config._name_or_path,
                                                             trust_remote_code=args.trust_remote_code)
        return model, processing_class

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        """SFTTrainer's preparation, with ``max_length`` unset resolved per dataset: an already tokenized dataset
        (``input_ids``) is never cut, text is truncated or packed at ``TEXT_MAX_LENGTH``."""
        if args.max_length is not None:
            return super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
        from trl.data_utils import get_dataset_column_names

        tokenized = "input_ids" in (get_dataset_column_names(dataset) or [])
        args.max_length = None if tokenized and not packing else TEXT_MAX_LENGTH
        try:
            return super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
        finally:
            args.max_length = None

    def _set_signature_columns_if_needed(self):
        """SFTTrainer keeps ``input_ids``, ``labels`` and ``seq_lengths``; an already tokenized dataset's
        ``attention_mask`` is kept as well (padding inside its rows must stay masked)."""
        super()._set_signature_columns_if_needed()
        if "input_ids" in self._signature_columns and "attention_mask" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "attention_mask"]

    def _keep_attention_mask(self) -> None:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        if isinstance(self.data_collator, DataCollatorForLanguageModeling) and not self.data_collator.padding_free:
            self.data_collator = _KeepAttentionMask(self.data_collator)

    def _attach_projections(self) -> HiddenProjections | None:
        """Register learned student→teacher projections on the student (trained, synced and sharded with it by
        whatever engine wraps it) and exclude them from saved checkpoints."""
        if not self._layer_pairs:
            return None
        proj = HiddenProjections([s for s, _ in self._layer_pairs], hidden_size(self.model),
                                 self.teacher_source.hidden_size)
        if not proj.maps:
            return None
        ref = self.model.get_output_embeddings().weight
        proj.to(device=ref.device, dtype=param_dtype(self.model))
        self.model.add_module(PROJECTIONS_ATTR, proj)
        ignore = getattr(self.model, "_keys_to_ignore_on_save", None)
        names = {f"{PROJECTIONS_ATTR}.{k}" for k in proj.state_dict()}
        if isinstance(ignore, set):
            ignore.update(names)
        else:
            self.model._keys_to_ignore_on_save = set(ignore or ()) | names
        self._projection_hook = self.model.register_forward_hook(_projection_hook(proj, self._layer_pairs))
        return proj

    @property
    def teacher_model(self):
        """The teacher model (``None`` when training from a teacher cache)."""
        return getattr(self.teacher_source, "model", None)

    @property
    def teacher_cache(self):
        """The :class:`TeacherCache` trained from (``None`` with a teacher model)."""
        return getattr(self.teacher_source, "cache", None)

    # --- loss ------------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "eval" if self._evaluating else "train"
        args = self.args
        labels = inputs["labels"]
        teacher = self.teacher_source.outputs(inputs)  # a cache's collator put the teacher's tensors in the batch
        want_hidden = bool(self._layer_pairs)
        outputs = model(**model_inputs(inputs), use_cache=False, output_hidden_states=want_hidden)

        # Position i predicts label i + 1 (the last position predicts nothing). Shifting the labels, not the logits,
        # keeps the [batch, seq, vocab] tensors as contiguous views.
        targets = torch.full_like(labels, -100)
        targets[:, :-1] = labels[:, 1:]
        mask = targets != -100
        parts = self.teacher_source.loss(outputs.logits, teacher, mask, targets, args)
        total = parts.loss
        hidden_sum = weight = None
        if want_hidden:
            hidden_sum = self._hidden_state_loss(outputs, teacher, mask)
            weight = self._intermediate_weight(parts.loss.detach(), hidden_sum.detach())
            total = total + weight * hidden_sum
        self._log_parts(mode, inputs, parts, total, hidden_sum, weight)

        if self._evaluating:  # eval_loss is the student's cross-entropy (see evaluation_loop)
            loss = parts.ce / max(parts.num_tokens, 1)
        else:  # sum over counted tokens / tokens of the whole (accumulated, all-process) batch: one big batch
            denom = num_items_in_batch if num_items_in_batch is not None else max(parts.num_tokens, 1)
            loss = total / denom
            if args.average_tokens_across_devices and num_items_in_batch is not None:
                # DDP averages gradients over processes, while num_items_in_batch counts every process's tokens
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return (loss, outputs) if return_outputs else loss

    def _hidden_state_loss(self, outputs, teacher: TeacherOutputs, mask) -> torch.Tensor:
        """Sum over counted tokens of the mean (over mapped pairs) hidden-state loss."""
        rows = mask.reshape(-1).nonzero().squeeze(-1)
        projected = outputs.get("projected_hidden_states")  # set by the projection hook
        student_states = projected or tuple(outputs.hidden_states[s] for s, _ in self._layer_pairs)
        teacher_states = tuple(teacher.hidden_states[t] for _, t in self._layer_pairs)
        same_index = [(i, i) for i in range(len(self._layer_pairs))]
        return intermediate_loss(student_states, teacher_states, rows, same_index, None, self.args.intermediate_loss)

    def _intermediate_weight(self, logit_sum: torch.Tensor, hidden_sum: torch.Tensor):
        """``intermediate_weight``, times ``logit loss / intermediate loss`` (all processes) when balancing."""
        w = self.args.intermediate_weight
        if not self.args.intermediate_balance:
            return w
        pair = torch.stack([logit_sum.float(), hidden_sum.float()])
        if self.accelerator.num_processes > 1:
            pair = self.accelerator.reduce(pair, reduction="sum")
        return w * pair[0] / pair[1].clamp_min(1e-12)

    # --- logging: token sums of the loss parts over all processes, turned into per-token means ------------------
    def _log_parts(self, mode, inputs, parts, total, hidden_sum, weight) -> None:
        device = parts.kd.device
        zero = torch.zeros((), device=device)
        stats = torch.stack([
            parts.kd, parts.ce,
            hidden_sum.detach().float() if hidden_sum is not None else zero,
            total.detach().float(),
            torch.tensor(float(parts.num_tokens), device=device),
        ])
        stats = self.accelerator.gather(stats).reshape(-1, 5).sum(0).tolist()
        sums = self._loss_sums.setdefault(mode, [0.0] * 5)
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

    def _loss_means(self, mode: str, prefix: str) -> dict[str, float]:
        sums = self._loss_sums.pop(mode, None)
        if sums is None:
            return {}
        n = max(sums[4], 1.0)
        means = {f"{prefix}kd_loss": sums[0] / n, f"{prefix}ce_loss": sums[1] / n}
        if self._layer_pairs:
            means[f"{prefix}intermediate_loss"] = sums[2] / n
        if prefix:  # evaluation: the objective under its own name (training logs it as `loss`)
            means[f"{prefix}distill_loss"] = sums[3] / n
        return means

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """Trainer's loop; then ``{prefix}_loss`` becomes the student's cross-entropy per counted token over the whole
        set (all processes), beside ``{prefix}_distill_loss``, ``_kd_loss``, ``_ce_loss`` (and ``_intermediate_loss``)."""
        self._loss_sums.pop("eval", None)
        self._evaluating = True
        try:
            output = super().evaluation_loop(dataloader, description, prediction_loss_only=prediction_loss_only,
                                             ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        finally:
            self._evaluating = False
        means = self._loss_means("eval", f"{metric_key_prefix}_")
        if means:
            output.metrics.update(means)
            output.metrics[f"{metric_key_prefix}_loss"] = means[f"{metric_key_prefix}_ce_loss"]
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log (evaluation metrics are added by evaluation_loop)
            logs.update(self._loss_means("train", ""))
        super().log(logs, start_time)

    # --- checkpoints: projections travel beside the student's weights, never inside them -------------------------
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.projections is not None and self.args.should_save and not self.is_deepspeed_enabled:
            from safetensors.torch import save_file
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            out = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
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

    # --- model card ------------------------------------------------------------------------------------------------
    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          tags: str | list[str] | None = None, *, language: str | None = None,
                          license: str | None = None, finetuned_from: str | None = None,
                          tasks: str | list[str] | None = None, dataset_tags: str | list[str] | None = None,
                          dataset: str | list[str] | None = None, dataset_args: str | list[str] | None = None) -> None:
        """Write ``README.md`` in ``args.output_dir``: this project's card for a distilled student (the teacher as
        ``base_model``, tags ``pruned``/``distillation``/``minitron``, the recipe, the last evaluation, the Minitron
        citation). Takes the keywords of ``Trainer.create_model_card`` (``finetuned_from``: what the student was
        initialised from, e.g. the pruned checkpoint) and of TRL's (``dataset_name``); ``push_to_hub(**kwargs)``
        passes its keywords here."""
        if not self.is_world_process_zero():
            return
        from huggingface_hub import ModelCard, ModelCardData

        teacher = self.teacher_source.name
        datasets = list(dict.fromkeys(_as_list(dataset_name) + _as_list(dataset) + _as_list(dataset_tags)))
        tag_list = list(dict.fromkeys([*_as_list(tags), "pruned", "distillation", "minitron", *self._tag_names]))
        task = _as_list(tasks)
        data = ModelCardData(base_model=_hub_id(teacher), datasets=datasets or None, language=language,
                             license=license, library_name="transformers", model_name=model_name,
                             pipeline_tag=task[0] if len(task) == 1 else "text-generation", tags=tag_list)
        title = model_name or os.path.basename(os.path.abspath(self.args.output_dir))
        body = self._card_body(title, teacher, finetuned_from, datasets, _as_list(dataset_args))
        card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
        os.makedirs(self.args.output_dir, exist_ok=True)
        card.save(os.path.join(self.args.output_dir, "README.md"))

    def _card_body(self, title, teacher, finetuned_from, datasets, dataset_args) -> str:
        args = self.args
        hub = _hub_id(teacher)
        teacher_ref = f"[{hub}](https://huggingface.co/{hub})" if hub else f"`{teacher}`"
        student_from = finetuned_from or getattr(base_model(self.model).config, "name_or_path", "") or "?"
        loss = f"`{args.kd_loss}` at T = {args.temperature:g}"
        if args.kd_loss == "jsd":
            loss += f", beta = {args.jsd_beta:g}"
        if self.teacher_cache is not None:
            s = self.teacher_cache.settings
            loss += f" against an offline top-{s.top_k} teacher cache (`{s.kind}`, tail `{args.topk_tail}`)"
        loss += f", cross-entropy weight {args.ce_weight:g}"
        hidden = (f"`{args.intermediate_loss}` on pairs {self._layer_pairs}, weight {args.intermediate_weight:g}"
                  + (" (balanced)" if args.intermediate_balance else "") if self._layer_pairs else "none")
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
        data = ", ".join(f"`{d}`" for d in datasets) or "not recorded"
        if dataset_args:
            data += f" ({', '.join(map(str, dataset_args))})"
        rows = [("teacher", teacher_ref), ("student initialised from", f"`{student_from}`"),
                ("distillation loss", loss), ("intermediate-state loss", hidden), ("data", data),
                ("optimizer steps", f"{self.state.global_step} (global batch {batch} sequences, learning rate "
                                    f"{args.learning_rate:g})")]
        evals = [h for h in self.state.log_history if "eval_loss" in h]
        if evals:
            last = evals[-1]
            rows.append(("held-out cross-entropy (eval_loss)", f"{last['eval_loss']:.4f} (perplexity "
                                                                 f"{math.exp(min(last['eval_loss'], 700)):.2f})"))
            if "eval_kd_loss" in last:
                rows.append(("held-out distillation loss (eval_kd_loss)", f"{last['eval_kd_loss']:.4f}"))
        table = "\n".join(f"| {k} | {v} |" for k, v in rows)
        return (f"# {title}\n\nA student language model distilled from {teacher_ref} with hf-minitron, following the "
                "Minitron recipe (structured pruning, then logit knowledge distillation from the original model).\n\n"
                f"## Recipe\n\n| | |\n|---|---|\n{table}\n\n"
                f"## Citation\n\n```bibtex\n{self._paper['citation']}\n```\n")
