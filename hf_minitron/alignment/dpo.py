"""DPO on the distilled student with TRL's ``DPOTrainer``, and an independent preference-margin evaluator.

Reference model (``reference=``):

* ``"model"`` (default): a frozen copy of the student before DPO, kept in memory (with LoRA the adapter is simply
  disabled, so no copy is made).
* ``"precomputed"``: TRL's ``precompute_ref_log_probs``: the student's log-probs of every chosen/rejected response
  are computed once before training, so no reference model is held during training.

Preference data: TRL ``prompt``/``chosen``/``rejected`` or sharegpt (see :func:`load_preference_data`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .data import AlignmentDataError, load_preference_data
from .training import frozen_copy, resolve_config, train_and_merge


def build_dpo_trainer(model, tokenizer, data, config=None, *, settings=None, lora=None, **fields):
    """The configured ``trl.DPOTrainer`` (not yet trained) behind :func:`train_dpo`.

    ``config``: a :class:`~hf_minitron.stages.dpo.DPOStageConfig` or its fields as keywords (``beta``,
    ``reference``, ``use_lora``, ``max_steps``, ...).
    """
    from trl import DPOTrainer

    from ..stages.dpo import DPOStageConfig

    config = resolve_config(DPOStageConfig, config, settings=settings, lora=lora, **fields)
    train = load_preference_data(data, limit=config.limit)
    args = config.trainer_args(precompute_ref_log_probs=config.reference == "precomputed")
    # with LoRA the reference is the model with the adapter switched off: no copy
    ref_model = frozen_copy(model) if config.reference == "model" and not config.use_lora else None
    model.train()
    return DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=train, processing_class=tokenizer,
                      peft_config=config.peft_config())


def train_dpo(model, tokenizer, data, config=None, *, settings=None, lora=None, **fields):
    """DPO-align ``model`` on preference ``data``; returns the trained ``*ForCausalLM`` (LoRA merged, eval mode).
    ``config``: a :class:`~hf_minitron.stages.dpo.DPOStageConfig` or its fields as keywords."""
    trainer = build_dpo_trainer(model, tokenizer, data, config, settings=settings, lora=lora, **fields)
    return train_and_merge(trainer)[0]


def pairs_with_room(pairs, tokenizer, max_length: int | None) -> tuple[list, list[int]]:
    """``(kept, skipped_rows)``: the pairs whose prompt leaves at least one chosen/rejected token within
    ``max_length`` (TRL's ``DPOTrainer`` drops the others as fully truncated), and the row numbers of the others.
    Every pair skipped, or conversational pairs for a tokenizer without a chat template, are errors."""
    conversational = isinstance(pairs[0]["prompt"], list)
    if conversational and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("the preference data is conversational (message lists) but the model's tokenizer has no "
                          "chat template; use a chat model or plain-string prompt/chosen/rejected data")
    if max_length is None:
        return list(pairs), []
    lengths = [len(_encode(tokenizer, p["prompt"], p["chosen"])[0]) for p in pairs]
    skipped = [i for i, n in enumerate(lengths) if n >= max_length]
    if len(skipped) == len(pairs):
        raise AlignmentDataError(f"every pair's prompt fills max_length={max_length} (the shortest takes "
                                 f"{min(lengths)} tokens), so no chosen or rejected token would be trained; raise "
                                 f"max_length above {min(lengths)}")
    return [p for i, p in enumerate(pairs) if lengths[i] < max_length], skipped


# ---------------------------------------------------------------------------------------------------------------
# Evaluation: implicit DPO rewards, computed here with plain PyTorch (independent of TRL's loss code)


def _encode(tokenizer, prompt, completion) -> tuple[list[int], list[int]]:
    """``(prompt_ids, completion_ids)`` of one response, the way it is scored: chat template for conversational data
    (the completion = the tokens the full conversation adds after the generation prompt), else plain text + EOS."""
    if isinstance(prompt, list):
        p = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
        full = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)
        p, full = list(p["input_ids"]), list(full["input_ids"])
        n = 0
        while n < min(len(p), len(full)) and p[n] == full[n]:
            n += 1
        return full[:n], full[n:]
    eos = tokenizer.eos_token or ""
    if not completion.endswith(eos):  # as TRL's DPOTrainer: standard completions end with EOS
        completion = completion + eos
    p = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + completion)["input_ids"]
    return full[: len(p)], full[len(p):]


@torch.no_grad()
def completion_logprobs(model, tokenizer, prompts, completions, *, max_length: int | None = None,
                        batch_size: int = 8) -> torch.Tensor:
    """Summed log-probability (nats) of each completion given its prompt: float64 tensor ``[n]``.

    Sequences are cut to ``max_length`` tokens from the start (as TRL's ``keep_start``).
    """
    device = next(model.parameters()).device
    model.eval()
    pairs = [_encode(tokenizer, p, c) for p, c in zip(prompts, completions)]
    out = []
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s:s + batch_size]
        seqs = [(p + c)[:max_length] if max_length else p + c for p, c in chunk]
        width = max(len(x) for x in seqs)
        ids = torch.full((len(seqs), width), tokenizer.pad_token_id or 0, dtype=torch.long)
        attn = torch.zeros_like(ids)
        target = torch.zeros_like(ids, dtype=torch.bool)
        for i, ((p, _), seq) in enumerate(zip(chunk, seqs)):
            ids[i, : len(seq)] = torch.tensor(seq)
            attn[i, : len(seq)] = 1
            target[i, len(p): len(seq)] = True
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.double().cpu()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        out.append((logp * target[:, 1:]).sum(dim=1))
    return torch.cat(out)


@dataclass
class PreferenceStats:
    """Implicit DPO rewards of a policy against a reference on preference pairs (per-pair tensors ``[n]``, nats)."""

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_rewards: torch.Tensor  # beta * (log pi(chosen) - log ref(chosen))
    rejected_rewards: torch.Tensor

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards

    def summary(self) -> dict[str, float]:
        return {"reward_margin": self.margins.mean().item(),
                "reward_accuracy": (self.margins > 0).double().mean().item(),
                "chosen_logp": self.chosen_logps.mean().item(),
                "rejected_logp": self.rejected_logps.mean().item()}


def preference_logps(model, tokenizer, data, *, max_length: int | None = None, batch_size: int = 8,
                     limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(chosen, rejected)`` summed log-probs ``[n]`` (nats) of ``model`` on preference ``data``."""
    pairs = load_preference_data(data, limit=limit)
    prompts = list(pairs["prompt"])
    kw = dict(max_length=max_length, batch_size=batch_size)
    return (completion_logprobs(model, tokenizer, prompts, list(pairs["chosen"]), **kw),
            completion_logprobs(model, tokenizer, prompts, list(pairs["rejected"]), **kw))


def preference_stats(model, ref_model, tokenizer, data, *, beta: float = 0.1, max_length: int | None = None,
                     batch_size: int = 8, limit: int | None = None,
                     reference_logps: tuple[torch.Tensor, torch.Tensor] | None = None) -> PreferenceStats:
    """Implicit rewards ``beta * log(pi/ref)`` of ``model`` vs ``ref_model`` on the chosen and rejected responses of
    ``data`` (any form :func:`load_preference_data` accepts). ``reference_logps`` (from :func:`preference_logps` of
    the reference, e.g. the model before DPO) replaces ``ref_model``; with neither, the reference is ``model``."""
    kw = dict(max_length=max_length, batch_size=batch_size, limit=limit)
    pol_c, pol_r = preference_logps(model, tokenizer, data, **kw)
    if reference_logps is not None:
        ref_c, ref_r = reference_logps
    elif ref_model is not None:
        ref_c, ref_r = preference_logps(ref_model, tokenizer, data, **kw)
    else:
        ref_c, ref_r = pol_c, pol_r
    return PreferenceStats(pol_c, pol_r, beta * (pol_c - ref_c), beta * (pol_r - ref_r))
