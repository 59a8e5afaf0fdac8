"""``hf-minitron distill`` end to end on tiny models, and the data loader behind it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from hf_minitron import load_causal_lm, save_model
from hf_minitron.cli import distill as distill_cli
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
    # the YAML gives the recipe, a flag overrides one of its values (TRL parser conventions)
    assert distill_cli.main(["--config", str(recipe), "--out", str(out), "--max_steps", "2", "--packing", "true",
                             "--packing_strategy", "wrapped"]) == 0
    printed = capsys.readouterr().out
    assert f"distilled student saved to {out} (2 steps" in printed  # the flag overrode the YAML's max_steps
    distilled, _ = load_causal_lm(out)
    original, _ = load_causal_lm(student_dir)
    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        keys = set(fh.keys())
    assert not [k for k in keys if "distill_projections" in k or "teacher" in k]
    assert distilled.config.hidden_size == 32 and distilled.config.num_hidden_layers == 2  # the student, not the teacher
    changed = [n for (n, a), b in zip(distilled.named_parameters(), original.parameters()) if not torch.equal(a, b)]
    assert changed, "training must have updated the student"


def test_cli_refuses_bad_input_before_loading(model_dirs, tmp_path):
    _, student_dir, teacher_dir, data = model_dirs
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    with pytest.raises(SystemExit, match="not empty"):
        distill_cli.main(["--student", str(student_dir), "--teacher", str(teacher_dir), "--data", str(data),
                          "--out", str(busy)])
    with pytest.raises(SystemExit, match="missing required --data"):
        distill_cli.main(["--student", str(student_dir), "--out", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        distill_cli.main(["--student", str(student_dir), "--teacher", str(teacher_dir), "--data",
                          str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")])


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
