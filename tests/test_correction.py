"""Teacher correction: LoRA (merged back) and full SFT lower the loss on the correction data; the merged checkpoint
reloads with identical logits; bad input fails before training; the correct-teacher stage (CLI and --config recipes)
writes a checkpoint and reports the held-out loss before/after."""

import copy
import json
import random

import pytest
import torch

from conftest import REPO_ROOT, random_ids
from hf_minitron.alignment import AlignmentDataError
from hf_minitron.correction import build_correction_trainer, correct_teacher
from hf_minitron.errors import ConfigError
from hf_minitron.stages.correction import CorrectTeacherConfig
from hf_minitron.data import token_blocks
from hf_minitron.evaluation import mean_nll
from hf_minitron.loading import save_model
from hf_minitron.testing import TINY_VOCAB, tiny_model

WORDS = "the cat sat on a mat and the dog ran in the park while birds sang".split()


def corpus(n=24, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(24)) for _ in range(n)]


def test_lora_correction_lowers_loss_and_merged_checkpoint_reloads_identically(tokenizer, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    texts = corpus()
    blocks = token_blocks(texts, tokenizer, 64)
    model = tiny_model("llama")
    before = mean_nll(model, blocks, 8)
    config = CorrectTeacherConfig(use_lora=True, lora_r=8, lora_alpha=16, max_steps=12, learning_rate=1e-2,
                                  max_length=128)
    corrected = correct_teacher(model, texts, config, tokenizer=tokenizer)
    after = mean_nll(corrected, blocks, 8)
    assert after < before - 0.5, (before, after)
    # merged: a plain model with no adapter modules left
    assert not isinstance(corrected, PeftModel)
    assert not any("lora" in name for name, _ in corrected.named_parameters())
    out = save_model(corrected, tokenizer, tmp_path / "corrected")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = random_ids(TINY_VOCAB, seq=20)
    with torch.no_grad():
        assert torch.equal(corrected(ids).logits, reloaded(ids).logits)


def test_full_correction_lowers_loss_on_chat_data(tokenizer):
    rng = random.Random(1)
    data = [{"messages": [{"role": "user", "content": f"count to {k}"},
                          {"role": "assistant", "content": " ".join(str(i) for i in range(k))}]}
            for k in (rng.randint(3, 9) for _ in range(16))]
    texts = [tokenizer.apply_chat_template(d["messages"], tokenize=False) for d in data]
    blocks = token_blocks(texts, tokenizer, 48, add_eos=False)
    model = tiny_model("qwen2")
    before = mean_nll(model, blocks, 8)
    corrected = correct_teacher(model, data, tokenizer=tokenizer, use_lora=False, max_steps=10, learning_rate=3e-3,
                                max_length=64)
    assert mean_nll(corrected, blocks, 8) < before - 0.5


GENERATION_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ m['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_assistant_only_loss_trains_only_assistant_turns(tokenizer):
    tok = copy.deepcopy(tokenizer)  # keep the shared fixture untouched
    tok.chat_template = GENERATION_TEMPLATE
    data = [{"messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello you"}]}]
    trainer = build_correction_trainer(tiny_model("llama"), tok, data * 2, use_lora=False, max_steps=1,
                                       assistant_only_loss=True)
    row = trainer.train_dataset[0]
    trained = [t for t in row["labels"] if t != -100]
    assert tok.decode(trained) == "hello you<|im_end|>"
    with pytest.raises(ConfigError, match="assistant_only_loss=True needs chat data"):
        build_correction_trainer(tiny_model("llama"), tok, ["plain text"], use_lora=False, assistant_only_loss=True)


def test_bad_input_fails_before_training(tokenizer, tmp_path):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="method='adapter'"), pytest.deprecated_call():  # pre-stage keyword
        correct_teacher(model, ["a b c"], tokenizer=tokenizer, method="adapter")
    with pytest.raises(AlignmentDataError, match=r"row 1: field 'messages\[1\].content' is empty"):
        bad = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}
        correct_teacher(model, [{"messages": [{"role": "user", "content": "q"}]}, bad], tokenizer=tokenizer)
    with pytest.raises(AlignmentDataError, match="row 0: missing field.*'body'"):
        correct_teacher(model, [{"text": "x"}], tokenizer=tokenizer, dataset_text_field="body")
    with pytest.raises(ValueError, match="tokenizer is required"):
        correct_teacher(model, ["a b c"])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        correct_teacher(model, ["a b c"], tokenizer=tokenizer, out_dir=tmp_path / "busy")


