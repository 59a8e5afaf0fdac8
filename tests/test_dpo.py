"""DPO: the sharegpt/TRL preference loader, log-probs cross-checked against TRL's precomputed reference log-probs,
DPO on a tiny model raising the implicit reward margin without collapsing the chosen likelihood (frozen-copy
reference, and LoRA + precomputed reference), and the `dpo` stage through the CLI."""

import json
import random

import pytest
import torch

from hf_minitron.alignment import (
    AlignmentDataError,
    build_dpo_trainer,
    completion_logprobs,
    load_preference_data,
    preference_stats,
    train_dpo,
)
from hf_minitron.alignment.training import frozen_copy
from hf_minitron.errors import ConfigError
from hf_minitron.stages.dpo import DPOStageConfig
from hf_minitron.testing import tiny_model


def sharegpt_pairs(n=32, seed=0):
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        w = "".join(rng.choice("abcdefghij") for _ in range(4))
        pairs.append({"conversations": [{"from": "human", "value": f"Say {w}."}],
                      "chosen": {"from": "gpt", "value": f"{w}, gladly."}, "rejected": {"from": "gpt", "value": "No."}})
    return pairs


def test_sharegpt_and_trl_forms_load():
    rec = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                             {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Bye?"}],
           "chosen": {"from": "gpt", "value": "Bye!"}, "rejected": {"from": "gpt", "value": "No."}}
    ds = load_preference_data([rec])
    assert ds[0] == {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye?"}],
                     "chosen": [{"role": "assistant", "content": "Bye!"}],
                     "rejected": [{"role": "assistant", "content": "No."}]}
    trl_form = [{"prompt": "2+2=", "chosen": "4", "rejected": "5"}]
    assert load_preference_data(trl_form)[0] == trl_form[0]


@pytest.mark.parametrize("records,match", [
    ([{"prompt": "p", "chosen": "a"}], r"row 0: missing field\(s\) \['rejected'\]"),
    ([{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "", "rejected": "b"}],
     r"row 1: field 'chosen' is empty"),
    ([{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
       "chosen": {"from": "gpt", "value": "x"}, "rejected": {"from": "gpt", "value": "y"}}],
     r"row 0: 'conversations' must end with a user"),
    ([{"conversations": [{"from": "robot", "value": "q"}], "chosen": {"from": "gpt", "value": "x"},
       "rejected": {"from": "gpt", "value": "y"}}], r"row 0: conversations\[0\].from='robot'"),
    ([{"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "x"},
       "rejected": {"from": "human", "value": "y"}}], r"row 0: field 'rejected' must be one assistant"),
    ([{"prompt": "p", "chosen": "a", "rejected": "b"},
      {"prompt": [{"role": "user", "content": "p"}], "chosen": [{"role": "assistant", "content": "a"}],
       "rejected": [{"role": "assistant", "content": "b"}]}], "mixes conversational"),
])
def test_bad_preference_rows_name_row_and_field(records, match):
    with pytest.raises(AlignmentDataError, match=match):
        load_preference_data(records)


def test_shared_dpo_en_converts(shared_data):
    ds = load_preference_data(shared_data / "dpo_en.json")
    assert len(ds) == 240
    assert all(p[-1]["role"] == "user" for p in ds["prompt"])
    assert all(c[0]["role"] == "assistant" and c[0]["content"].strip() for c in ds["chosen"])


@pytest.mark.parametrize("form", ["sharegpt", "standard"])
def test_logprobs_match_trl_precomputed_reference(tokenizer, form):
    pairs = sharegpt_pairs(6)
    if form == "standard":
        pairs = [{"prompt": f"Q: {p['conversations'][0]['value']}\nA:", "chosen": " " + p["chosen"]["value"],
                  "rejected": " " + p["rejected"]["value"]} for p in pairs]
    model = tiny_model("llama")
    trainer = build_dpo_trainer(model, tokenizer, pairs, reference="precomputed", max_steps=1,
                                per_device_train_batch_size=3)
    ref_c = torch.tensor(trainer.train_dataset["ref_chosen_logps"], dtype=torch.float64)
    ref_r = torch.tensor(trainer.train_dataset["ref_rejected_logps"], dtype=torch.float64)
    data = load_preference_data(pairs)
    ours_c = completion_logprobs(model, tokenizer, list(data["prompt"]), list(data["chosen"]))
    ours_r = completion_logprobs(model, tokenizer, list(data["prompt"]), list(data["rejected"]))
    assert torch.allclose(ours_c, ref_c, atol=1e-3) and torch.allclose(ours_r, ref_r, atol=1e-3)
    assert (ours_c < 0).all() and (ours_c < ours_r).all()  # longer chosen answers: lower log-prob before DPO


