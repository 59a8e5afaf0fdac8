"""Loaders for the alignment stages: preference pairs (TRL or sharegpt form), chat/plain SFT corpora.

Files are read by :func:`hf_minitron.data.load_records` (the one reader of every stage). Every loader here validates
all rows up front and raises :class:`AlignmentDataError` (a :class:`~hf_minitron.errors.DataError`) naming the row
and the field, so bad data fails before a model is touched.

Preference data (:func:`load_preference_data`) is accepted in two forms and always returned in TRL's form:

* TRL: ``prompt``/``chosen``/``rejected``, each a string (standard) or a list of ``{"role", "content"}`` messages
  (conversational; ``chosen``/``rejected`` hold the assistant turn).
* sharegpt (e.g. ``../shared/data/dpo_en.json``): ``conversations`` = list of ``{"from", "value"}`` turns ending
  with the user turn, ``chosen``/``rejected`` = one ``{"from": "gpt", "value"}`` turn each. ``from`` maps
  ``human``/``user`` -> ``user``, ``gpt``/``assistant`` -> ``assistant``, ``system`` -> ``system``; the result is
  conversational TRL data: ``prompt`` = the converted turns, ``chosen``/``rejected`` = one assistant message each.
"""

from __future__ import annotations

from typing import Iterable

from ..errors import DataError

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                  "observation": "tool", "function_call": "assistant", "tool": "tool"}


class AlignmentDataError(DataError):
    """A training record that cannot be used; the message names the row and the field."""


def load_records(source, *, limit: int | None = None) -> list[dict]:
    """Records (dicts) from any source :func:`hf_minitron.data.load_records` reads (the one reader of every stage):
    a list, a ``datasets.Dataset``, a ``.jsonl``/``.json``/``.parquet``/``.csv`` file, a saved dataset or a
    ``datasets`` name."""
    from ..data import load_records as read_records

    return read_records(source, limit=limit)


def _text(value, row: int, field: str) -> str:
    if not isinstance(value, str):
        raise AlignmentDataError(f"row {row}: field {field!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise AlignmentDataError(f"row {row}: field {field!r} is empty; drop the row or fill it in")
    return value


def _require(rec: dict, fields: Iterable[str], row: int, form: str) -> None:
    missing = [f for f in fields if f not in rec]
    if missing:
        raise AlignmentDataError(f"row {row}: missing field(s) {missing} for {form} data (fields present: "
                                 f"{sorted(rec)})")


def messages_from_sharegpt(turns, row: int, field: str = "conversations") -> list[dict]:
    """``[{"from", "value"}]`` -> ``[{"role", "content"}]``; an unknown ``from`` or an empty ``value`` is an error."""
    if isinstance(turns, dict):
        turns = [turns]
    if not isinstance(turns, list) or not turns:
        raise AlignmentDataError(f"row {row}: field {field!r} must be a non-empty list of {{'from', 'value'}} turns")
    out = []
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise AlignmentDataError(f"row {row}: {field}[{j}] must be a {{'from', 'value'}} turn, got {turn!r:.80}")
        role = SHAREGPT_ROLES.get(turn["from"])
        if role is None:
            raise AlignmentDataError(f"row {row}: {field}[{j}].from={turn['from']!r}; expected one of "
                                     f"{sorted(SHAREGPT_ROLES)}")
        out.append({"role": role, "content": _text(turn["value"], row, f"{field}[{j}].value")})
    return out


def check_messages(messages, row: int, field: str) -> list[dict]:
    """Validate a list of ``{"role", "content"}`` messages (non-empty string content)."""
    if not isinstance(messages, list) or not messages:
        raise AlignmentDataError(f"row {row}: field {field!r} must be a non-empty list of {{'role', 'content'}} "
                                 "messages")
    out = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise AlignmentDataError(f"row {row}: {field}[{j}] must be a {{'role', 'content'}} message")
        out.append({"role": m["role"], "content": _text(m["content"], row, f"{field}[{j}].content")})
    return out


def preference_record(rec: dict, row: int) -> dict:
    """One record in TRL preference form (see the module docstring), validated."""
    if "conversations" in rec:  # sharegpt
        _require(rec, ("conversations", "chosen", "rejected"), row, "sharegpt preference")
        prompt = messages_from_sharegpt(rec["conversations"], row)
        if prompt[-1]["role"] != "user":
            raise AlignmentDataError(f"row {row}: 'conversations' must end with a user ('human') turn, got "
                                     f"{prompt[-1]['role']!r}")
        chosen = messages_from_sharegpt(rec["chosen"], row, "chosen")
        rejected = messages_from_sharegpt(rec["rejected"], row, "rejected")
        for name, turns in (("chosen", chosen), ("rejected", rejected)):
            if len(turns) != 1 or turns[0]["role"] != "assistant":
                raise AlignmentDataError(f"row {row}: field {name!r} must be one assistant ('gpt') turn")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    _require(rec, ("prompt", "chosen", "rejected"), row, "preference (prompt/chosen/rejected or sharegpt "
             "conversations/chosen/rejected)")
    if isinstance(rec["prompt"], list):
        prompt = check_messages(rec["prompt"], row, "prompt")
        chosen = check_messages(rec["chosen"], row, "chosen")
        rejected = check_messages(rec["rejected"], row, "rejected")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    return {"prompt": _text(rec["prompt"], row, "prompt"), "chosen": _text(rec["chosen"], row, "chosen"),
            "rejected": _text(rec["rejected"], row, "rejected")}


def load_preference_data(source, *, limit: int | None = None):
    """Preference pairs as a ``datasets.Dataset`` with TRL's ``prompt``/``chosen``/``rejected`` columns.

    ``source``: a path (``.json``/``.jsonl``), a list of records or a ``datasets.Dataset``, in TRL or sharegpt form.
    All rows must share one form (all conversational or all standard).
    """
    import datasets

    records = [preference_record(rec, i) for i, rec in enumerate(load_records(source, limit=limit))]
    kinds = {isinstance(r["prompt"], list) for r in records}
    if len(kinds) > 1:
        raise AlignmentDataError("preference data mixes conversational (message list) and plain-string prompts; "
                                 "use one form for all rows")
    return datasets.Dataset.from_list(records)


def load_sft_data(source, *, text_field: str = "text", limit: int | None = None):
    """An SFT corpus as a ``datasets.Dataset`` with either a ``text`` column (plain text) or a ``messages`` column
    (chat), every row checked. ``source``: anything :func:`load_records` reads, or a list of strings; records hold
    ``text_field`` (plain text), ``messages`` (role/content) or sharegpt ``conversations``; ``.txt``/``.md`` lines are
    plain-text documents."""
    import datasets

    from ..data import load_records as read_records

    records = read_records(source, text_field=text_field, limit=limit)
    first = records[0]
    if "messages" in first:
        rows = [{"messages": check_messages(r.get("messages"), i, "messages")} for i, r in enumerate(records)]
    elif "conversations" in first:
        rows = [{"messages": messages_from_sharegpt(r.get("conversations"), i)} for i, r in enumerate(records)]
    else:
        rows = []
        for i, r in enumerate(records):
            _require(r, (text_field,), i, "plain-text SFT (set dataset_text_field, or give 'messages')")
            rows.append({"text": _text(r[text_field], i, text_field)})
    return datasets.Dataset.from_list(rows)