def test_cli_correct_teacher_writes_checkpoint(tokenizer, tmp_path, capsys):
    from hf_minitron.cli import main
    from hf_minitron.loading import load_causal_lm

    src = save_model(tiny_model("llama"), tokenizer, tmp_path / "teacher")
    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(corpus(12)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("use_lora: false\nmax_steps: 3\nlearning_rate: 0.003\nmax_length: 64\nheld_out_fraction: 0.25\n")
    out = tmp_path / "corrected"
    assert main(["correct-teacher", "--model", str(src), "--data", str(data), "--output_dir", str(out),
                 "--config", str(recipe)]) == 0
    out_text = capsys.readouterr().out  # TRL's training log precedes the JSON result
    result = json.loads(out_text[out_text.rindex('{\n  "stage"'):])
    report = result["metrics"]
    assert result["output_dir"] == str(out) and report["use_lora"] is False and report["global_step"] == 3
    assert report["records_train"] == 9 and report["records_held_out"] == 3
    assert report["held_out_nll_after"] < report["held_out_nll_before"]
    model, _ = load_causal_lm(out)
    assert model.config.num_hidden_layers == 4
    assert not (tmp_path / "corrected.checkpoints").exists()  # save_strategy="no": the empty Trainer dir is removed
    recipe.write_text("methd: full\n")
    assert main(["correct-teacher", "--model", str(src), "--data", str(data), "--output_dir", str(tmp_path / "o2"),
                 "--config", str(recipe)]) == 2
    assert "unknown field 'methd'" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize("recipe", sorted((REPO_ROOT / "recipes").glob("align_*.yaml")), ids=lambda p: p.name)
def test_recipes_use_known_fields(recipe, tmp_path):
    """Each align_*.yaml is a --config file of one stage: its keys are that stage's fields, its values valid."""
    import yaml

    from hf_minitron.cli.yaml_config import read_stage_yaml
    from hf_minitron.stages import canonical_name, get_stage

    name = canonical_name(recipe.stem.removeprefix("align_"))
    spec = get_stage(name)
    values = read_stage_yaml(recipe, spec.config_cls, command=name)
    config = spec.config_cls(**values, data="d.jsonl", output_dir=str(tmp_path / "o"))
    raw = yaml.safe_load(recipe.read_text())
    assert config.learning_rate == raw.get("learning_rate", spec.config_cls.default_learning_rate(config.use_lora))
    assert all(getattr(config, k) == v for k, v in values.items() if k != "lr_scheduler_type")


def test_stage_from_python_on_chat_data_reports_held_out_loss(tokenizer, tmp_path):
    """run_stage with a dict config (what the recipe runner does): chat records, held-out loss measured on the
    conversations rendered with the chat template, checked against mean_nll on the same blocks by hand."""
    from hf_minitron.loading import load_causal_lm
    from hf_minitron.stages import run_stage

    src = save_model(tiny_model("qwen2"), tokenizer, tmp_path / "teacher")
    rng = random.Random(2)
    rows = [{"messages": [{"role": "user", "content": f"count to {k}"},
                          {"role": "assistant", "content": " ".join(str(i) for i in range(k))}]}
            for k in (rng.randint(3, 9) for _ in range(16))]
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    result = run_stage("correct-teacher", {"model": str(src), "data": str(data), "output_dir": str(tmp_path / "out"),
                                           "use_lora": False, "max_steps": 6, "learning_rate": 3e-3,
                                           "max_length": 48, "held_out_fraction": 0.25, "disable_tqdm": True})
    m = result.metrics
    assert (m["records_train"], m["records_held_out"], m["global_step"]) == (12, 4, 6)
    held_texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in rows[12:]]
    blocks = token_blocks(held_texts, tokenizer, 48, add_eos=False)
    before = mean_nll(tiny_model("qwen2"), blocks, 8)
    after = mean_nll(load_causal_lm(result.output_dir)[0], blocks, 8)
    assert m["held_out_nll_before"] == pytest.approx(before, rel=1e-6)
    assert m["held_out_nll_after"] == pytest.approx(after, rel=1e-4) and after < before
