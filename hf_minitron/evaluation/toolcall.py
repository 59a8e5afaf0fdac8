"""Function-calling validity on sharegpt tool-call data (the glaive-toolcall form).

A record is ``{"conversations": [{"from": ..., "value": ...}, ...], "tools": "<JSON list of functions>"}`` with
``from`` one of ``human``, ``gpt``, ``function_call``, ``observation`` (``system`` too). Every ``function_call`` turn
whose reference is ``{"name": ..., "arguments": {...}}`` is one test: the model sees the conversation before it and the
declared tools, and answers.

How the tools reach the model: through its chat template (``apply_chat_template(..., tools=...)``, OpenAI-style
``{"type": "function", "function": ...}`` entries) when the template renders them; a template that ignores ``tools``
(SmolLM2's does) gets them as a system message instead (:data:`TOOLS_SYSTEM_PROMPT`). The report records which.
Earlier ``function_call`` turns are shown as assistant messages holding the call's JSON, ``observation`` turns as
``tool`` messages.

Scoring an answer: the JSON object is taken from a ``<tool_call>...</tool_call>`` block, a code fence, or the first
``{`` of the answer; an OpenAI-style ``{"function": {...}}`` wrapper is unwrapped; the arguments are ``arguments`` (or
``parameters``), a JSON object or a string holding one. ``json_rate``: the share of answers that parse that way;
``valid_call_rate``: parse, name a declared function and pass only arguments that function declares;
``name_match_rate``: parse and name exactly the reference's function.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import torch

from ..errors import DataError

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
         "function_call": "assistant", "observation": "tool"}
TOOLS_SYSTEM_PROMPT = ("You can call these functions. To call one, answer with only a JSON object "
                       '{{"name": <function name>, "arguments": <object of arguments>}}.\nFunctions:\n{tools}')


@dataclass
class ToolCallTurn:
    """One test: the chat before a reference function call, the declared tools and the reference call."""

    record: int
    messages: list[dict]
    tools: list[dict]
    reference: dict


def _row_error(source, i: int, what: str) -> DataError:
    return DataError(f"tool-call data {source}: record {i} (counting from 0) {what}; fix or remove that record")


def _parse_tools(raw, source, i: int) -> list[dict]:
    if raw in (None, ""):
        return []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as err:
            raise _row_error(source, i, f"has a 'tools' string that is not valid JSON ({err.msg})") from None
    if not isinstance(raw, list) or not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in raw):
        raise _row_error(source, i, "has 'tools' that are not a list of functions with a 'name'")
    return raw


def _parse_reference(value, source, i: int, j: int) -> dict:
    try:
        call = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as err:
        raise _row_error(source, i, f"message {j} (function_call) is not valid JSON ({err.msg})") from None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise _row_error(source, i, f"message {j} (function_call) is not an object with a 'name'")
    return call


def toolcall_turns(records, *, source: str = "data", limit: int | None = None) -> list[ToolCallTurn]:
    """The tests in ``records`` (see the module docstring), at most ``limit``. A malformed record is a
    :class:`DataError` naming its number; data without any function-call turn is one too."""
    turns: list[ToolCallTurn] = []
    for i, rec in enumerate(records):
        conv = rec.get("conversations")
        if not isinstance(conv, list):
            raise _row_error(source, i, f"has no 'conversations' list (fields: {sorted(rec)})")
        tools = _parse_tools(rec.get("tools"), source, i)
        messages = [{"role": "system", "content": rec["system"]}] if rec.get("system") else []
        for j, msg in enumerate(conv):
            if not isinstance(msg, dict) or msg.get("from") not in ROLES or not isinstance(msg.get("value"), str):
                raise _row_error(source, i, f"message {j} is not {{'from': one of {sorted(ROLES)}, 'value': text}}")
            if msg["from"] == "function_call":
                reference = _parse_reference(msg["value"], source, i, j)
                if tools and (limit is None or len(turns) < limit):
                    turns.append(ToolCallTurn(i, [dict(m) for m in messages], tools, reference))
            messages.append({"role": ROLES[msg["from"]], "content": msg["value"]})
    if not turns:
        raise DataError(f"tool-call data {source} holds no turn whose reference answer is a function call with "
                        "declared tools; give sharegpt records with 'function_call' turns and a 'tools' list")
    return turns


def render_prompt(tokenizer, turn: ToolCallTurn) -> tuple[str, str]:
    """``(prompt text, how the tools were given)``: ``"chat_template"`` or ``"system_message"``."""
    tools = [{"type": "function", "function": t} for t in turn.tools]
    with_tools = tokenizer.apply_chat_template(turn.messages, tools=tools, add_generation_prompt=True, tokenize=False)
    plain = tokenizer.apply_chat_template(turn.messages, add_generation_prompt=True, tokenize=False)
    if with_tools != plain:
        return with_tools, "chat_template"
    note = TOOLS_SYSTEM_PROMPT.format(tools=json.dumps(turn.tools, ensure_ascii=False))
    messages = [dict(m) for m in turn.messages]
    if messages and messages[0]["role"] == "system":
        messages[0]["content"] = messages[0]["content"] + "\n\n" + note
    else:
        messages.insert(0, {"role": "system", "content": note})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), "system_message"


@torch.no_grad()
def generate_answers(model, tokenizer, turns: list[ToolCallTurn], *, max_new_tokens: int = 128) -> tuple[list[str], str]:
    """Greedy answers of ``model`` to every turn and how the tools were given (the first turn's way)."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers, ways = [], set()
    for turn in turns:
        prompt, way = render_prompt(tokenizer, turn)
        ways.add(way)
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad_id)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return answers, "+".join(sorted(ways))


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)
_TAG = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)


