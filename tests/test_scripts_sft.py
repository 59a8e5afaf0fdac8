"""A trl/scripts/sft.py-shaped distillation script (tests/script_sft_distill.py): the student given as a path with
TRL's model settings (dtype, attn_implementation, revision), the teacher's own init kwargs, PEFT, save, and
push_to_hub writing this project's model card (the Hub replaced by a recorder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from hf_minitron.testing import tiny_model, tiny_tokenizer
from script_sft_distill import main, make_parser


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    tok = tiny_tokenizer()
    for name, seed in (("student", 1), ("teacher", 0)):
        tiny_model("llama", seed=seed).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    data = root / "data"
    data.mkdir()
    for split, n in (("train", 12), ("test", 4)):
        rows = [{"messages": [{"role": "user", "content": f"question {i}?"},
                              {"role": "assistant", "content": "answer " * (1 + i % 4)}]} for i in range(n)]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _args(ws, out, *extra):
    argv = ["--model_name_or_path", str(ws / "student"), "--teacher_name_or_path", str(ws / "teacher"),
            "--dataset_name", str(ws / "data"), "--output_dir", str(out), "--use_cpu", "--bf16", "false",
            "--report_to", "none", "--max_steps", "2", "--per_device_train_batch_size", "4", "--logging_steps", "1",
            "--save_strategy", "no", "--learning_rate", "1e-3", "--disable_tqdm", "true", *extra]
    return make_parser().parse_args_and_config(args=argv)


class _RecordingHub:
    """Stands in for the Hub client of Trainer.push_to_hub: records the repo and the README it would upload."""

    def __init__(self):
        self.uploads = []

    def create_repo(self, repo_id, **kwargs):
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, **kwargs):
        self.uploads.append((repo_id, sorted(p.name for p in Path(folder_path).iterdir()),
                             (Path(folder_path) / "README.md").read_text()))


def test_model_settings_honoured_for_path_student_and_teacher_and_the_pushed_card(workspace, tmp_path, monkeypatch):
    import transformers.trainer

    import hf_minitron.loading as loading

    calls = []
    real = loading.load_causal_lm
    monkeypatch.setattr(loading, "load_causal_lm", lambda *a, **k: calls.append(k) or real(*a, **k))
    hub = _RecordingHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    out = tmp_path / "out"
    trainer = main(*_args(workspace, out, "--dtype", "bfloat16", "--attn_implementation", "eager",
                          "--model_revision", "main", "--teacher_model_init_kwargs",
                          '{"dtype": "float16", "attn_implementation": "eager"}', "--push_to_hub",
                          "--hub_model_id", "acme/tiny-student"))
    student, teacher = trainer.model, trainer.teacher_model
    assert student.dtype == torch.bfloat16 and student.config._attn_implementation == "eager"
    assert teacher.dtype == torch.float16 and teacher.config._attn_implementation == "eager"
    assert [c["revision"] for c in calls] == ["main", None]  # student with ModelConfig's revision, teacher default
    with safe_open(str(out / "model.safetensors"), "pt") as fh:  # saved in bf16, as stock SFTTrainer would
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.bfloat16}
    losses = [h["kd_loss"] for h in trainer.state.log_history if "kd_loss" in h]
    assert len(losses) == 2 and all(x > 0 for x in losses)
    # save_model pushes (hub_strategy="every_save"), then the script's push_to_hub(dataset_name=...): both cards
    # are this project's
    assert len(hub.uploads) == 2
    for repo, files, card in hub.uploads:
        assert repo == "acme/tiny-student" and "model.safetensors" in files and "README.md" in files
        assert "fine-tuned version of" not in card and "[None]" not in card
        for text in ("- distillation", "- minitron", "- pruned", "arXiv:2407.14679", "model_name: tiny-student"):
            assert text in card, text
    assert str(workspace / "data") in hub.uploads[-1][2]


def test_peft_student_from_a_path(workspace, tmp_path):
    out = tmp_path / "lora"
    trainer = main(*_args(workspace, out, "--use_peft", "--lora_r", "4", "--lora_alpha", "8",
                          "--lora_target_modules", "q_proj", "v_proj"))
    assert (out / "adapter_config.json").is_file()
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().max() > 0 for p in lora_b)


def test_card_names_a_hub_teacher_as_base_model(tmp_path):
    from datasets import Dataset

    from hf_minitron import DistillationConfig, DistillationTrainer

    teacher = tiny_model("llama", seed=0)
    teacher.config.name_or_path = "acme/tiny-teacher"
    tok = tiny_tokenizer()
    trainer = DistillationTrainer(tiny_model("llama", seed=1), args=DistillationConfig(
        output_dir=str(tmp_path / "run"), use_cpu=True, report_to=[]), processing_class=tok,
        train_dataset=Dataset.from_dict({"text": ["a b c d"] * 4}), teacher_model=teacher,
        teacher_processing_class=tok)
    trainer.create_model_card(model_name="kd", finetuned_from="acme/pruned", license="apache-2.0", language="en",
                              dataset=["acme/corpus"], dataset_tags="acme/corpus", tags="custom")
    card = (tmp_path / "run" / "README.md").read_text()
    for text in ("base_model: acme/tiny-teacher", "license: apache-2.0", "- acme/corpus", "- custom",
                 "[acme/tiny-teacher](https://huggingface.co/acme/tiny-teacher)", "`acme/pruned`"):
        assert text in card, text
