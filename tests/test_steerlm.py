"""SteerLM: attribute string format and order, label mask = exactly the response tokens, template-derived assistant
header, bad-input errors, annotation (verbosity quintiles, callable, reward model), a verbosity-steering behaviour
test on a tiny model, and the `steerlm` stage through the CLI."""

import copy
import json
import random

import pytest
import torch

from hf_minitron.alignment import (
    HELPSTEER_ATTRIBUTES,
    AlignmentDataError,
    annotate_attributes,
    format_attributes,
    generate_with_attributes,
    steerlm_dataset,
    train_steerlm,
    verbosity_labels,
)
from hf_minitron.alignment.steerlm import assistant_turn, build_steerlm_trainer, parse_attributes, resolve_attributes
from hf_minitron.stages.steerlm import SteerLMConfig
from hf_minitron.testing import tiny_model

GEMMA_STYLE = (
    "{{ '<bos>' }}{% for m in messages %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role'])"
    " + '\n' + m['content'] + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
USER_ONLY = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Q: ' + m['content'] + '\n' }}{% endif %}"
             "{% endfor %}")


def helpsteer_row(prompt="Name a colour.", response="Blue.", **overrides):
    row = {"prompt": prompt, "response": response, "helpfulness": 4, "correctness": 3, "coherence": 4,
           "complexity": 1, "verbosity": 0}
    row.update(overrides)
    return row


def test_attribute_string_order_and_sets():
    assert HELPSTEER_ATTRIBUTES == ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
    assert resolve_attributes("oasst") == ("quality", "toxicity", "humor", "creativity")
    shuffled = {"verbosity": 2, "complexity": 1, "coherence": 4, "correctness": 3, "helpfulness": 4}
    assert format_attributes(shuffled) == "helpfulness:4,correctness:3,coherence:4,complexity:1,verbosity:2"
    assert format_attributes({"humor": 0, "b": 3}, ["b", "humor"]) == "b:3,humor:0"
    assert parse_attributes("verbosity:4, helpfulness:0") == {"verbosity": 4, "helpfulness": 0}
    with pytest.raises(ValueError, match="outside 0-4"):
        parse_attributes("verbosity:7")


