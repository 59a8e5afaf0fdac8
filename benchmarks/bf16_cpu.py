"""bf16 autocast for distillation on CPU: fp32 vs bf16 (student only, the old behaviour) vs bf16 (student and teacher).

    .venv/bin/python benchmarks/bf16_cpu.py              # SmolLM2-135M-sized teacher, 53M student, 4 x 256 tokens

Random weights of the SmolLM2-135M shape (teacher: hidden 576, ffn 1536, 9/3 heads, 30 layers, vocab 49152) and of
the table's width student (ffn 512), so nothing is loaded. Each mode runs ``DistillationTrainer`` (online forward
KL) for ``--steps`` optimizer steps after ``--warmup`` steps, in this one process, one mode after the other; prints
seconds per step and the ratios. "bf16, teacher fp32" patches the online teacher's autocast away (what ``bf16=True``
did before the teacher followed the run's autocast). On a CPU without AVX512-BF16/AMX, bf16 is emulated and slower.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def models(seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                 head_dim=64, tie_word_embeddings=True, max_position_embeddings=2048)
    torch.manual_seed(seed)
    teacher = LlamaForCausalLM(LlamaConfig(**shape, intermediate_size=1536)).eval()
    student = LlamaForCausalLM(LlamaConfig(**shape, intermediate_size=512))
    return teacher, student


def step_timer():
    """A TrainerCallback whose ``times`` holds the wall time of every optimizer step."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._t = [], None

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self._t)

    return StepTimer()


def seconds_per_step(mode: str, args) -> float:
    import datasets
    import torch

    from hf_minitron.distill import DistillationConfig, DistillationTrainer
    from hf_minitron.testing import tiny_tokenizer

    teacher, student = models()
    ids = torch.randint(0, 49152, (args.batch * (args.warmup + args.steps), args.seq), generator=torch.Generator()
                        .manual_seed(0))
    train = datasets.Dataset.from_dict({"input_ids": ids.tolist()})
    with tempfile.TemporaryDirectory() as tmp:
        config = DistillationConfig(output_dir=tmp, use_cpu=True, bf16=mode != "fp32",
                                    max_steps=args.warmup + args.steps,
                                    per_device_train_batch_size=args.batch, max_length=args.seq, report_to=[],
                                    save_strategy="no", disable_tqdm=True, logging_steps=1000,
                                    activation_checkpointing=False)
        trainer = DistillationTrainer(student, args=config, train_dataset=train, teacher_model=teacher,
                                      processing_class=tiny_tokenizer(), teacher_processing_class=tiny_tokenizer())
        if mode == "bf16, teacher fp32":
            trainer.teacher_source.autocast = contextlib.nullcontext  # the teacher's forward outside autocast
        timer = step_timer()
        trainer.add_callback(timer)
        trainer.train()
    return sum(timer.times[args.warmup:]) / args.steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    for name in ("steps", "batch", "seq"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = {mode: seconds_per_step(mode, args) for mode in ("fp32", "bf16, teacher fp32", "bf16")}
    tokens = args.batch * args.seq
    print(f"\n{torch.get_num_threads()} torch threads, {args.batch} x {args.seq} tokens per step, {args.steps} "
          "timed steps")
    print("| mode | s/step | tokens/s | speed-up vs fp32 |\n|---|---:|---:|---:|")
    for mode, s in rows.items():
        print(f"| {mode} | {s:.2f} | {tokens / s:.0f} | {rows['fp32'] / s:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
