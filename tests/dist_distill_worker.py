"""Distillation run shared by the single-process and the 2-process (torchrun, gloo) tests.

``python -m torch.distributed.run --nproc_per_node 2 tests/dist_distill_worker.py OUT_DIR`` trains one step on a
global batch of 8 variable-length texts (4 per process) with a logit and a hidden-state loss, and writes the updated
student weights (with the hidden-state projections) and the logged loss.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402

# A narrower, shallower student than the teacher (hidden 32 vs 64, 2 vs 4 layers): the hidden-state loss needs
# learned projections, which must train and synchronise like the student's own weights.
STUDENT = dict(hidden_size=32, head_dim=8, intermediate_size=64, num_hidden_layers=2)
TEXTS = [
    "a" * 3, "the quick brown fox", "b" * 17, "jumps over the lazy dog twice",
    "hi", "distillation keeps the teacher's knowledge", "c" * 9, "z" * 30,
]


def make_student():
    from hf_minitron.testing import tiny_model

    return tiny_model("llama", seed=1, **STUDENT).train()


def build_trainer(out_dir, per_device_batch: int, grad_accum: int = 1, **config):
    from datasets import Dataset

    from hf_minitron import DistillationConfig, DistillationTrainer
    from hf_minitron.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    student = make_student()
    teacher = tiny_model("llama", seed=0)
    defaults = dict(
        output_dir=str(out_dir), max_steps=1, per_device_train_batch_size=per_device_batch,
        gradient_accumulation_steps=grad_accum, report_to=[], logging_steps=1,
        save_strategy="no", max_length=64, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0, use_cpu=True, dataloader_drop_last=False,
        temperature=2.0, ce_weight=0.3, disable_tqdm=True,
        # unbalanced (fixed weight): a per-micro-batch balancing ratio would differ between 1x8, 4x2 and 2 processes
        intermediate_layer_map="1:2,2:4", intermediate_balance=False, intermediate_weight=0.5,
    )
    defaults.update(config)
    args = DistillationConfig(**defaults)
    return DistillationTrainer(student, args=args, train_dataset=Dataset.from_dict({"text": TEXTS}),
                               processing_class=tok, teacher_model=teacher, teacher_processing_class=tok)


def run(out_dir, per_device_batch: int, grad_accum: int = 1):
    trainer = build_trainer(out_dir, per_device_batch, grad_accum)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    state = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
    return state, losses


if __name__ == "__main__":
    out = sys.argv[1]
    state, losses = run(out, per_device_batch=4)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(state, os.path.join(out, "student.pt"))
        with open(os.path.join(out, "losses.json"), "w") as fh:
            json.dump({"losses": losses, "world_size": int(os.environ.get("WORLD_SIZE", "1"))}, fh)