def test_label_mask_covers_exactly_the_response_tokens(tokenizer):
    rows = [helpsteer_row(), helpsteer_row(prompt="Say hi twice.", response="Hi! Hi!", verbosity=3, helpfulness=2)]
    trainer = build_steerlm_trainer(tiny_model("llama"), tokenizer, rows, max_steps=1)
    for row, prepared in zip(rows, trainer.train_dataset):
        ids, labels = prepared["input_ids"], prepared["labels"]
        # independent reference: the response and the template's end-of-turn token, tokenized on their own
        expected = tokenizer(row["response"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        n = len(expected)
        assert labels[-n:] == expected and ids[-n:] == expected
        assert all(t == -100 for t in labels[:-n])
        attrs = format_attributes(row)
        assert tokenizer.decode(ids[:-n]) == (
            f"<|im_start|>user\n{row['prompt']}<|im_end|>\n<|im_start|>assistant\n{attrs}\n")


def test_assistant_header_is_read_from_the_template(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = GEMMA_STYLE
    turn = assistant_turn(tok, [{"role": "user", "content": "hi"}])
    assert turn.prefix == "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    assert turn.suffix == "<end_of_turn>"
    ds = steerlm_dataset([helpsteer_row()], tok)
    ids, mask = ds[0]["input_ids"], ds[0]["completion_mask"]
    cut = mask.index(1)
    assert tok.decode(ids[:cut]).endswith("<start_of_turn>model\nhelpfulness:4,correctness:3,coherence:4,"
                                          "complexity:1,verbosity:0\n")
    assert tok.decode(ids[cut:]) == "Blue.<end_of_turn>" and all(mask[cut:])


@pytest.mark.parametrize("rows,match", [
    ([helpsteer_row(), {"prompt": "p", "helpfulness": 1}], r"row 1: missing field 'response'"),
    ([helpsteer_row(), helpsteer_row(), helpsteer_row(verbosity=5)], r"row 2: attribute 'verbosity'=5 is outside 0-4"),
    ([helpsteer_row(helpfulness=-1)], r"row 0: attribute 'helpfulness'=-1 is outside 0-4"),
    ([helpsteer_row(coherence=2.5)], r"row 0: attribute 'coherence'=2.5 must be an integer"),
    ([helpsteer_row(response="  ")], r"row 0: field 'response' is empty"),
    ([helpsteer_row(), {k: v for k, v in helpsteer_row().items() if k != "complexity"}],
     r"row 1: missing attribute field\(s\) \['complexity'\]"),
    ([helpsteer_row(prompt=[{"role": "assistant", "content": "x"}])], r"row 0: field 'prompt' must end with a user"),
])
def test_bad_rows_name_row_and_field(tokenizer, rows, match):
    model = tiny_model("llama")
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(AlignmentDataError, match=match):
        train_steerlm(model, tokenizer, rows, max_steps=1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_template_without_assistant_turn_is_rejected(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = USER_ONLY
    with pytest.raises(ValueError, match="no assistant turn"):
        steerlm_dataset([helpsteer_row()], tok)
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        generate_with_attributes(tiny_model("llama"), tok, "hi", {"verbosity": 1}, attribute_names=["verbosity"])


def test_verbosity_quintiles_callable_and_reward_model_scorers(tokenizer):
    assert verbosity_labels(list(range(1, 11))) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    rows = [{"prompt": f"q{i}", "response": "x" * (i + 1)} for i in range(10)]
    ds = annotate_attributes(rows, "verbosity")
    assert ds["verbosity"] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4] and ds["response"][3] == "xxxx"

    raw = [5.7, -1.0, 2.4, 2.6]
    ds = annotate_attributes(rows[:4], lambda p, r: {"quality": raw[len(r) - 1], "humor": 1.0})
    assert ds["quality"] == [4, 0, 2, 3] and ds["humor"] == [1, 1, 1, 1]
    ds = annotate_attributes(rows[:2], lambda p, r: len(r), attributes=["verbosity"])
    assert ds["verbosity"] == [1, 2]
    with pytest.raises(ValueError, match="missing \\['toxicity'\\]"):
        annotate_attributes(rows[:2], lambda p, r: {"quality": 1}, attributes=["quality", "toxicity"])

    from transformers import AutoModelForSequenceClassification

    from hf_minitron.testing import tiny_config

    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_config(tiny_config("llama", num_labels=2)).eval()
    with torch.no_grad():
        rm.score.weight.mul_(300.0)  # spread the raw scores over the 0-4 range
    ds = annotate_attributes(rows[:6], rm, tokenizer=tokenizer, attributes=["helpfulness", "correctness"],
                             batch_size=4)
    for row, h, c in zip(rows[:6], ds["helpfulness"], ds["correctness"]):  # reference: one unpadded forward per row
        text = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]},
                                              {"role": "assistant", "content": row["response"]}], tokenize=False)
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = rm(input_ids=ids).logits[0]
        assert [h, c] == [int(min(4, max(0, round(v)))) for v in logits.tolist()]
    assert len(set(ds["helpfulness"]) | set(ds["correctness"])) > 1


def verbosity_rows(n, rng):
    rows = []
    for _ in range(n):
        v = rng.randint(0, 4)
        topic = "".join(rng.choice("abcdefghij") for _ in range(4))
        rows.append({"prompt": f"Tell me about {topic}.", "response": " ".join(["ok"] * (1 + 2 * v)) + ".",
                     "helpfulness": rng.randint(0, 4), "verbosity": v})
    return rows


