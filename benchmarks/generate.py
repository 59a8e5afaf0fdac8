"""Tokens/s of ``generate-data``'s batched generation vs a plain ``model.generate`` loop, one prompt at a time.

    python benchmarks/generate.py [--model DIR] [--prompts 16] [--max-new-tokens 64] [--batch-size 16]
                                  [--temperature 0] [--threads 1]

Same model, same prompts (the first ``--prompts`` built-in prompts through the chat template), same settings, in one
run: (a) the loop calls ``model.generate`` on each prompt alone (KV cache, no padding), (b) the stage's
:func:`hf_minitron.generate.generate_records` answers them in left-padded, length-sorted batches of
``--batch-size``. Prints new tokens, seconds and tokens/s of each and the ratio (b)/(a); with ``--temperature 0``
(greedy, the default) also how many answers are token-for-token identical.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch

from hf_minitron.generate import (GenerationSettings, _eos_ids, _pad_id, encode_prompts, generate_batch,
                                  generate_records, load_prompts)
from hf_minitron.loading import load_causal_lm


@torch.inference_mode()
def one_at_a_time(model, prompt_ids, settings, eos_ids, pad_id):
    """The plain loop: ``model.generate`` on each prompt alone (its own sampling when ``temperature > 0``); the
    answer's token ids up to the first end-of-sequence token."""
    torch.manual_seed(settings.seed)
    sampling = dict(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=0) \
        if settings.do_sample else dict(do_sample=False)
    answers = []
    for ids in prompt_ids:
        x = torch.tensor([ids], device=model.device)
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=settings.max_new_tokens,
                             eos_token_id=eos_ids, pad_token_id=pad_id, **sampling)[0, x.shape[1]:].tolist()
        answers.append(next((out[:j] for j, t in enumerate(out) if t in eos_ids), out))
    return answers


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model dir / Hub id / .gguf (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--prompts", type=int, default=16, help="first N built-in prompts")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: fair on a busy machine)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    model, tokenizer = load_causal_lm(args.model, device=args.device)
    model.eval()
    prompts = load_prompts("builtin", limit=args.prompts)
    settings = GenerationSettings(model=str(args.model or "default"), dtype="float32",
                                  max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_p=args.top_p, seed=0, use_chat_template=True, prompts="builtin",
                                  num_prompts=len(prompts), prompts_fingerprint="")
    prompt_ids = encode_prompts(tokenizer, prompts)
    eos_ids, pad_id = _eos_ids(model, tokenizer), _pad_id(tokenizer, _eos_ids(model, tokenizer))
    generate_batch(model, [prompt_ids[0]], [0], settings, eos_ids=eos_ids, pad_id=pad_id)  # warm-up
    one_at_a_time(model, prompt_ids[:1], settings, eos_ids, pad_id)

    t0 = time.perf_counter()
    loop = one_at_a_time(model, prompt_ids, settings, eos_ids, pad_id)
    t_loop = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = {}
    for records in generate_records(model, tokenizer, prompts, settings, prompt_ids=prompt_ids,
                                    batch_size=args.batch_size):
        batched.update({r["index"]: r for r in records})
    t_batched = time.perf_counter() - t0

    n_loop = sum(len(a) for a in loop)
    n_batched = sum(r["new_tokens"] for r in batched.values())
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads={args.threads}, "
          f"device={args.device}; {len(prompts)} prompts, max_new_tokens={args.max_new_tokens}, "
          f"temperature={args.temperature}, batch_size={args.batch_size}")
    print(f"{'method':<28}{'new tokens':>12}{'seconds':>10}{'tokens/s':>10}")
    print(f"{'model.generate, one by one':<28}{n_loop:>12}{t_loop:>10.2f}{n_loop / t_loop:>10.1f}")
    print(f"{'generate-data, batched':<28}{n_batched:>12}{t_batched:>10.2f}{n_batched / t_batched:>10.1f}")
    print(f"ratio (batched / one by one tokens/s): {(n_batched / t_batched) / (n_loop / t_loop):.2f}x")
    if args.temperature == 0:
        same = sum(1 for i, ids in enumerate(loop)
                   if tokenizer.decode(ids, skip_special_tokens=True).strip() == batched[i]["messages"][-1]["content"])
        print(f"identical greedy answers: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
