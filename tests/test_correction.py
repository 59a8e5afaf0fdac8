"""Teacher correction: LoRA (merged back) and full SFT lower the loss on the correction data; the merged checkpoint
reloads with identical logits; bad input fails before training; the correct-teacher CLI writes a checkpoint."""

import copy
import json
import random

import pytest
import torch

from conftest import REPO_ROOT, random_ids
from hf_minitron.alignment import AlignmentDataError, LoraSettings, TrainSettings, correct_teacher
from hf_minitron.alignment.correction import build_correction_trainer
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
    corrected = correct_teacher(model, texts, tokenizer=tokenizer, method="lora", lora=LoraSettings(r=8, alpha=16),
                                settings=TrainSettings(max_steps=12, learning_rate=1e-2, max_length=128))
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
    corrected = correct_teacher(model, data, tokenizer=tokenizer, method="full",
                                settings=TrainSettings(max_steps=10, learning_rate=3e-3, max_length=64))
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
    trainer = build_correction_trainer(tiny_model("llama"), tok, data * 2, method="full",
                                       settings=TrainSettings(max_steps=1), assistant_only_loss=True)
    row = trainer.train_dataset[0]
    trained = [t for t in row["labels"] if t != -100]
    assert tok.decode(trained) == "hello you<|im_end|>"
    with pytest.raises(ValueError, match="chat data"):
        build_correction_trainer(tiny_model("llama"), tok, ["plain text"], method="full", assistant_only_loss=True)


def test_bad_input_fails_before_training(tokenizer, tmp_path):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="method='adapter'"):
        correct_teacher(model, ["a b c"], tokenizer=tokenizer, method="adapter")
    with pytest.raises(AlignmentDataError, match=r"row 1: field 'messages\[1\].content' is empty"):
        bad = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}
        correct_teacher(model, [{"messages": [{"role": "user", "content": "q"}]}, bad], tokenizer=tokenizer)
    with pytest.raises(AlignmentDataError, match="row 0: missing field.*'body'"):
        correct_teacher(model, [{"text": "x"}], tokenizer=tokenizer, text_field="body")
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
    recipe.write_text("method: full\nmax-steps: 3\nlr: 0.003\nmax_length: 64\nheld-out: 0.25\n")
    out = tmp_path / "corrected"
    assert main(["correct-teacher", str(src), "--data", str(data), "--out", str(out), "--config", str(recipe)]) == 0
    out_text = capsys.readouterr().out  # TRL's training log precedes the JSON report
    report = json.loads(out_text[out_text.rindex('{\n  "out"'):])
    assert report["records_train"] == 9 and report["records_held_out"] == 3
    assert report["held_out_nll_after"] < report["held_out_nll_before"]
    model, _ = load_causal_lm(out)
    assert model.config.num_hidden_layers == 4
    recipe.write_text("methd: full\n")
    with pytest.raises(SystemExit):
        main(["correct-teacher", str(src), "--data", str(data), "--out", str(tmp_path / "o2"), "--config", str(recipe)])


@pytest.mark.parametrize("recipe", sorted((REPO_ROOT / "recipes").glob("align_*.yaml")), ids=lambda p: p.name)
def test_recipes_use_known_options(recipe, tmp_path):
    from hf_minitron.cli import align, correct_teacher
    from hf_minitron.cli.align import parse_with_recipe

    method = recipe.stem.removeprefix("align_")
    parser = correct_teacher.build_parser() if method == "correct_teacher" else align.build_parser(method)
    args = parse_with_recipe(parser, ["--data", "d.json", "--out", str(tmp_path / "o"), "--config", str(recipe)])
    assert args.config == str(recipe) and args.lr is not None