def test_verbosity_attribute_steers_response_length(tokenizer):
    """Training data in which only `verbosity` decides the response length (helpfulness is noise): on held-out prompts
    the trained model answers measurably longer with verbosity:4 than with verbosity:0."""
    rng = random.Random(0)
    names = ["helpfulness", "verbosity"]
    config = SteerLMConfig(attributes=",".join(names), max_steps=80, learning_rate=5e-3,
                           per_device_train_batch_size=8, seed=0, max_length=96)
    model = train_steerlm(tiny_model("llama"), tokenizer, verbosity_rows(256, rng), config)
    held_out = [f"Tell me about {''.join(rng.choice('klmnopqrst') for _ in range(4))}." for _ in range(4)]
    lengths = {}
    for v in (0, 4):
        lengths[v] = [len(generate_with_attributes(model, tokenizer, p, {"helpfulness": 2, "verbosity": v},
                                                   attribute_names=names, max_new_tokens=60)) for p in held_out]
    assert sum(lengths[4]) >= 2 * sum(lengths[0]), lengths
    assert all(long > short for long, short in zip(lengths[4], lengths[0])), lengths


def test_cli_steerlm_with_verbosity_annotation_and_lora(tokenizer, tmp_path, capsys):
    from hf_minitron.cli import main
    from hf_minitron.loading import load_causal_lm, save_model

    src = save_model(tiny_model("llama"), tokenizer, tmp_path / "student")
    data = tmp_path / "sft.jsonl"
    rows = [{"question": f"q{i}", "answer": "word " * (i + 1)} for i in range(10)]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "steered"
    assert main(["steerlm", "--model", str(src), "--data", str(data), "--output_dir", str(out), "--attributes",
                 "verbosity", "--prompt_field", "question", "--response_field", "answer", "--annotate_verbosity",
                 "--use_lora", "--max_steps", "2", "--max_length", "64", "--held_out_fraction", "0.2"]) == 0
    text = capsys.readouterr().out
    report = json.loads(text[text.rindex('{\n  "stage"'):])["metrics"]
    assert report["examples_train"] == 8 and report["examples_held_out"] == 2
    assert report["attributes"] == ["verbosity"] and report["global_step"] == 2
    assert report["held_out_nll_before"] > 0 and report["held_out_nll_after"] != report["held_out_nll_before"]
    model, _ = load_causal_lm(out)
    assert not any("lora" in n for n, _ in model.named_parameters())
    # missing attribute columns are caught before the model is trained
    assert main(["steerlm", "--model", str(src), "--data", str(data), "--output_dir", str(tmp_path / "o2"),
                 "--prompt_field", "question", "--response_field", "answer", "--max_steps", "1"]) == 2
    assert "row 0: missing attribute field(s) ['helpfulness'" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_real_smollm2_template_format(teacher_dir):
    """SmolLM2's own template (ChatML with a default system turn): the attribute string follows its assistant header,
    the trained tokens are exactly the response + <|im_end|>, and inference builds the same prefix."""
    from transformers import AutoTokenizer

    from hf_minitron.alignment.steerlm import steerlm_prompt

    tok = AutoTokenizer.from_pretrained(teacher_dir)
    row = helpsteer_row(prompt="What is 2+2?", response="4, because 2+2=4.", verbosity=1)
    ds = steerlm_dataset([row], tok)
    ids, mask = ds[0]["input_ids"], ds[0]["completion_mask"]
    cut = mask.index(1)
    assert all(mask[cut:]) and not any(mask[:cut])
    prompt_text = tok.decode(ids[:cut])
    assert prompt_text.startswith("<|im_start|>system\n")  # the template's default system turn is kept
    assert prompt_text.endswith("What is 2+2?<|im_end|>\n<|im_start|>assistant\n" + format_attributes(row) + "\n")
    assert tok.decode(ids[cut:]) == "4, because 2+2=4.<|im_end|>"
    assert tok(steerlm_prompt(tok, row["prompt"], row), add_special_tokens=False)["input_ids"] == ids[:cut]
