"""DistillationTrainer: loss value vs an independent reference, gradient accumulation, 2 processes, PEFT,
intermediate-state projections, data forms and bad input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors import safe_open

from dist_distill_worker import TEXTS, build_trainer, make_student, run
from hf_minitron import DistillationConfig, DistillationTrainer
from hf_minitron.testing import tiny_model, tiny_tokenizer
from test_kd_losses import reference_loss

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4,
                  report_to=[], logging_steps=1, save_strategy="no", max_length=48,
                  learning_rate=1e-2, use_cpu=True, disable_tqdm=True)
    values.update(overrides)
    return DistillationConfig(**values)


def _text_dataset(n=8):
    return Dataset.from_dict({"text": [TEXTS[i % len(TEXTS)] + f" #{i}" for i in range(n)]})


def _trainer(tmp_path, student=None, teacher=None, dataset=None, tok=None, teacher_tok=None, **overrides):
    tok = tok or tiny_tokenizer()
    return DistillationTrainer(
        student if student is not None else tiny_model("llama", seed=1).train(),
        args=_config(tmp_path, **overrides), train_dataset=dataset if dataset is not None else _text_dataset(),
        processing_class=tok, teacher_model=teacher if teacher is not None else tiny_model("llama", seed=0),
        teacher_processing_class=teacher_tok or tok,
    )


def _first_batch(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    return {k: v.to(trainer.args.device) if torch.is_tensor(v) else v for k, v in batch.items()}


@pytest.mark.parametrize("kind,temperature,ce_weight", [("forward_kl", 1.0, 0.0), ("reverse_kl", 2.0, 0.5),
                                                        ("jsd", 0.5, 0.0)])
def test_loss_equals_independent_reference(tmp_path, kind, temperature, ce_weight):
    trainer = _trainer(tmp_path, kd_loss=kind, temperature=temperature, ce_weight=ce_weight, jsd_beta=0.25,
                       kd_chunk_size=5)
    batch = _first_batch(trainer)
    labels = batch["labels"]
    assert (labels == -100).any(), "the batch should contain padding so that ignored positions are exercised"
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch)).item()
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        s_logits = trainer.model(**inputs).logits[:, :-1]
        t_logits = trainer.teacher_model(**inputs).logits[:, :-1]
    targets = labels[:, 1:]
    mask = targets != -100
    expected = reference_loss(s_logits, t_logits, mask, kind, temperature, 0.25, targets, ce_weight) / mask.sum()
    assert loss == pytest.approx(expected.item(), rel=1e-5)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    big, big_losses = run(tmp_path / "a", per_device_batch=8, grad_accum=1)
    small, small_losses = run(tmp_path / "b", per_device_batch=2, grad_accum=4)
    init = make_student().state_dict()
    moved = max((big[k] - init[k]).abs().max().item() for k in init)
    assert moved > 1e-2, "the step must move the weights for the comparison to mean anything"
    assert any(k.startswith("distill_projections.") for k in big), "the projections are part of the comparison"
    for k in big:
        assert torch.allclose(big[k], small[k], atol=1e-6, rtol=0), k
    assert big_losses == pytest.approx(small_losses, rel=1e-6)


def test_two_processes_match_one_process(tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests")}
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(REPO / "tests" / "dist_distill_worker.py"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "losses.json").read_text())
    assert record["world_size"] == 2
    ddp_state = torch.load(out / "student.pt")
    single_state, single_losses = run(tmp_path / "single", per_device_batch=8)
    assert record["losses"] == pytest.approx(single_losses, rel=1e-5)
    assert set(ddp_state) == set(single_state) and any("distill_projections" in k for k in ddp_state)
    for k in single_state:
        assert torch.allclose(ddp_state[k], single_state[k], atol=1e-6, rtol=0), k


def test_teacher_frozen_never_saved_and_student_saved_cleanly(tmp_path):
    from hf_minitron import load_causal_lm

    teacher = tiny_model("llama", seed=0)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = _trainer(tmp_path, teacher=teacher, save_strategy="steps", save_steps=2)
    trainer.train()
    assert all(not p.requires_grad for p in trainer.teacher_model.parameters())
    assert not trainer.teacher_model.training
    for k, v in trainer.teacher_model.state_dict().items():
        assert torch.equal(v, teacher_before[k])
    ckpt = tmp_path / "run" / "checkpoint-2"
    with safe_open(str(ckpt / "model.safetensors"), "pt") as fh:
        saved = set(fh.keys())
    assert saved <= set(trainer.model.state_dict()) and len(saved) >= len(trainer.model.state_dict()) - 1  # tied
    path = trainer.save_student(tmp_path / "student")
    reloaded, _ = load_causal_lm(path)
    ids = torch.randint(0, 259, (1, 9))
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, trainer.model.eval()(ids).logits, atol=1e-5)


def test_intermediate_projection_trained_synced_and_not_saved(tmp_path):
    student = tiny_model("llama", seed=1, hidden_size=32, head_dim=8, intermediate_size=64, num_hidden_layers=2).train()
    trainer = _trainer(tmp_path, student=student, intermediate_layer_map="1:2,2:4", intermediate_loss="cosine",
                       intermediate_weight=0.5, max_steps=2)
    proj = trainer.projections
    assert proj is not None and set(proj.maps) == {"1", "2"}
    assert proj.maps["1"].weight.shape == (64, 32)
    before = {k: v.clone() for k, v in proj.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in proj.state_dict().items()), "projection must be trained"
    logs = [h for h in trainer.state.log_history if "kd_loss" in h]
    # balancing: weight = 0.5 * logit loss / intermediate loss, so the weighted term is half the logit loss
    for h in logs:
        assert h["intermediate_weight"] == pytest.approx(0.5 * h["kd_loss"] / h["intermediate_loss"], rel=1e-4)
        assert h["loss"] == pytest.approx(1.5 * h["kd_loss"], rel=1e-4)
    trainer.save_model(str(tmp_path / "ckpt"))
    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt") as fh:
        assert not [k for k in fh.keys() if "distill_projections" in k]
    path = trainer.save_student(tmp_path / "student")
    with safe_open(str(Path(path) / "model.safetensors"), "pt") as fh:
        assert not [k for k in fh.keys() if "distill_projections" in k]
    assert hasattr(trainer.model, "distill_projections")  # still attached for further training


def test_peft_lora_student(tmp_path):
    from peft import LoraConfig

    from hf_minitron import load_causal_lm

    student = tiny_model("llama", seed=1)
    base = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = DistillationTrainer(
        student, args=_config(tmp_path, learning_rate=5e-2), train_dataset=_text_dataset(),
        processing_class=tiny_tokenizer(), teacher_model=tiny_model("llama", seed=0),
        teacher_processing_class=tiny_tokenizer(),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )
    trainer.train()
    losses = [h["kd_loss"] for h in trainer.state.log_history if "kd_loss" in h]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().max() > 0 for p in lora_b), "LoRA B starts at zero and must have been trained"
    saved, _ = load_causal_lm(trainer.save_student(tmp_path / "merged"))  # adapters merged on a copy
    assert any("lora" in n for n, _ in trainer.model.named_parameters()), "the trainer's model keeps its adapters"
    merged = trainer.model.merge_and_unload()
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, base[k])]
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)
    saved_state = saved.state_dict()
    for k, v in merged.state_dict().items():
        assert torch.allclose(saved_state[k], v, atol=1e-6), k


def test_chat_and_packed_text_data(tmp_path):
    chat = Dataset.from_dict({"messages": [
        [{"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": "answer " * (i + 1)}]
        for i in range(6)
    ]})
    trainer = _trainer(tmp_path / "chat", dataset=chat, max_steps=1, assistant_only_loss=False)
    first = trainer.train_dataset[0]
    assert first["input_ids"][0] == trainer.processing_class.convert_tokens_to_ids("<|im_start|>")
    trainer.train()
    packed = _trainer(tmp_path / "packed", dataset=_text_dataset(12), max_steps=1, packing=True,
                      packing_strategy="wrapped", max_length=16)
    assert all(len(ids) == 16 for ids in packed.train_dataset["input_ids"][:-1])
    packed.train()
    for t in (trainer, packed):
        kd = [h["kd_loss"] for h in t.state.log_history if "kd_loss" in h]
        assert kd and kd[0] > 0


# --- bad input: clear errors before training -------------------------------------------------------------------

def test_mismatched_tokenizers_refused_with_names_and_sizes(tmp_path):
    tok = tiny_tokenizer()
    other = tiny_tokenizer()
    other.add_tokens(["<tool>"])
    other.name_or_path = "other/tokenizer"
    with pytest.raises(ValueError, match=r"'hf-minitron/tiny-byte-tokenizer' \(259 tokens\).*'other/tokenizer' "
                                         r"\(260 tokens\)"):
        _trainer(tmp_path, tok=tok, teacher_tok=other)


def test_vocab_size_mismatch_needs_opt_in(tmp_path):
    padded_teacher = tiny_model("llama", seed=0, vocab_size=272)  # the tokenizer's 259 tokens + 13 padding rows
    with pytest.raises(ValueError, match="truncate_vocab"):
        _trainer(tmp_path, teacher=padded_teacher)
    small_teacher = tiny_model("llama", seed=0, vocab_size=200)
    with pytest.raises(ValueError, match="teacher's vocabulary is smaller"):
        _trainer(tmp_path, teacher=small_teacher)
    with pytest.raises(ValueError, match="real tokens"):
        _trainer(tmp_path, teacher=small_teacher, truncate_vocab=True)
    # with the opt-in, the loss is the divergence over the shared 259 rows
    trainer = _trainer(tmp_path, teacher=padded_teacher, truncate_vocab=True)
    batch = _first_batch(trainer)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch)).item()
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        s_logits = trainer.model(**inputs).logits[:, :-1]
        t_logits = trainer.teacher_model(**inputs).logits[:, :-1, :259]
    mask = batch["labels"][:, 1:] != -100
    assert loss == pytest.approx((reference_loss(s_logits, t_logits, mask, "forward_kl", 1.0) / mask.sum()).item(),
                                 rel=1e-5)


def test_not_a_causal_lm_and_softcap_mismatch_refused(tmp_path):
    from transformers import AutoModel

    backbone = AutoModel.from_config(tiny_model("llama").config)
    with pytest.raises(ValueError, match="student is a LlamaModel, not a causal language model"):
        _trainer(tmp_path, student=backbone)
    with pytest.raises(ValueError, match="teacher is a LlamaModel"):
        _trainer(tmp_path, teacher=backbone)
    capped_teacher = tiny_model("gemma2", seed=0)  # final_logit_softcapping=30
    with pytest.raises(ValueError, match="soft-capping differs: student final_logit_softcapping=None, teacher 30"):
        _trainer(tmp_path, teacher=capped_teacher)
    # both capped the same way: accepted
    _trainer(tmp_path, student=tiny_model("gemma2", seed=1), teacher=capped_teacher)


def test_config_validation():
    for kwargs, match in [(dict(kd_loss="kl"), "kd_loss"), (dict(temperature=0.0), "temperature"),
                          (dict(kd_loss="jsd", jsd_beta=1.0), "jsd_beta"), (dict(ce_weight=-1.0), "ce_weight"),
                          (dict(intermediate_loss="l1"), "intermediate_loss"), (dict(teacher_dtype="int8"), "teacher_dtype")]:
        with pytest.raises(ValueError, match=match):
            DistillationConfig(output_dir="x", use_cpu=True, **kwargs)
    assert DistillationConfig(output_dir="x", use_cpu=True).bf16 is False  # no GPU here: bf16 must not default on


def test_missing_teacher_refused(tmp_path):
    with pytest.raises(ValueError, match="teacher_model is required"):
        DistillationTrainer(tiny_model("llama"), args=_config(tmp_path), train_dataset=_text_dataset(),
                            processing_class=tiny_tokenizer())


def test_eval_loss_is_the_students_cross_entropy_and_the_objective_has_its_own_name(tmp_path):
    """eval_loss is what every script reads as held-out loss: the student's next-token cross-entropy, checked against
    torch's cross_entropy on the same batch; the distillation objective is eval_distill_loss and equals the loss of a
    training step on the same batch (same weights)."""
    trainer = build_trainer(tmp_path, per_device_batch=8, per_device_eval_batch_size=8)
    metrics = trainer.evaluate(Dataset.from_dict({"text": TEXTS}))
    batch = _first_batch(trainer)
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).double(), batch["labels"][:, 1:].flatten(),
                                           ignore_index=-100)
    assert metrics["eval_loss"] == pytest.approx(ce.item(), rel=1e-5)
    assert metrics["eval_ce_loss"] == metrics["eval_loss"]
    trainer.train()
    step = [h for h in trainer.state.log_history if "loss" in h][0]
    assert metrics["eval_distill_loss"] == pytest.approx(step["loss"], rel=1e-5)
    assert metrics["eval_kd_loss"] == pytest.approx(step["kd_loss"], rel=1e-5)
    assert metrics["eval_ce_loss"] == pytest.approx(step["ce_loss"], rel=1e-5)
    assert metrics["eval_distill_loss"] != pytest.approx(metrics["eval_loss"], rel=1e-2)


def test_defaults_are_training_arguments_defaults_on_this_machine():
    """Swapping TrainingArguments for DistillationConfig changes no default here (no bf16 GPU; on one, bf16 turns
    on): the README's table lists every field where SFTConfig differs and what DistillationConfig does instead."""
    import warnings

    from transformers import TrainingArguments

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated gradient_checkpointing default either
        ours = DistillationConfig(output_dir="x", use_cpu=True).to_dict()
    theirs = TrainingArguments(output_dir="x", use_cpu=True).to_dict()
    assert {k: (v, ours[k]) for k, v in theirs.items() if ours[k] != v} == {}
    assert ours["max_length"] is None  # resolved per dataset (test below)


