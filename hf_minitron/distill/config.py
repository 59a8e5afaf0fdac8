"""``DistillationConfig``: ``trl.SFTConfig`` plus the logit-distillation fields."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from .intermediate import INTERMEDIATE_LOSSES
from .losses import KD_LOSSES, TOPK_KD_LOSS


def _gpu_bf16_available() -> bool:
    try:
        from transformers.utils import is_torch_bf16_gpu_available

        return bool(is_torch_bf16_gpu_available())
    except Exception:  # pragma: no cover - very old transformers
        return False


@dataclass
class DistillationConfig(SFTConfig):
    r"""Configuration of :class:`DistillationTrainer`: every ``SFTConfig`` field plus the distillation ones below.

    Unlike ``SFTConfig``, ``bf16`` defaults to ``True`` only where a GPU supports it (so the config also builds on a
    CPU-only machine).

    Parameters:
        kd_loss: ``"forward_kl"`` (default; the Minitron recipe), ``"reverse_kl"``, ``"jsd"``, or ``"topk_kl"``
            (top-k KL against ``teacher_cache``).
        temperature: softmax temperature of student and teacher; the divergence is multiplied by ``T**2``.
        jsd_beta: interpolation ``beta`` of the generalized JSD, ``0 < beta < 1``.
        ce_weight: weight of the student's next-token cross-entropy added to the distillation loss (default 0).
        kd_chunk_size: tokens per chunk of the loss (``None``: about 4M logits per chunk).
        teacher_dtype: dtype the teacher is loaded in when given as a path (``None``: the student's dtype).
        truncate_vocab: opt in to distil over the shared vocabulary when one model's vocabulary is the other's plus
            padding rows (the tokenizer must fit inside the smaller one).
        intermediate_layer_map: ``None`` (logit loss only), ``"auto"`` or ``"s:t,s:t"`` pairs of hidden-state indices
            (0 = embeddings, ``i`` = output of layer ``i``, ``num_hidden_layers`` = final hidden state).
        intermediate_loss: ``"cosine"`` (default) or ``"mse"``.
        intermediate_weight: weight of the intermediate-state loss.
        intermediate_balance: scale the intermediate loss to the logit loss's magnitude on every micro-batch (its
            weight becomes ``intermediate_weight * logit_loss / intermediate_loss``, without gradient).
        teacher_cache: an offline teacher cache (``hf-minitron cache-teacher``) to train from with no teacher in
            memory; it supplies the training tokens and needs ``kd_loss="topk_kl"``.
        topk_tail: ``kd_loss="topk_kl"``: ``"bucket"``, ``"renormalize"`` or ``"sampled"`` (see
            ``hf_minitron.kernels.topk_kl`` for what each compares and its bias); default: ``"sampled"`` for a
            ``--sampled`` cache, ``"bucket"`` for a top-k cache.
    """

    kd_loss: str = field(
        default="forward_kl",
        metadata={"help": "Distillation divergence ('topk_kl': top-k KL against teacher_cache).",
                  "choices": [*KD_LOSSES, TOPK_KD_LOSS]},
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
        metadata={"help": "Tokens per chunk of the distillation loss (default: about 4M logits per chunk)."},
    )
    teacher_dtype: str | None = field(
        default=None,
        metadata={"help": "dtype the teacher is loaded in when given as a path: float32, bfloat16, float16 or auto "
                          "(default: the student's dtype)."},
    )
    truncate_vocab: bool = field(
        default=False,
        metadata={"help": "Opt in to distil over the shared vocabulary when one model's vocabulary is the other's "
                          "plus padding rows."},
    )
    intermediate_layer_map: str | None = field(
        default=None,
        metadata={"help": "Intermediate-state loss: 'auto' or 'student:teacher' hidden-state index pairs such as "
                          "'4:8,8:16,15:30' (0 = embeddings, i = output of layer i). Unset: logit loss only."},
    )
    intermediate_loss: str = field(
        default="cosine",
        metadata={"help": "Intermediate-state loss.", "choices": list(INTERMEDIATE_LOSSES)},
    )
    intermediate_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of the intermediate-state loss."},
    )
    intermediate_balance: bool = field(
        default=True,
        metadata={"help": "Scale the intermediate-state loss to the logit loss's magnitude on every micro-batch."},
    )
    teacher_cache: str | None = field(
        default=None,
        metadata={"help": "Train from an offline teacher cache (`hf-minitron cache-teacher`) with no teacher in "
                          "memory; needs kd_loss='topk_kl'. The cache supplies the training tokens."},
    )
    topk_tail: str | None = field(
        default=None,
        metadata={"help": "kd_loss='topk_kl': how the teacher's mass outside its stored ids counts: 'bucket' (one "
                          "extra class), 'renormalize' (teacher renormalised over its top-k) or 'sampled' (a "
                          "--sampled cache; unbiased in expectation). Default: 'sampled' for a --sampled cache, 'bucket' "
                          "otherwise.", "choices": ["bucket", "renormalize", "sampled"]},
    )

    def __post_init__(self):
        if self.bf16 is None and not self.fp16:
            self.bf16 = _gpu_bf16_available() and not self.use_cpu
        if self.kd_loss not in (*KD_LOSSES, TOPK_KD_LOSS):
            raise ValueError(f"kd_loss={self.kd_loss!r}; choose one of {', '.join((*KD_LOSSES, TOPK_KD_LOSS))}")
        if (self.kd_loss == TOPK_KD_LOSS) != (self.teacher_cache is not None):
            raise ValueError("kd_loss='topk_kl' and teacher_cache go together: build a cache with `hf-minitron "
                             "cache-teacher` and set teacher_cache (--cache) with kd_loss='topk_kl'")
        if self.topk_tail not in (None, "bucket", "renormalize", "sampled"):
            raise ValueError(f"topk_tail={self.topk_tail!r}; choose bucket, renormalize or sampled")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature}; must be > 0 (1.0 is the Minitron setting)")
        if self.kd_loss == "jsd" and not 0.0 < self.jsd_beta < 1.0:
            raise ValueError(f"jsd_beta={self.jsd_beta}; must be in (0, 1). For beta=0 use kd_loss='forward_kl', "
                             "for beta=1 kd_loss='reverse_kl'")
        if self.ce_weight < 0:
            raise ValueError(f"ce_weight={self.ce_weight}; must be >= 0")
        if self.kd_chunk_size is not None and self.kd_chunk_size < 1:
            raise ValueError(f"kd_chunk_size={self.kd_chunk_size}; must be >= 1 (or unset for the default)")
        if self.teacher_dtype not in (None, "float32", "bfloat16", "float16", "auto"):
            raise ValueError(f"teacher_dtype={self.teacher_dtype!r}; use float32, bfloat16, float16, auto or unset")
        if self.intermediate_loss not in INTERMEDIATE_LOSSES:
            raise ValueError(f"intermediate_loss={self.intermediate_loss!r}; choose one of "
                             f"{', '.join(INTERMEDIATE_LOSSES)}")
        if self.intermediate_weight < 0:
            raise ValueError(f"intermediate_weight={self.intermediate_weight}; must be >= 0")
        super().__post_init__()
