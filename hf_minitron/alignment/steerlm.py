"""SteerLM-style attribute-conditioned SFT on TRL's ``SFTTrainer``, inference with attributes, and annotation.

Format. Each training example is the model's own chat template rendered for ``prompt`` plus one assistant turn whose
content is the attribute string, a newline, then the response::

    <template up to and including the assistant header>helpfulness:4,...,verbosity:2\\n<response><end of turn>

The attribute string lists ``name:value`` pairs (integers 0-4) in a fixed order: :data:`HELPSTEER_ATTRIBUTES`
(helpfulness, correctness, coherence, complexity, verbosity), :data:`OASST_ATTRIBUTES` (quality, toxicity, humor,
creativity), or the list the user gives. The assistant header and end-of-turn text are found by rendering the
tokenizer's chat template around a sentinel response (no ChatML or NeMo tokens are hard-coded). Only the response
and its end-of-turn token are trained: examples are tokenized as ``input_ids`` + ``completion_mask`` and TRL's
completion-only loss turns the mask into ``labels`` (-100 on the template, prompt and attribute string).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..errors import ConfigError
from .data import AlignmentDataError, check_messages, load_records
from .training import resolve_config, train_and_merge

HELPSTEER_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
OASST_ATTRIBUTES = ("quality", "toxicity", "humor", "creativity")
ATTRIBUTE_SETS = {"helpsteer": HELPSTEER_ATTRIBUTES, "helpsteer2": HELPSTEER_ATTRIBUTES, "oasst": OASST_ATTRIBUTES}
MIN_VALUE, MAX_VALUE = 0, 4
_SENTINEL = "HFMINITRONSTEERLMRESPONSE"


def resolve_attributes(attributes: str | Sequence[str]) -> tuple[str, ...]:
    """``"helpsteer"``/``"oasst"``/``"a,b,c"``/a list -> the ordered attribute names."""
    if isinstance(attributes, str):
        if attributes.lower() in ATTRIBUTE_SETS:
            return ATTRIBUTE_SETS[attributes.lower()]
        attributes = [a.strip() for a in attributes.split(",") if a.strip()]
    names = tuple(attributes)
    if not names:
        raise ConfigError("attributes: no attribute names given; use 'helpsteer', 'oasst' or a comma-separated list")
    if len(set(names)) != len(names) or any(not n or ":" in n or "," in n for n in names):
        raise ConfigError(f"attributes={list(names)}: names must be unique, non-empty and contain no ':' or ','")
    return names


def check_value(value, row, name: str) -> int:
    """An attribute value as int in 0..4; anything else raises naming the row and the attribute."""
    where = f"row {row}: " if row is not None else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and (
            math.isnan(value) or value != int(value))):
        raise AlignmentDataError(f"{where}attribute {name!r}={value!r} must be an integer {MIN_VALUE}-{MAX_VALUE}")
    if not MIN_VALUE <= value <= MAX_VALUE:
        raise AlignmentDataError(f"{where}attribute {name!r}={value} is outside {MIN_VALUE}-{MAX_VALUE}; rescale "
                                 "it (annotate_attributes clips and rounds scores into range)")
    return int(value)


def format_attributes(values: Mapping[str, int], attributes: str | Sequence[str] = "helpsteer", row=None) -> str:
    """``{"verbosity": 4, ...}`` -> ``"helpfulness:4,...,verbosity:4"`` in the fixed order of ``attributes``."""
    names = resolve_attributes(attributes)
    missing = [n for n in names if n not in values]
    if missing:
        where = f"row {row}: " if row is not None else ""
        raise AlignmentDataError(f"{where}missing attribute field(s) {missing}; every row needs all of {list(names)}")
    return ",".join(f"{n}:{check_value(values[n], row, n)}" for n in names)


def parse_attributes(text: str) -> dict[str, int]:
    """``"verbosity:4,helpfulness:3"`` -> ``{"verbosity": 4, "helpfulness": 3}`` (for the CLI)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition(":")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise ConfigError(f"attribute {part!r} must look like name:value, e.g. verbosity:4")
        out[name.strip()] = check_value(int(value), None, name.strip())
    return out


@dataclass(frozen=True)
class AssistantTurn:
    """The chat template split around an assistant response: ``prefix`` (everything up to and including the assistant
    header, for the given prompt messages) and ``suffix`` (the end-of-turn text after the response)."""

    prefix: str
    suffix: str


