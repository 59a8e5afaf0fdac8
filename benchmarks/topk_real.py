"""Real-model check: offline top-k KL from a teacher cache vs online full-vocabulary forward KL, same tokens.

    .venv/bin/python benchmarks/topk_real.py                       # 40 steps of 4 x 256 tokens, k=64, sampled + bucket
    .venv/bin/python benchmarks/topk_real.py --drop-by block_influence --tails sampled,bucket,renormalize
    .venv/bin/python benchmarks/topk_real.py --tails sampled --exact-head 0     # plain random-sampling KD

Teacher: SmolLM2-135M-Instruct (the embedded GGUF). Student: the teacher depth-pruned to 15 layers, either layers
14..28 dropped (``--drop-by contiguous``, default: the Minitron choice of a contiguous block before the last layer, a
badly broken start) or the 15 layers the library's default Block Influence score drops (``--drop-by block_influence``,
scored on c4_calib.jsonl). Data: ../shared/data/wiki_train.txt, the last 10% of the articles held out. Every run sees
the same token blocks in the same order (same seed) with the optimiser settings of benchmarks/distill_real.py (AdamW,
lr 3e-4, 2 warm-up steps, then constant); each offline run trains from a cache written first with
``write_teacher_cache`` (what ``hf-minitron cache-teacher`` runs) with no teacher in memory. ``sampled`` caches keep
the teacher's top ``--exact-head`` ids (default k // 2) and draw the rest. Prints held-out perplexities, the relative
gap of each offline run (target: within 2% of online), cache bytes per token and wall times.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from pathlib import Path

from _real_setup import DROP_CHOICES, real_check_setup


def _config(out, args, **kw):
    from hf_minitron.distill import DistillationConfig

    return DistillationConfig(
        output_dir=str(out), use_cpu=True, bf16=False, per_device_train_batch_size=args.batch, max_steps=args.steps,
        learning_rate=args.lr, lr_scheduler_type="constant_with_warmup", warmup_steps=args.warmup, weight_decay=0.0,
        logging_steps=max(1, args.steps // 8), report_to=[], save_strategy="no", gradient_checkpointing=False,
        max_length=args.seq, seed=args.seed, dataloader_num_workers=0, disable_tqdm=True, **kw)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--tails", default="sampled,bucket", help="comma-separated offline tails to run: bucket,renormalize,sampled")
    p.add_argument("--drop-by", default="contiguous", choices=DROP_CHOICES,
                   help="which 15 layers to drop: contiguous = 14..28; block_influence = the library's default")
    p.add_argument("--exact-head", type=int, default=None,
                   help="sampled tail: ids kept exactly before sampling the rest (default k // 2; 0 = plain sampling)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--held-out-blocks", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="seed of the data order, of the trainers and of the cache's draws")
    p.add_argument("--keep", default=None, help="directory to keep the cache in (default: a temporary one)")
    args = p.parse_args(argv)
    tails = [t for t in args.tails.split(",") if t]
    bad = [t for t in tails if t not in ("bucket", "renormalize", "sampled")]
    if bad or not tails:
        p.error(f"--tails {args.tails!r}: choose from bucket, renormalize, sampled")

    import datasets

    from hf_minitron.distill import DistillationTrainer
    from hf_minitron.evaluation import perplexity
    from hf_minitron.distill.teacher_cache import TeacherCache, write_teacher_cache

    check = real_check_setup(args, args.drop_by)
    if check is None:
        return 2
    teacher, tok, train, held, student0 = check.teacher, check.tokenizer, check.train, check.held, check.student
    n_train = args.steps * args.batch

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # online: the teacher in memory, full-vocabulary forward KL
        student = copy.deepcopy(student0).train()
        ds = datasets.Dataset.from_dict({"input_ids": train.tolist()})
        t = time.perf_counter()
        DistillationTrainer(student, args=_config(tmp / "online", args, kd_loss="forward_kl"), train_dataset=ds,
                            processing_class=tok, teacher_model=teacher, teacher_processing_class=tok).train()
        results["online forward_kl"] = (perplexity(student.eval(), held), time.perf_counter() - t)
        print(f"online done: ppl {results['online forward_kl'][0]:.3f}", flush=True)

        # offline: cache the teacher once per cache kind, then train with no teacher in memory
        caches = {}
        for tail in tails:
            kind = "sampled" if tail == "sampled" else "topk"
            if kind not in caches:
                cache_dir = (Path(args.keep) if args.keep else tmp) / f"cache-{kind}"
                t = time.perf_counter()
                write_teacher_cache(teacher, tok, train, cache_dir, top_k=args.k, batch_size=4, shard_size=32,
                                    kind=kind, teacher_source="default", seed=args.seed,
                                    exact_head=args.exact_head if kind == "sampled" else None)
                caches[kind] = (TeacherCache(cache_dir), time.perf_counter() - t)
            cache, _ = caches[kind]
            student = copy.deepcopy(student0).train()
            t = time.perf_counter()
            DistillationTrainer(student, args=_config(tmp / f"offline-{tail}", args, kd_loss="topk_kl", topk_tail=tail,
                                                      teacher_cache=str(cache.path)),
                                processing_class=tok).train()
            results[f"offline topk_kl k={args.k} {tail}"] = (perplexity(student.eval(), held), time.perf_counter() - t)
            print(f"offline {tail} done: ppl {results[f'offline topk_kl k={args.k} {tail}'][0]:.3f}", flush=True)

    online = results["online forward_kl"][0]
    print(f"\nheld-out perplexity ({held.shape[0]} x {args.seq} tokens of wiki_train.txt, last 10% of articles)")
    print(f"  teacher (30 layers)                 {check.ppl_teacher:9.3f}")
    print(f"  student before distillation         {check.ppl_student:9.3f}")
    for name, (ppl, secs) in results.items():
        print(f"  {name:<36}{ppl:9.3f}   train {secs:6.0f}s")
    ok = True
    for tail in tails:
        offline = results[f"offline topk_kl k={args.k} {tail}"][0]
        gap = offline / online - 1.0
        ok &= math.isfinite(offline)
        print(f"{tail}: offline / online - 1 = {gap:+.2%} (target: within 2%)  -> "
              f"{'PASS' if abs(gap) <= 0.02 else 'FAIL'}")
    for kind, (cache, secs) in caches.items():
        print(f"cache ({kind}): {len(cache)} sequences, k={args.k}, {cache.bytes_per_token:.1f} bytes/token, written in "
              f"{secs:.0f}s ({n_train * args.seq / secs:.0f} tokens/s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
