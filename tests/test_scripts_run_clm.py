"""A run_clm.py-shaped distillation script (tests/script_run_clm_distill.py): HfArgumentParser over the script's own
dataclasses plus DistillationConfig, train, evaluate (perplexity from eval_loss), save, resume, model card, and the
same run on 2 processes (accelerate launch on CPU)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_minitron.testing import tiny_model, tiny_tokenizer
from script_run_clm_distill import DataTrainingArguments, ModelArguments, main, parse

REPO = Path(__file__).resolve().parents[1]
WORDS = "the quick brown fox jumps over the lazy dog while a teacher explains distillation to a small student".split()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_clm")
    tok = tiny_tokenizer()
    for name, seed in (("student", 1), ("teacher", 0)):
        tiny_model("llama", seed=seed).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    lines = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(5 + i % 7)) for i in range(40)]
    (root / "train.txt").write_text("\n".join(lines[:32]) + "\n")
    (root / "valid.txt").write_text("\n".join(lines[32:]) + "\n")
    return root


def _argv(ws, out, *extra):
    return ["--model_name_or_path", str(ws / "student"), "--teacher_name_or_path", str(ws / "teacher"),
            "--train_file", str(ws / "train.txt"), "--validation_file", str(ws / "valid.txt"), "--block_size", "32",
            "--output_dir", str(out), "--do_train", "--do_eval", "--use_cpu", "--report_to", "none",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--max_steps", "4",
            "--learning_rate", "5e-3", "--logging_steps", "1", "--save_strategy", "no", "--disable_tqdm", "true",
            "--ce_weight", "0.2", *extra]


def _weights(out) -> dict:
    return load_file(str(Path(out) / "model.safetensors"))


def _perplexity(model_dir, ws, block_size=32) -> float:
    """The student's perplexity on the validation blocks, from a plain forward and torch's cross-entropy."""
    from itertools import chain

    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    ids = list(chain(*(tok(line)["input_ids"] for line in (ws / "valid.txt").read_text().splitlines())))
    n = len(ids) // block_size * block_size
    blocks = torch.tensor(ids[:n]).reshape(-1, block_size)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(blocks).logits[:, :-1].double()
    return math.exp(torch.nn.functional.cross_entropy(logits.flatten(0, 1), blocks[:, 1:].flatten()).item())


def test_perplexity_from_eval_loss_is_the_students_and_the_card_is_the_projects(workspace, tmp_path):
    out = tmp_path / "out"
    trainer, results = main(_argv(workspace, out))
    # run_clm's perplexity = exp(eval_loss) is the saved student's real perplexity on the held-out blocks
    assert results["perplexity"] == pytest.approx(_perplexity(out, workspace), rel=1e-4)
    assert results["eval_ce_loss"] == results["eval_loss"]
    assert results["eval_distill_loss"] == pytest.approx(results["eval_kd_loss"] + 0.2 * results["eval_ce_loss"],
                                                         rel=1e-5)
    assert 0.0 <= results["eval_accuracy"] <= 1.0  # compute_metrics got the student's logits
    assert json.loads((out / "eval_results.json").read_text())["perplexity"] == results["perplexity"]
    # the student saved like any Trainer run: a plain checkpoint, no teacher, in the student's dtype
    weights = _weights(out)
    assert weights["model.embed_tokens.weight"].dtype == torch.float32
    assert not any(k.startswith("teacher") for k in weights)
    # create_model_card(finetuned_from=..., tasks=...) as run_clm calls it: this project's card
    card = (out / "README.md").read_text()
    assert "fine-tuned version of" not in card and "[None]" not in card
    for text in ("- pruned", "- distillation", "- minitron", "pipeline_tag: text-generation",
                 f"`{workspace / 'student'}`", "arXiv:2407.14679", "forward_kl", "held-out cross-entropy"):
        assert text in card, text
    assert "base_model" not in card  # a local teacher directory is no Hub id


def test_resume_from_a_checkpoint_is_exact(workspace, tmp_path):
    full = tmp_path / "full"
    main(_argv(workspace, full, "--save_strategy", "steps", "--save_steps", "2"))
    assert (full / "checkpoint-2").is_dir()
    resumed = tmp_path / "resumed"
    main(_argv(workspace, resumed, "--resume_from_checkpoint", str(full / "checkpoint-2")))
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_best_model_and_early_stopping_watch_the_students_cross_entropy(workspace, tmp_path):
    trainer, _ = main(_argv(workspace, tmp_path / "best", "--eval_strategy", "steps", "--eval_steps", "1",
                            "--save_strategy", "steps", "--save_steps", "1", "--metric_for_best_model", "loss",
                            "--load_best_model_at_end", "true"))
    evals = [h for h in trainer.state.log_history if "eval_loss" in h and "eval_runtime" in h][:4]
    assert all(h["eval_loss"] == h["eval_ce_loss"] != h["eval_distill_loss"] for h in evals)
    assert trainer.state.best_metric == min(h["eval_loss"] for h in evals)


def test_trust_remote_code_clash_and_the_config_without_the_flag():
    from transformers import HfArgumentParser

    from hf_minitron import DistillationConfig, DistillationTrainingArguments

    with pytest.raises(Exception, match="conflicting option string"):
        HfArgumentParser((ModelArguments, DataTrainingArguments, DistillationConfig))
    HfArgumentParser((ModelArguments, DataTrainingArguments, DistillationTrainingArguments))
    model_args, _, config = parse(["--model_name_or_path", "m", "--output_dir", "o", "--use_cpu",
                                   "--trust_remote_code"])
    assert isinstance(config, DistillationConfig)
    assert model_args.trust_remote_code is True and config.trust_remote_code is True
    model_args, _, config = parse(["--model_name_or_path", "m", "--output_dir", "o", "--use_cpu"])
    assert model_args.trust_remote_code is False and config.trust_remote_code is False


def test_two_processes_give_the_one_process_student(workspace, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 script.py ... --use_cpu` (the README's CPU line): 2 x 2
    sequences per step give the student of 1 x 4 in one process."""
    common = ("--max_steps", "2", "--optim", "sgd", "--lr_scheduler_type", "constant", "--max_grad_norm", "0",
              "--learning_rate", "0.5", "--do_eval", "false")
    single = tmp_path / "single"
    main(_argv(workspace, single, *common))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ddp = tmp_path / "ddp"
    argv = _argv(workspace, ddp, *common)
    argv[argv.index("--per_device_train_batch_size") + 1] = "2"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(port), str(REPO / "tests" / "script_run_clm_distill.py"), *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((ddp / "script_results.json").read_text())["world_size"] == 2
    a, b = _weights(single), _weights(ddp)
    moved = max((a[k] - tiny_model("llama", seed=1).state_dict()[k]).abs().max().item() for k in a)
    assert moved > 1e-3
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