def prompt_messages(prompt, row=None, field: str = "prompt") -> list[dict]:
    """A prompt string (one user turn) or a message list ending with a user turn, validated."""
    where = f"row {row}: " if row is not None else ""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise AlignmentDataError(f"{where}field {field!r} is empty")
        return [{"role": "user", "content": prompt}]
    messages = check_messages(prompt, row, field)
    if messages[-1]["role"] != "user":
        raise AlignmentDataError(f"{where}field {field!r} must end with a user message, got "
                                 f"{messages[-1]['role']!r}")
    return messages


def assistant_turn(tokenizer, messages: list[dict]) -> AssistantTurn:
    """Render ``messages`` + a sentinel assistant reply with the tokenizer's chat template and split around it.

    Raises :class:`~hf_minitron.errors.ConfigError` when the tokenizer has no chat template or its template has no
    assistant turn (the sentinel is not rendered, or is rendered with no assistant header before it).
    """
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"tokenizer {name!r} has no chat template; SteerLM formats the attribute string inside the "
                         "assistant turn of the model's own template (set tokenizer.chat_template)")
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": _SENTINEL}], tokenize=False)
    before = tokenizer.apply_chat_template(messages, tokenize=False)
    at = full.find(_SENTINEL)
    header = full[len(before):at] if full.startswith(before) else full[:at]
    if at < 0 or not header.strip():
        raise ConfigError(f"the chat template of {name!r} has no assistant turn (an assistant message is not rendered "
                         "after an assistant header); use a template with user/assistant roles")
    suffix = full[at + len(_SENTINEL):].rstrip()
    if not suffix:
        suffix = tokenizer.eos_token or ""
    return AssistantTurn(prefix=full[:at], suffix=suffix)


def steerlm_prompt(tokenizer, messages, attributes: Mapping[str, int],
                   attribute_names: str | Sequence[str] = "helpsteer") -> str:
    """The text a SteerLM model continues: template prefix + attribute string + newline (shapes: one string)."""
    turn = assistant_turn(tokenizer, prompt_messages(messages))
    return turn.prefix + format_attributes(attributes, attribute_names) + "\n"


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def steerlm_dataset(data, tokenizer, *, attributes: str | Sequence[str] = "helpsteer", prompt_field: str = "prompt",
                    response_field: str = "response", limit: int | None = None, max_length: int | None = None):
    """Validate and tokenize SteerLM data into a ``datasets.Dataset`` with ``input_ids`` and ``completion_mask``
    (1 on the response + end-of-turn tokens, 0 on template, prompt and attribute string).

    ``data``: records / a file :func:`load_records` reads / ``datasets.Dataset`` with ``prompt_field`` (string or
    messages), ``response_field`` (string) and one integer 0-4 column per attribute. All rows are checked before any
    is tokenized. With ``max_length``, a row whose template + prompt + attribute string alone fill ``max_length``
    tokens (truncation would leave no response token to train on) is an :class:`AlignmentDataError`.
    """
    import datasets

    names = resolve_attributes(attributes)
    records = load_records(data, limit=limit)
    checked = []
    for i, rec in enumerate(records):
        for fld in (prompt_field, response_field):
            if fld not in rec:
                raise AlignmentDataError(f"row {i}: missing field {fld!r} (fields present: {sorted(rec)}); set "
                                         "prompt_field/response_field")
        messages = prompt_messages(rec[prompt_field], i, prompt_field)
        response = rec[response_field]
        if not isinstance(response, str) or not response.strip():
            raise AlignmentDataError(f"row {i}: field {response_field!r} is empty or not a string; drop the row")
        checked.append((messages, response, format_attributes(rec, names, row=i)))
    assistant_turn(tokenizer, checked[0][0])  # template errors before tokenizing anything
    rows = []
    for messages, response, attr in checked:
        turn = assistant_turn(tokenizer, messages)
        prompt_ids = _encode(tokenizer, turn.prefix + attr + "\n")
        completion_ids = _encode(tokenizer, response + turn.suffix)
        rows.append({"input_ids": prompt_ids + completion_ids,
                     "completion_mask": [0] * len(prompt_ids) + [1] * len(completion_ids)})
    if max_length is not None:
        _check_room_for_responses(rows, max_length)
    return datasets.Dataset.from_list(rows)