def test_tokenized_rows_keep_their_length_and_attention_mask(tmp_path):
    long = [3 + i % 200 for i in range(1100)]
    blocks = _trainer(tmp_path / "blocks", dataset=Dataset.from_dict({"input_ids": [long, long[:900]]}),
                      max_length=None)
    assert [len(r) for r in blocks.train_dataset["input_ids"]] == [1100, 900]  # already grouped: never cut
    text = _trainer(tmp_path / "text", dataset=Dataset.from_dict({"text": ["ab" * 700]}), max_length=None)
    assert len(text.train_dataset[0]["input_ids"]) == 1024  # text: SFTConfig's 1024

    # right- and left-padded rows with their own attention_mask (no labels: built from input_ids)
    rows = [[5 + (7 * i + j) % 90 for j in range(12)] for i in range(4)]
    masks = [[1] * 12, [1] * 7 + [0] * 5, [0] * 3 + [1] * 9, [1] * 10 + [0] * 2]
    trainer = _trainer(tmp_path / "masked", dataset=Dataset.from_dict({"input_ids": rows, "attention_mask": masks}),
                       max_length=None)
    batch = _first_batch(trainer)
    order = [rows.index(r) for r in batch["input_ids"].tolist()]
    expected_mask = torch.tensor([masks[i] for i in order])
    assert torch.equal(batch["attention_mask"].cpu(), expected_mask)
    assert bool((batch["labels"][expected_mask == 0] == -100).all())
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch)).item()
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        s_logits = trainer.model(**inputs).logits[:, :-1]
        t_logits = trainer.teacher_model(**inputs).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    assert loss == pytest.approx((reference_loss(s_logits, t_logits, mask, "forward_kl", 1.0) / mask.sum()).item(),
                                 rel=1e-5)


@pytest.mark.parametrize("bf16", [False, True])
def test_online_teacher_runs_under_the_runs_mixed_precision(tmp_path, bf16):
    """bf16=True autocasts the student (accelerate wraps the prepared model) and must autocast the online teacher
    too: an fp32 teacher left in fp32 costs twice the time of the student's bf16 matmuls on CPU."""
    trainer = _trainer(tmp_path, bf16=bf16)
    seen = []
    hook = trainer.teacher_model.lm_head.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    batch = _first_batch(trainer)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch)).item()
    hook.remove()
    assert seen == [torch.bfloat16 if bf16 else torch.float32]
    assert next(trainer.teacher_model.parameters()).dtype == torch.float32, "the weights stay as loaded"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        s_logits = trainer.model(**inputs).logits[:, :-1].float()
        t_logits = trainer.teacher_model(**inputs).logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    expected = reference_loss(s_logits, t_logits, mask, "forward_kl", 1.0, 0.5, targets, 0.0) / mask.sum()
    assert loss == pytest.approx(expected.item(), rel=1e-3)