def parse_call(text: str) -> dict | None:
    """``{"name": str, "arguments": dict}`` from a model's answer, or ``None`` (see the module docstring)."""
    for pattern in (_TAG, _FENCE):
        match = pattern.search(text)
        if match:
            text = match.group(1)
            break
    start = text.find("{")
    if start < 0:
        return None
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError:
        return None
    if isinstance(obj, dict) and isinstance(obj.get("function"), dict):
        obj = obj["function"]
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return {"name": obj["name"], "arguments": args}


def _declared_arguments(function: dict) -> set[str]:
    params = function.get("parameters") or {}
    return set((params.get("properties") or {}) if isinstance(params, dict) else {})


def score_answers(answers: list[str], turns: list[ToolCallTurn]) -> dict:
    """``{"turns", "json_rate", "valid_call_rate", "name_match_rate"}`` of ``answers`` against ``turns``."""
    parsed = valid = named = 0
    for answer, turn in zip(answers, turns, strict=True):
        call = parse_call(answer)
        if call is None:
            continue
        parsed += 1
        declared = {t["name"]: t for t in turn.tools}
        if call["name"] in declared and set(call["arguments"]) <= _declared_arguments(declared[call["name"]]):
            valid += 1
        named += call["name"] == turn.reference["name"]
    n = len(turns)
    return {"turns": n, "json_rate": parsed / n, "valid_call_rate": valid / n, "name_match_rate": named / n}


def evaluate_toolcalls(model, tokenizer, turns: list[ToolCallTurn], *, max_new_tokens: int = 128) -> dict:
    """Generate and score (see the module docstring); adds ``tools_given_via``."""
    answers, way = generate_answers(model, tokenizer, turns, max_new_tokens=max_new_tokens)
    return {**score_answers(answers, turns), "tools_given_via": way}


__all__ = ["TOOLS_SYSTEM_PROMPT", "ToolCallTurn", "evaluate_toolcalls", "generate_answers", "parse_call",
           "render_prompt", "score_answers", "toolcall_turns"]