def _check_room_for_responses(rows: list[dict], max_length: int) -> None:
    prompt_lengths = [r["completion_mask"].index(1) if 1 in r["completion_mask"] else len(r["input_ids"])
                      for r in rows]
    cut = [i for i, n in enumerate(prompt_lengths) if n >= max_length]
    if cut:
        i, n = cut[0], prompt_lengths[cut[0]]
        more = f" (and {len(cut) - 1} more row(s))" if len(cut) > 1 else ""
        raise AlignmentDataError(f"row {i}{more}: the chat template, prompt and attribute string take {n} tokens, so "
                                 f"max_length={max_length} would cut every response token; raise max_length above "
                                 f"{max(prompt_lengths[j] for j in cut)}, or shorten or drop the row(s)")


def build_steerlm_trainer(model, tokenizer, data, config=None, *, settings=None, lora=None, **fields):
    """The configured ``trl.SFTTrainer`` (completion-only loss on the responses) behind :func:`train_steerlm`.

    ``config``: a :class:`~hf_minitron.stages.steerlm.SteerLMConfig` or its fields as keywords (``attributes``,
    ``prompt_field``, ``response_field``, ``max_steps``, ...). ``data``: SteerLM records, or a dataset
    :func:`steerlm_dataset` already prepared.
    """
    from trl import SFTTrainer

    from ..stages.steerlm import SteerLMConfig

    config = resolve_config(SteerLMConfig, config, settings=settings, lora=lora, **fields)
    if hasattr(data, "column_names") and "completion_mask" in data.column_names:
        train = data
    else:
        train = steerlm_dataset(data, tokenizer, attributes=config.attributes, prompt_field=config.prompt_field,
                                response_field=config.response_field, max_length=config.max_length)
    model.train()
    return SFTTrainer(model=model, args=config.trainer_args(), train_dataset=train, processing_class=tokenizer,
                      peft_config=config.peft_config())


def train_steerlm(model, tokenizer, data, config=None, *, settings=None, lora=None, **fields):
    """Attribute-conditioned SFT; returns the trained ``*ForCausalLM`` (LoRA merged, eval mode). ``config``: a
    :class:`~hf_minitron.stages.steerlm.SteerLMConfig` or its fields as keywords."""
    trainer = build_steerlm_trainer(model, tokenizer, data, config, settings=settings, lora=lora, **fields)
    return train_and_merge(trainer)[0]


def generate_with_attributes(model, tokenizer, messages, attributes: Mapping[str, int], *,
                             attribute_names: str | Sequence[str] = "helpsteer", max_new_tokens: int = 256,
                             do_sample: bool = False, **generate_kwargs) -> str:
    """Generate a reply to ``messages`` (a string or a message list) steered by ``attributes`` (all of
    ``attribute_names``, integers 0-4); returns the decoded response text without the prompt."""
    import torch

    messages = prompt_messages(messages)
    turn = assistant_turn(tokenizer, messages)
    text = turn.prefix + format_attributes(attributes, attribute_names) + "\n"
    ids = torch.tensor([_encode(tokenizer, text)], device=next(model.parameters()).device)
    stop = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    end_of_turn = _encode(tokenizer, turn.suffix)
    if len(end_of_turn) == 1 and end_of_turn[0] not in stop:  # e.g. <|eot_id|>, <end_of_turn>
        stop.append(end_of_turn[0])
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=stop or None)
    kwargs.update(generate_kwargs)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------------------------
# Annotation of unlabelled data


def clip_round(score: float) -> int:
    """A raw score -> the nearest integer in 0..4 (NaN is an error)."""
    if score != score:
        raise ValueError("scorer returned NaN")
    return int(min(MAX_VALUE, max(MIN_VALUE, round(float(score)))))


def verbosity_labels(lengths: Sequence[float]) -> list[int]:
    """Length quintiles -> verbosity 0..4: value = number of the 20/40/60/80 % length quantiles a length exceeds."""
    import numpy as np

    lengths = np.asarray(lengths, dtype=np.float64)
    cuts = np.quantile(lengths, [0.2, 0.4, 0.6, 0.8])
    return [int(v) for v in np.searchsorted(cuts, lengths, side="left")]


