"""Checks run in front of ``DistillationTrainer``, before any training: is each model a causal LM, do student and
teacher share a tokenizer, a vocabulary (or one plus padding rows, with the opt-in) and a final-logit soft-cap.

Each check raises ``ValueError`` naming both sides and the fix. The small model helpers here (``base_model``,
``num_layers``, ``hidden_size``, ``param_dtype``) look through a PEFT wrapper and a multimodal config's text part.
"""

from __future__ import annotations

import torch

from ..loading import get_base_model

base_model = get_base_model  # the one PEFT unwrap (hf_minitron.loading)


def num_layers(model) -> int:
    return int(base_model(model).config.get_text_config().num_hidden_layers)


def hidden_size(model) -> int:
    return int(base_model(model).config.get_text_config().hidden_size)


def param_dtype(model) -> torch.dtype:
    """dtype of the model's first floating-point parameter (fp32 for a model without one)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def vocab_rows(model) -> int:
    """Rows of the model's LM head (the vocabulary its logits cover, padding rows included)."""
    return int(base_model(model).get_output_embeddings().weight.shape[0])


def tokenizer_of(processing_class):
    """The tokenizer of a processor (the tokenizer itself otherwise)."""
    return getattr(processing_class, "tokenizer", processing_class)


def _causal_lm_class_names() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return names


def check_causal_lm(model, role: str) -> None:
    """Refuse anything that is not a transformers ``*ForCausalLM`` (optionally PEFT-wrapped)."""
    base = base_model(model)
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


def check_same_tokenizer(student_tokenizer, teacher_tokenizer) -> None:
    """Refuse two tokenizers whose token→id maps differ (names and sizes in the message)."""
    if teacher_tokenizer is None or student_tokenizer is None:
        return
    s_tok, t_tok = tokenizer_of(student_tokenizer), tokenizer_of(teacher_tokenizer)
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
    v_s, v_t = vocab_rows(student), vocab_rows(teacher)
    if v_s == v_t:
        return None
    n_tok = len(tokenizer_of(tokenizer)) if tokenizer is not None else None
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


def logit_softcap(model) -> float | None:
    """The model's final-logit soft-cap (Gemma 2 style), ``None`` when it applies none."""
    from ..arch import UnsupportedArchitectureError, get_adapter

    try:
        return get_adapter(model).logit_softcap
    except UnsupportedArchitectureError:
        config = base_model(model).config
        return getattr(config.get_text_config(), "final_logit_softcapping", None)


def check_logit_softcap(student, teacher) -> None:
    """Both models must apply the same final-logit soft-capping (each in its own forward), or neither."""
    cap_s, cap_t = logit_softcap(student), logit_softcap(teacher)
    if cap_s == cap_t:
        return
    raise ValueError(
        f"Final-logit soft-capping differs: student final_logit_softcapping={cap_s}, teacher {cap_t}. The teacher's "
        "distribution would be matched under a different logit transform. Set "
        f"student.config.final_logit_softcapping = {cap_t} (the student's forward then applies the same cap), or use "
        "a teacher with the student's setting."
    )


__all__ = [
    "base_model", "check_causal_lm", "check_logit_softcap", "check_same_tokenizer", "hidden_size", "logit_softcap",
    "num_layers", "param_dtype", "shared_vocab_size", "tokenizer_of", "vocab_rows",
]
