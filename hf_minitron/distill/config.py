"""``DistillationConfig``: ``trl.SFTConfig`` plus the logit-distillation fields, with ``TrainingArguments``' defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from trl import SFTConfig

from ..errors import ConfigError

from .intermediate import INTERMEDIATE_LOSSES
from .losses import KD_LOSSES, TOPK_KD_LOSS

# max_length when unset, for text the trainer tokenizes or packs itself (SFTConfig's default)
TEXT_MAX_LENGTH = 1024
TOPK_TAILS = ("bucket", "renormalize", "sampled")
TEACHER_DTYPES = ("float32", "bfloat16", "float16", "auto")
# from_pretrained keywords honoured for a student or teacher given as a path (see DistillationTrainer)
MODEL_INIT_KEYS = ("dtype", "torch_dtype", "revision", "attn_implementation", "device_map", "trust_remote_code")


def _gpu_bf16_available() -> bool:
    try:
        from transformers.utils import is_torch_bf16_gpu_available

        return bool(is_torch_bf16_gpu_available())
    except Exception:  # pragma: no cover - very old transformers
        return False


@dataclass
class DistillationConfig(SFTConfig):
    r"""
    Configuration class for :class:`DistillationTrainer`: every ``SFTConfig`` (and ``TrainingArguments``) field plus
    the distillation ones below. Use it where a script uses ``TrainingArguments`` or ``SFTConfig``; with
    ``HfArgumentParser`` every field is a command-line flag.

    Parameters:
        > Parameters that control the student and the teacher

        model_init_kwargs (`dict[str, Any]` or `str`, *optional*):
            Inherited from ``SFTConfig``: ``from_pretrained`` keywords for a student given as a path: ``dtype``
            (default ``float32``), ``revision``, ``attn_implementation``, ``device_map``, ``trust_remote_code``.
        teacher_model_init_kwargs (`dict[str, Any]` or `str`, *optional*):
            The same keywords for a teacher given as a path (the name TRL's distillation config uses). ``dtype``
            defaults to the student's parameter dtype.
        teacher_dtype (`Literal["float32", "bfloat16", "float16", "auto"]`, *optional*):
            Shorthand for ``teacher_model_init_kwargs={"dtype": ...}``.
        truncate_vocab (`bool`, *optional*, defaults to `False`):
            Opt in to distil over the shared vocabulary when one model's LM head is the other's plus padding rows
            (the tokenizer must fit inside the smaller one).

        > Parameters that control the distillation loss

        kd_loss (`Literal["forward_kl", "reverse_kl", "jsd", "topk_kl"]`, *optional*, defaults to `"forward_kl"`):
            ``forward_kl`` = KL(p‖q) (the Minitron recipe), ``reverse_kl`` = KL(q‖p), ``jsd`` = generalized JSD with
            ``jsd_beta``, ``topk_kl`` = top-k KL against ``teacher_cache``; p = teacher, q = student.
        temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature of student and teacher; the divergence is multiplied by ``T**2``.
        jsd_beta (`float`, *optional*, defaults to `0.5`):
            Interpolation ``beta`` of the generalized JSD, ``0 < beta < 1``.
        ce_weight (`float`, *optional*, defaults to `0.0`):
            Weight of the student's next-token cross-entropy added to the distillation loss.
        kd_chunk_size (`int`, *optional*):
            Tokens per chunk of the loss (default: ``KD_CHUNK_LOGITS // vocab``, i.e. 4M logits per chunk).

        > Parameters that control the intermediate-state loss

        intermediate_layer_map (`str`, *optional*):
            ``"auto"`` or ``"s:t,s:t"`` pairs of hidden-state indices (0 = embeddings, ``i`` = output of layer ``i``,
            ``num_hidden_layers`` = final hidden state). Unset: logit loss only.
        intermediate_loss (`Literal["cosine", "mse"]`, *optional*, defaults to `"cosine"`):
            Per-token loss between mapped hidden states.
        intermediate_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the intermediate-state loss.
        intermediate_balance (`bool`, *optional*, defaults to `True`):
            Scale the intermediate loss to the logit loss's magnitude on every micro-batch (its weight becomes
            ``intermediate_weight * logit_loss / intermediate_loss``, without gradient).

        > Parameters that control the offline teacher cache

        teacher_cache (`str`, *optional*):
            An offline teacher cache (``hf-minitron cache-teacher``) to train from with no teacher in memory; it
            supplies the training tokens and needs ``kd_loss="topk_kl"``.
        topk_tail (`Literal["bucket", "renormalize", "sampled"]`, *optional*):
            How ``topk_kl`` counts the teacher's mass outside its stored ids (see ``hf_minitron.kernels.topk_kl``).
            Default: ``"sampled"`` for a ``--sampled`` cache, ``"bucket"`` for a top-k cache.

        > Defaults that differ from ``SFTConfig`` (back to ``TrainingArguments``' unless noted)

        learning_rate (`float`, *optional*, defaults to `5e-5`):
            ``TrainingArguments``' value (``SFTConfig``: ``2e-5``).
        logging_steps (`float`, *optional*, defaults to `500`):
            ``TrainingArguments``' value (``SFTConfig``: 10).
        gradient_checkpointing (`bool`, *optional*):
            Unset, so ``activation_checkpointing`` stays off: ``TrainingArguments``' value (``SFTConfig``: ``True``).
            A distillation step's memory is mostly the student's and the teacher's ``[tokens, vocab]`` logits,
            which checkpointing does not shrink; turn it on with ``activation_checkpointing=True``.
        bf16 (`bool`, *optional*):
            Unset: ``True`` where a GPU supports bf16, else ``False`` (``TrainingArguments``: ``False``;
            ``SFTConfig``: ``True`` everywhere). The loss is computed in fp32 either way.
        max_length (`int`, *optional*):
            Unset: ``1024`` for text the trainer tokenizes or packs (``SFTConfig``'s value), no truncation for an
            already tokenized dataset (an ``input_ids`` column: its rows are your blocks). Set: as in ``SFTConfig``.

    Evaluation: ``eval_loss`` is the student's next-token cross-entropy per counted token over the evaluation set (what
    ``Trainer`` and ``SFTTrainer`` report, so ``exp(eval_loss)`` is its perplexity and ``metric_for_best_model="loss"``
    selects the best student); the distillation objective is ``eval_distill_loss``, its parts ``eval_kd_loss``,
    ``eval_ce_loss`` (equal to ``eval_loss``) and ``eval_intermediate_loss``. The training ``loss`` is the objective.

    A script whose own dataclass has a ``trust_remote_code`` field (``run_clm.py``'s ``ModelArguments``) cannot put
    this class in the same ``HfArgumentParser`` (both define ``--trust_remote_code``): use
    :class:`DistillationTrainingArguments` there.
    """

    _VALID_DICT_FIELDS = SFTConfig._VALID_DICT_FIELDS + ["teacher_model_init_kwargs"]

    # Defaults that differ from SFTConfig (see the class docstring)
    learning_rate: float = field(default=5e-5, metadata={"help": "The initial learning rate for AdamW."})
    logging_steps: float = field(
        default=500,
        metadata={"help": "Log every X update steps. Should be an integer or a float in range `[0,1)`. If smaller "
                          "than 1, will be interpreted as ratio of total training steps."},
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Deprecated alias of activation_checkpointing (TrainingArguments' default: unset, i.e. "
                          "off; SFTConfig turns it on)."},
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "Use bf16 mixed precision. Unset: on where a GPU supports bf16, off elsewhere."},
    )
    max_length: int | None = field(
        default=None,
        metadata={"help": f"Maximum tokens per sequence. Unset: {TEXT_MAX_LENGTH} for text the trainer tokenizes or "
                          "packs, no truncation for an already tokenized dataset (an input_ids column)."},
    )

    # Parameters that control the student and the teacher
    teacher_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments for from_pretrained when the teacher is given as a path (dtype, revision, "
                          "attn_implementation, device_map, trust_remote_code), as a dict or a JSON string."},
    )
    teacher_dtype: Literal["float32", "bfloat16", "float16", "auto"] | None = field(
        default=None,
        metadata={"help": "dtype a teacher given as a path is loaded in (shorthand for teacher_model_init_kwargs "
                          "dtype; default: the student's dtype)."},
    )
    truncate_vocab: bool = field(
        default=False,
        metadata={"help": "Opt in to distil over the shared vocabulary when one model's vocabulary is the other's "
                          "plus padding rows."},
    )

    # Parameters that control the distillation loss
    kd_loss: Literal["forward_kl", "reverse_kl", "jsd", "topk_kl"] = field(
        default="forward_kl",
        metadata={"help": "Distillation divergence: forward_kl (Minitron), reverse_kl, jsd, or topk_kl (top-k KL "
                          "against teacher_cache)."},
    )
    temperature: float = field(
        default=1.0,
        metadata={"help": "Softmax temperature of student and teacher; the divergence is scaled by T^2."},
    )
    jsd_beta: float = field(
        default=0.5,
        metadata={"help": "beta of the generalized JSD (0 < beta < 1), used when kd_loss='jsd'."},
    )
    ce_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the student's cross-entropy on the data added to the distillation loss."},
    )
    kd_chunk_size: int | None = field(
        default=None,
        metadata={"help": "Tokens per chunk of the distillation loss (default: 4M logits per chunk)."},
    )

    # Parameters that control the intermediate-state loss
    intermediate_layer_map: str | None = field(
        default=None,
        metadata={"help": "Intermediate-state loss: 'auto' or 'student:teacher' hidden-state index pairs such as "
                          "'4:8,8:16,15:30' (0 = embeddings, i = output of layer i). Unset: logit loss only."},
    )
    intermediate_loss: Literal["cosine", "mse"] = field(
        default="cosine",
        metadata={"help": "Intermediate-state loss: cosine or mse."},
    )
    intermediate_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of the intermediate-state loss."},
    )
    intermediate_balance: bool = field(
        default=True,
        metadata={"help": "Scale the intermediate-state loss to the logit loss's magnitude on every micro-batch."},
    )

    # Parameters that control the offline teacher cache
    teacher_cache: str | None = field(
        default=None,
        metadata={"help": "Train from an offline teacher cache (`hf-minitron cache-teacher`) with no teacher in "
                          "memory; needs kd_loss='topk_kl'. The cache supplies the training tokens."},
    )
    topk_tail: Literal["bucket", "renormalize", "sampled"] | None = field(
        default=None,
        metadata={"help": "kd_loss='topk_kl': how the teacher's mass outside its stored ids counts: 'bucket' (one "
                          "extra class), 'renormalize' (teacher renormalised over its top-k) or 'sampled' (a "
                          "--sampled cache; unbiased in expectation). Default: 'sampled' for a --sampled cache, 'bucket' "
                          "otherwise."},
    )

    def __post_init__(self):
        # resolved before the parent's __post_init__, which would turn an unset bf16 on everywhere
        if self.bf16 is None and not self.fp16:
            self.bf16 = _gpu_bf16_available() and not self.use_cpu
        super().__post_init__()
        self._check_choices()
        self._check_numbers()
        self._check_init_kwargs()

    def _check_choices(self) -> None:
        kd_losses = (*KD_LOSSES, TOPK_KD_LOSS)
        if self.kd_loss not in kd_losses:
            raise ConfigError(f"kd_loss={self.kd_loss!r}; choose one of {', '.join(kd_losses)}")
        if (self.kd_loss == TOPK_KD_LOSS) != (self.teacher_cache is not None):
            raise ConfigError("kd_loss='topk_kl' and teacher_cache go together: build a cache with `hf-minitron "
                             "cache-teacher` and set teacher_cache (--cache) with kd_loss='topk_kl'")
        if self.topk_tail not in (None, *TOPK_TAILS):
            raise ConfigError(f"topk_tail={self.topk_tail!r}; choose {', '.join(TOPK_TAILS)} or leave it unset")
        if self.intermediate_loss not in INTERMEDIATE_LOSSES:
            raise ConfigError(f"intermediate_loss={self.intermediate_loss!r}; choose one of "
                             f"{', '.join(INTERMEDIATE_LOSSES)}")
        if self.teacher_dtype not in (None, *TEACHER_DTYPES):
            raise ConfigError(f"teacher_dtype={self.teacher_dtype!r}; use {', '.join(TEACHER_DTYPES)} or leave it unset")

    def _check_numbers(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"temperature={self.temperature}; must be > 0 (1.0 is the Minitron setting)")
        if self.kd_loss == "jsd" and not 0.0 < self.jsd_beta < 1.0:
            raise ConfigError(f"jsd_beta={self.jsd_beta}; must be in (0, 1). For beta=0 use kd_loss='forward_kl', "
                             "for beta=1 kd_loss='reverse_kl'")
        if self.ce_weight < 0:
            raise ConfigError(f"ce_weight={self.ce_weight}; must be >= 0")
        if self.kd_chunk_size is not None and self.kd_chunk_size < 1:
            raise ConfigError(f"kd_chunk_size={self.kd_chunk_size}; must be >= 1 (or unset for the default)")
        if self.intermediate_weight < 0:
            raise ConfigError(f"intermediate_weight={self.intermediate_weight}; must be >= 0")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"max_length={self.max_length}; must be >= 2 (a token and the one it predicts) or unset")

    def _check_init_kwargs(self) -> None:
        for name in ("model_init_kwargs", "teacher_model_init_kwargs"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{name}={value!r}; give a dict or a JSON object string such as "
                                 "'{\"dtype\": \"bfloat16\"}'")
            unknown = sorted(set(value) - set(MODEL_INIT_KEYS))
            if unknown:
                raise ConfigError(f"{name} has {unknown}; hf-minitron loads a path with {', '.join(MODEL_INIT_KEYS)}. "
                                 "For other from_pretrained options load the model yourself and pass the model")
        kwargs = self.teacher_model_init_kwargs or {}
        given = kwargs.get("dtype", kwargs.get("torch_dtype"))
        if self.teacher_dtype is not None and given is not None and str(given) != self.teacher_dtype:
            raise ConfigError(f"teacher_dtype={self.teacher_dtype!r} and teacher_model_init_kwargs dtype={given!r} "
                             "disagree; set one of them")


@dataclass
class DistillationTrainingArguments(DistillationConfig):
    r"""
    :class:`DistillationConfig` without the ``--trust_remote_code`` flag, for scripts whose own dataclass defines
    ``trust_remote_code`` (``run_clm.py``'s ``ModelArguments``): ``HfArgumentParser((ModelArguments,
    DataTrainingArguments, DistillationTrainingArguments))`` parses without an option clash. The field stays on the
    config (``False``); for a teacher given as a path that needs remote code, set ``training_args.trust_remote_code =
    model_args.trust_remote_code`` after parsing.
    """

    trust_remote_code: bool = field(default=False, init=False, metadata={"help": "Not a flag here: set it in code."})