def test_dpo_raises_reward_margin_without_collapsing_chosen(tokenizer):
    pairs = sharegpt_pairs(32)
    model = tiny_model("llama")
    reference = frozen_copy(model)
    before = preference_stats(model, reference, tokenizer, pairs).summary()
    assert before["reward_margin"] == 0.0
    config = DPOStageConfig(beta=0.1, reference="model", max_steps=16, learning_rate=1e-3,
                            per_device_train_batch_size=8, seed=0)
    aligned = train_dpo(model, tokenizer, pairs, config)
    after = preference_stats(aligned, reference, tokenizer, pairs).summary()
    assert after["reward_margin"] > 1.0 and after["reward_accuracy"] >= 0.9, after
    assert after["chosen_logp"] > before["chosen_logp"] - 2.0, (before, after)  # no collapse of the chosen answers


def test_lora_dpo_with_precomputed_reference(tokenizer):
    from peft import PeftModel

    pairs = sharegpt_pairs(16, seed=1)
    model = tiny_model("qwen3")
    reference = frozen_copy(model)
    aligned = train_dpo(model, tokenizer, pairs, beta=0.1, reference="precomputed", use_lora=True, lora_r=8,
                        lora_alpha=16, max_steps=8, learning_rate=5e-3, per_device_train_batch_size=8, seed=0)
    assert not isinstance(aligned, PeftModel) and not any("lora" in n for n, _ in aligned.named_parameters())
    stats = preference_stats(aligned, reference, tokenizer, pairs)
    assert stats.margins.mean() > 0.5 and (stats.margins > 0).double().mean() >= 0.9
    assert stats.chosen_logps.mean() > preference_stats(reference, None, tokenizer, pairs).chosen_logps.mean() - 2.0


def test_bad_dpo_arguments(tokenizer):
    with pytest.raises(ConfigError, match="reference='ref'"):
        build_dpo_trainer(tiny_model("llama"), tokenizer, sharegpt_pairs(2), reference="ref")
    with pytest.raises(ConfigError, match="beta=0"):
        build_dpo_trainer(tiny_model("llama"), tokenizer, sharegpt_pairs(2), beta=0)
    with pytest.raises(TypeError, match="not both"):
        build_dpo_trainer(tiny_model("llama"), tokenizer, sharegpt_pairs(2), DPOStageConfig(), beta=0.2)


def test_cli_dpo_held_out_report(tokenizer, tmp_path, capsys):
    from hf_minitron.cli import main
    from hf_minitron.loading import load_causal_lm, save_model

    src = save_model(tiny_model("llama"), tokenizer, tmp_path / "student")
    data = tmp_path / "pairs.json"
    pairs = sharegpt_pairs(10)
    long_prompt = {**pairs[0], "conversations": [{"from": "human", "value": "Say " + "abc " * 30}]}
    data.write_text(json.dumps(pairs[:3] + [long_prompt] + pairs[3:]))  # row 3: ~130 prompt tokens
    out = tmp_path / "aligned"
    with pytest.warns(UserWarning, match=r"1 of 11 pairs \(rows \[3\]\) have a prompt of max_length=96"):
        assert main(["dpo", "--model", str(src), "--data", str(data), "--output_dir", str(out),
                     "--held_out_fraction", "0.2", "--max_steps", "2", "--learning_rate", "1e-3", "--max_length", "96",
                     "--per_device_train_batch_size", "4", "--reference", "precomputed"]) == 0
    text = capsys.readouterr().out
    result = json.loads(text[text.rindex('{\n  "stage"'):])
    report = result["metrics"]
    assert result["stage"] == "dpo" and result["output_dir"] == str(out)
    assert report["pairs_train"] == 8 and report["pairs_held_out"] == 2 and report["pairs_skipped_too_long"] == 1
    assert report["global_step"] == 2
    assert report["held_out_before"]["reward_margin"] == 0.0 == report["held_out_reward_margin_before"]
    assert report["held_out_after"]["reward_margin"] != 0.0
    assert report["held_out_after"]["reward_margin"] == report["held_out_reward_margin_after"]
    model, _ = load_causal_lm(out)
    assert model.config.num_hidden_layers == 4
    data.write_text(json.dumps([{"prompt": "p", "chosen": "a"}]))
    # the old spelling `align dpo` is an alias of `dpo`
    assert main(["align", "dpo", "--model", str(src), "--data", str(data), "--output_dir", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "row 0: missing field(s) ['rejected']" in err and "Traceback" not in err
    assert not (tmp_path / "o2").exists()
