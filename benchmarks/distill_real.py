"""Real-model check: distil SmolLM2-135M-Instruct into its 15-layer depth-pruned copy with DistillationTrainer.

    .venv/bin/python benchmarks/distill_real.py                          # 40 steps of 4 x 256 tokens, forward KL
    .venv/bin/python benchmarks/distill_real.py --intermediate auto      # + cosine hidden-state loss

Teacher: the embedded SmolLM2-135M-Instruct GGUF (``load_causal_lm()``, 30 layers). Student: the teacher with layers
14..28 dropped by ``prune_model`` (15 layers left: a contiguous block before the last layer, the Minitron depth
choice). Data: ``../shared/data/wiki_train.txt``; the last 10% of the articles are held out. Training: 40 optimizer
steps of 4 packed blocks of 256 tokens, forward KL at T=1 (the Minitron recipe), AdamW. Prints held-out perplexity
of the teacher, the student before and after, and PASS when distillation at least halves the student's perplexity.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from _real_setup import real_check_setup


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--kd-loss", default="forward_kl", choices=["forward_kl", "reverse_kl", "jsd"])
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--intermediate", default=None, help="intermediate_layer_map, e.g. 'auto' (default: logits only)")
    p.add_argument("--held-out-blocks", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", default=None, help="save the distilled student to this directory")
    args = p.parse_args(argv)

    import datasets
    import torch

    from hf_minitron.distill import DistillationConfig, DistillationTrainer
    from hf_minitron.evaluation import perplexity

    check = real_check_setup(args)
    if check is None:
        return 2
    teacher, tok, train, held = check.teacher, check.tokenizer, check.train, check.held
    student = check.student.train()
    ppl_teacher, ppl_before = check.ppl_teacher, check.ppl_student

    with tempfile.TemporaryDirectory() as tmp:
        config = DistillationConfig(
            output_dir=tmp, use_cpu=not torch.cuda.is_available(), bf16=False, per_device_train_batch_size=args.batch,
            max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type="constant_with_warmup",
            warmup_steps=args.warmup, weight_decay=0.0, logging_steps=max(1, args.steps // 8), report_to=[],
            save_strategy="no", gradient_checkpointing=False, max_length=args.seq, seed=args.seed,
            kd_loss=args.kd_loss, temperature=args.temperature, intermediate_layer_map=args.intermediate,
            disable_tqdm=True,
        )
        trainer = DistillationTrainer(student, args=config, processing_class=tok, teacher_model=teacher,
                                      teacher_processing_class=tok,
                                      train_dataset=datasets.Dataset.from_dict({"input_ids": train.tolist()}))
        t = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - t
        if args.save:
            trainer.save_student(args.save, overwrite=True)
    ppl_after = perplexity(student.eval(), held)
    ratio = ppl_before / ppl_after
    print(f"\nheld-out perplexity ({held.shape[0]} x {args.seq} tokens, last 10% of wiki_train.txt articles)")
    print(f"  teacher (30 layers)             {ppl_teacher:10.2f}")
    print(f"  student (15 layers) before      {ppl_before:10.2f}")
    print(f"  student after {args.steps} steps ({args.kd_loss}{', intermediate ' + args.intermediate if args.intermediate else ''})"
          f" {ppl_after:10.2f}")
    print(f"before / after = {ratio:.2f}x (target >= 2x) -> {'PASS' if ratio >= 2 else 'FAIL'}; "
          f"training {train_seconds:.0f}s ({train_seconds / args.steps:.1f}s/step)")
    return 0 if ratio >= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
