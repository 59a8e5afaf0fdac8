"""``hf-minitron distill`` end to end on tiny models, and the data loader behind it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from hf_minitron import load_causal_lm, save_model
from hf_minitron.cli import main
from hf_minitron.distill.data import load_sft_dataset
from hf_minitron.testing import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill_cli")
    tok = tiny_tokenizer()
    student = save_model(tiny_model("llama", seed=1, hidden_size=32, head_dim=8, num_hidden_layers=2), tok,
                         root / "student")
    teacher = save_model(tiny_model("llama", seed=0), tok, root / "teacher")
    data = root / "data.txt"
    data.write_text("\n".join(f"document {i}: " + "lorem ipsum dolor " * (i % 4 + 1) for i in range(24)))
    return root, student, teacher, data


def test_cli_distills_and_saves_only_the_student(model_dirs, tmp_path, capsys):
    _, student_dir, teacher_dir, data = model_dirs
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"student: {student_dir}\nteacher: {teacher_dir}\ndata: {data}\n"
        "max_steps: 3\nper_device_train_batch_size: 2\nmax_length: 32\nlearning_rate: 0.01\n"
        "gradient_checkpointing: false\nsave_strategy: 'no'\nlogging_steps: 1\nreport_to: none\n"
        "intermediate_layer_map: '1:2,2:4'\ndisable_tqdm: true\n"
    )
    out = tmp_path / "student_out"
    # the YAML gives the settings, a flag overrides one of its values (TRL parser conventions)
    assert main(["distill", "--config", str(recipe), "--output_dir", str(out), "--max_steps", "2", "--packing",
                 "true", "--packing_strategy", "wrapped", "--use_cpu"]) == 0
    out_text = capsys.readouterr().out
    printed = json.loads(out_text[out_text.rindex('{\n  "stage"'):])  # after the Trainer's own log lines
    assert printed["output_dir"] == str(out) and printed["metrics"]["global_step"] == 2  # the flag won
    distilled, _ = load_causal_lm(out)
    original, _ = load_causal_lm(student_dir)
    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        keys = set(fh.keys())
    assert not [k for k in keys if "distill_projections" in k or "teacher" in k]
    assert distilled.config.hidden_size == 32 and distilled.config.num_hidden_layers == 2  # the student, not the teacher
    changed = [n for (n, a), b in zip(distilled.named_parameters(), original.parameters()) if not torch.equal(a, b)]
    assert changed, "training must have updated the student"


def test_cli_refuses_bad_input_before_loading(model_dirs, tmp_path, capsys, monkeypatch):
    _, student_dir, teacher_dir, data = model_dirs

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr("hf_minitron.loading.load_causal_lm", refuse)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    base = ["distill", "--student", str(student_dir), "--teacher", str(teacher_dir), "--use_cpu"]
    cases = [
        ([*base, "--data", str(data), "--output_dir", str(busy)], "not empty"),
        (["distill", "--student", str(student_dir), "--output_dir", str(tmp_path / "o"), "--use_cpu"], "data is not set"),
        ([*base, "--data", str(tmp_path / "missing.txt"), "--output_dir", str(tmp_path / "o")], "does not exist"),
        ([*base, "--data", str(data), "--output_dir", str(tmp_path / "o"), "--max_length", "4096"],
         "max_position_embeddings"),
    ]
    for argv, words in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_load_sft_dataset_forms(tmp_path):
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Add", "input": "1+1", "output": "2"},
                                  {"instruction": "Greet", "input": "", "output": "hi"}]))
    ds = load_sft_dataset(alpaca)
    assert ds[0]["messages"] == [{"role": "user", "content": "Add\n\n1+1"}, {"role": "assistant", "content": "2"}]
    assert ds[1]["messages"][0]["content"] == "Greet"
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"body": "a"}\n{"body": "b"}\n')
    assert load_sft_dataset(jsonl, text_field="body")["body"] == ["a", "b"]
    with pytest.raises(ValueError, match=r"columns \['body'\]"):
        load_sft_dataset(jsonl)
    txt = tmp_path / "t.txt"
    txt.write_text("one\n\ntwo\nthree\n")
    assert load_sft_dataset(txt, max_samples=2)["text"] == ["one", "two"]