def _reward_model_scorer(model, tokenizer, names, batch_size: int):
    import torch

    num_labels = model.config.num_labels
    if len(names) != num_labels:
        raise ValueError(f"the reward model has {num_labels} output(s) but {len(names)} attribute name(s) "
                         f"{list(names)} were given; pass one name per output")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def score(prompts, responses):
        texts = []
        for p, r in zip(prompts, responses):
            if getattr(tokenizer, "chat_template", None):
                texts.append(tokenizer.apply_chat_template(
                    prompt_messages(p) + [{"role": "assistant", "content": r}], tokenize=False))
            else:
                texts.append(f"{p}\n{r}")
        out = []
        model.eval()
        device = next(model.parameters()).device
        for s in range(0, len(texts), batch_size):
            enc = tokenizer(texts[s:s + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                logits = model(**{k: v.to(device) for k, v in enc.items()}).logits.float().cpu()
            out.extend({n: logits[i, j].item() for j, n in enumerate(names)} for i in range(logits.shape[0]))
        return out

    return score


def annotate_attributes(data, scorer, *, attributes: str | Sequence[str] | None = None, tokenizer=None,
                        prompt_field: str = "prompt", response_field: str = "response", batch_size: int = 8):
    """Add integer 0-4 attribute columns to unlabelled ``(prompt, response)`` data; returns a ``datasets.Dataset``.

    ``scorer``:
    * ``"verbosity"``: the built-in annotator: response length (tokens with ``tokenizer``, else characters) quintiles.
    * a callable ``(prompt, response) -> float`` (one attribute: ``attributes`` names it) or ``-> {name: float}``.
    * a sequence-classification reward model (``num_labels`` outputs, one per name in ``attributes`` or its
      ``config.id2label``), with ``tokenizer``; it scores the chat-template rendering of prompt + response.
    Raw scores are clipped to 0-4 and rounded.
    """
    import datasets

    records = load_records(data)
    for i, rec in enumerate(records):
        for fld in (prompt_field, response_field):
            if fld not in rec:
                raise AlignmentDataError(f"row {i}: missing field {fld!r} (fields present: {sorted(rec)})")
        if not isinstance(rec[response_field], str) or not rec[response_field].strip():
            raise AlignmentDataError(f"row {i}: field {response_field!r} is empty or not a string")
    prompts = [r[prompt_field] for r in records]
    responses = [r[response_field] for r in records]

    if isinstance(scorer, str):
        if scorer != "verbosity":
            raise ValueError(f"scorer={scorer!r}; the built-in annotator is 'verbosity' (or pass a callable / reward "
                             "model)")
        lengths = [len(_encode(tokenizer, r)) if tokenizer is not None else len(r) for r in responses]
        scores = [{"verbosity": v} for v in verbosity_labels(lengths)]
    elif hasattr(scorer, "config") and hasattr(scorer, "forward"):
        if tokenizer is None:
            raise ValueError("a reward-model scorer needs its tokenizer: pass tokenizer=...")
        names = resolve_attributes(attributes) if attributes is not None else tuple(
            scorer.config.id2label[i] for i in range(scorer.config.num_labels))
        scores = _reward_model_scorer(scorer, tokenizer, names, batch_size)(prompts, responses)
    elif callable(scorer):
        scores = []
        for i, (p, r) in enumerate(zip(prompts, responses)):
            s = scorer(p, r)
            if not isinstance(s, Mapping):
                if attributes is None or len(resolve_attributes(attributes)) != 1:
                    raise ValueError("a scorer returning one number needs exactly one attribute name in attributes=")
                s = {resolve_attributes(attributes)[0]: s}
            scores.append(s)
    else:
        raise TypeError(f"scorer must be 'verbosity', a callable or a sequence-classification model, got "
                        f"{type(scorer).__name__}")
    wanted = resolve_attributes(attributes) if attributes is not None and not isinstance(scorer, str) else None
    out = []
    for i, (rec, s) in enumerate(zip(records, scores)):
        if wanted is not None and any(n not in s for n in wanted):
            raise ValueError(f"row {i}: the scorer returned {sorted(s)}, missing {[n for n in wanted if n not in s]}")
        keys = wanted or tuple(s)
        out.append({**rec, **{n: clip_round(s[n]) for n in keys}})
    return datasets.Dataset.from_list(out)
