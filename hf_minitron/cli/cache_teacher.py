"""``hf-minitron cache-teacher TEACHER --data ... --top-k 64 --out CACHE``: run the teacher once, store its top-k."""

from __future__ import annotations

import argparse

COMMAND = "cache-teacher"
HELP = "Run a teacher once over the data and store its top-k next-token log-probs (offline teacher cache)."
ORDER = 35


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hf-minitron cache-teacher", description=HELP)
    p.add_argument("teacher", help="teacher: Hub id, local directory or .gguf file ('default': embedded SmolLM2)")
    p.add_argument("--data", required=True, help="text source: .txt (one document per line), .jsonl/.json, or a "
                                                 "datasets name")
    p.add_argument("--out", required=True, help="cache directory (resumed when it holds an unfinished cache)")
    p.add_argument("--top-k", type=int, default=64, help="ids stored per token (default 64)")
    p.add_argument("--max-length", type=int, default=256, help="tokens per sequence (default 256)")
    p.add_argument("--num-sequences", type=int, default=None, help="sequences to cache (default: all the data gives)")
    p.add_argument("--temperature", type=float, default=1.0, help="teacher softmax temperature (default 1.0)")
    p.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16", help="stored log-prob dtype")
    p.add_argument("--sampled", action="store_true", help="store sampled ids with unbiased weights (for "
                   "tail='sampled') instead of the top-k and the tail mass")
    p.add_argument("--exact-head", type=int, default=None, help="with --sampled: ids kept exactly (the teacher's most "
                   "likely) before the remaining k - N are drawn from the rest of the distribution (default k // 2; "
                   "0 = plain random-sampling KD)")
    p.add_argument("--no-packing", action="store_true", help="one document per sequence, padded (default: packed)")
    p.add_argument("--text-field", default="text", help="field of .json/.jsonl records holding the text")
    p.add_argument("--shard-size", type=int, default=64, help="sequences per shard (default 64)")
    p.add_argument("--batch-size", type=int, default=4, help="sequences per teacher forward (default 4)")
    p.add_argument("--teacher-dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="dtype to run the teacher in (default: float32 on CPU, bfloat16 on GPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (--sampled)")
    p.add_argument("--revision", default=None, help="Hub revision of the teacher (recorded in the manifest)")
    p.add_argument("--trust-remote-code", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("top_k", "max_length", "shard_size", "batch_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= 1")
    if not args.temperature > 0:
        raise SystemExit(f"--temperature={args.temperature}: must be > 0")
    if args.exact_head is not None and not args.sampled:
        raise SystemExit("--exact-head applies to --sampled caches only: add --sampled or drop --exact-head")
    if args.exact_head is not None and not 0 <= args.exact_head < args.top_k:
        raise SystemExit(f"--exact-head={args.exact_head}: must be in [0, --top-k={args.top_k}) so that at least one "
                         "id is sampled")

    import torch
    from accelerate import PartialState

    from ..data import load_texts
    from ..loading import load_causal_lm
    from ..teacher_cache import MANIFEST_FILE, TeacherCache, encode_texts, finalize_teacher_cache, write_teacher_cache

    texts = load_texts(args.data, text_field=args.text_field)  # bad data fails here, before the teacher loads
    state = PartialState(cpu=not torch.cuda.is_available())
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(args.teacher_dtype)
    if dtype is None:
        dtype = torch.bfloat16 if state.device.type == "cuda" else torch.float32
    source = None if args.teacher == "default" else args.teacher
    teacher, tokenizer = load_causal_lm(source, dtype=dtype, device=state.device, revision=args.revision,
                                        trust_remote_code=args.trust_remote_code)
    input_ids, mask = encode_texts(texts, tokenizer, args.max_length, packing=not args.no_packing,
                                   num_sequences=args.num_sequences)
    write_teacher_cache(teacher, tokenizer, input_ids, args.out, top_k=args.top_k, temperature=args.temperature,
                        attention_mask=mask, kind="sampled" if args.sampled else "topk", logprob_dtype=args.dtype,
                        shard_size=args.shard_size, batch_size=args.batch_size, teacher_source=args.teacher,
                        seed=args.seed, exact_head=args.exact_head, process_index=state.process_index,
                        num_processes=state.num_processes, finalize=False)
    state.wait_for_everyone()
    if state.is_main_process:
        manifest = finalize_teacher_cache(args.out)
        cache = TeacherCache(args.out)
        kind = cache.settings.kind
        if kind == "sampled":
            kind += f", exact head {cache.settings.exact_head}"
        print(f"teacher cache {args.out}: {len(cache)} sequences x {cache.settings.max_length} tokens, "
              f"k={cache.settings.top_k} ({kind}), {len(cache.shards)} shards, "
              f"{manifest['bytes'] / 2**20:.1f} MiB, {manifest['bytes_per_token']} bytes/token "
              f"(see {MANIFEST_FILE})")
    return 0
