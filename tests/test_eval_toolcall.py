"""Function-calling validity: reading sharegpt tool-call records, prompts with tools, parsing and scoring answers."""

import json

import pytest
import torch

from hf_minitron.errors import DataError
from hf_minitron.evaluation.toolcall import (evaluate_toolcalls, parse_call, render_prompt, score_answers,
                                             toolcall_turns)
from hf_minitron.testing import tiny_model

WEATHER = {"name": "get_weather", "description": "Weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}}}}
NEWS = {"name": "get_news", "parameters": {"type": "object", "properties": {"topic": {"type": "string"}}}}
RECORDS = [
    {"conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": '{"temp": 21}'},
        {"from": "gpt", "value": "21 degrees."},
        {"from": "human", "value": "And the news on rugby?"},
        {"from": "function_call", "value": json.dumps({"name": "get_news", "arguments": {"topic": "rugby"}})},
        {"from": "observation", "value": "[]"},
        {"from": "gpt", "value": "Nothing new."}],
     "tools": json.dumps([WEATHER, NEWS])},
    {"conversations": [{"from": "human", "value": "Tell me a joke"}, {"from": "gpt", "value": "No."}],
     "tools": "[]"},
]


def test_turns_are_the_function_calls_with_their_history():
    turns = toolcall_turns(RECORDS)
    assert [t.reference["name"] for t in turns] == ["get_weather", "get_news"]
    assert [m["role"] for m in turns[0].messages] == ["user"]
    assert [m["role"] for m in turns[1].messages] == ["user", "assistant", "tool", "assistant", "user"]
    assert json.loads(turns[1].messages[1]["content"]) == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert turns[1].tools == [WEATHER, NEWS] and turns[0].record == 0
    assert len(toolcall_turns(RECORDS, limit=1)) == 1


@pytest.mark.parametrize("record, message", [
    ({"messages": []}, "record 1 (counting from 0) has no 'conversations' list"),
    ({"conversations": [{"from": "robot", "value": "x"}]}, "record 1 (counting from 0) message 0 is not"),
    ({"conversations": [], "tools": "[{"}, "record 1 (counting from 0) has a 'tools' string that is not valid JSON"),
    ({"conversations": [{"from": "function_call", "value": '{"arguments": {}}'}], "tools": "[]"},
     "record 1 (counting from 0) message 0 (function_call) is not an object with a 'name'"),
])
def test_malformed_record_is_named(record, message):
    with pytest.raises(DataError) as err:
        toolcall_turns([RECORDS[0], record], source="'calls.json'")
    assert message in str(err.value) and "'calls.json'" in str(err.value)


@pytest.mark.parametrize("answer, expected", [
    ('{"name": "f", "arguments": {"a": 1}}', {"name": "f", "arguments": {"a": 1}}),
    ('Sure! <tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>', {"name": "f", "arguments": {}}),
    ('```json\n{"name": "f", "parameters": {"b": 2}}\n```', {"name": "f", "arguments": {"b": 2}}),
    ('{"type": "function", "function": {"name": "f", "arguments": "{\\"a\\": 3}"}}', {"name": "f", "arguments": {"a": 3}}),
    ('I call {"name": "f"} now', {"name": "f", "arguments": {}}),
    ('{"name": "f", "arguments": [1]}', None),
    ('{"name": 3}', None),
    ('{"name": "f", "arguments": {"a": 1}', None),
    ("no json here", None),
])
def test_parse_call(answer, expected):
    assert parse_call(answer) == expected


def test_score_answers_by_hand():
    turns = toolcall_turns(RECORDS) * 2  # references: weather, news, weather, news
    answers = [
        '{"name": "get_weather", "arguments": {"city": "Rome"}}',  # valid, right name
        '{"name": "get_weather", "arguments": {"city": "Rome"}}',  # valid (declared), wrong name
        '{"name": "get_weather", "arguments": {"country": "FR"}}',  # undeclared argument: invalid, right name
        "I do not know",  # no JSON
    ]
    assert score_answers(answers, turns) == {"turns": 4, "json_rate": 0.75, "valid_call_rate": 0.5,
                                             "name_match_rate": 0.5}


def test_tools_reach_the_model(tokenizer):
    """The tiny ChatML template ignores `tools`: they go into a system message. A template that renders them
    gets them through the template."""
    turn = toolcall_turns(RECORDS)[0]
    prompt, way = render_prompt(tokenizer, turn)
    assert way == "system_message" and json.dumps([WEATHER, NEWS]) in prompt
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    tools_template = ("{% if tools %}TOOLS:{{ tools | tojson }}\n{% endif %}{% for m in messages %}{{ m['role'] }}: "
                      "{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
    tok = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|im_end|>",
                              pad_token="<|endoftext|>")
    tok.chat_template = tools_template
    prompt, way = render_prompt(tok, turn)
    assert way == "chat_template" and '"name": "get_weather"' in prompt and "system" not in prompt


def test_evaluate_toolcalls_scores_what_the_model_generates(tokenizer, monkeypatch):
    """The full path with generation: the model's continuation (only the new tokens) is what gets scored."""
    model = tiny_model("llama")
    turns = toolcall_turns(RECORDS)
    scripted = iter(['{"name": "get_weather", "arguments": {"city": "Oslo"}}', '{"name": "get_weather"}'])

    def generate(input_ids, max_new_tokens, **kwargs):
        new = tokenizer(next(scripted), add_special_tokens=False, return_tensors="pt").input_ids
        return torch.cat([input_ids, new, torch.tensor([[tokenizer.eos_token_id]])], dim=1)

    monkeypatch.setattr(model, "generate", generate)
    got = evaluate_toolcalls(model, tokenizer, turns)
    assert got == {"turns": 2, "json_rate": 1.0, "valid_call_rate": 1.0, "name_match_rate": 0.5,
                   "tools_given_via": "system_message"}
    real = evaluate_toolcalls(tiny_model("llama"), tokenizer, turns[:1], max_new_tokens=4)
    assert real["turns"] == 1 and 0 <= real["valid_call_rate"] <= real["json_rate"] <= 1


@pytest.mark.shared_data
def test_glaive_toolcall_file(shared_data):
    records = json.loads((shared_data / "glaive_toolcall_en.json").read_text())
    expected = sum(m["from"] == "function_call" for r in records for m in r["conversations"])
    turns = toolcall_turns(records)
    assert len(turns) == expected > 0
    assert all(t.reference["name"] in {f["name"] for f in t.tools} for t in turns)
    assert score_answers([json.dumps(t.reference) for t in turns], turns)["valid_call_rate"] == 1.0
