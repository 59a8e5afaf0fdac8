"""Peak memory and wall time of importance scoring + pruning in memory versus streamed (hf_minitron.streaming).

    python benchmarks/streamed.py [--samples 8] [--seq-len 256] [--threads 1] [--shard-size 100MB]
                                  [--llama-layers 2 | --llama-layers 0]

Part 1, SmolLM2-135M-Instruct (the embedded teacher, dequantized once and saved as fp32 safetensors in a temporary
directory), calibration ``--samples`` packed blocks of ``--seq-len`` tokens from ``../shared/data/c4_calib.jsonl``
(skipped when absent). Each run is its own process, measured by its peak resident memory (``VmHWM``, the whole
process: interpreter, libraries and tokenizer included; also shown above the runtime, see below):

- ``memory``: ``load_causal_lm(dir)`` (fp32), ``estimate_importance``, ``prune_model(..., out_dir=)`` (the atomic
  ``save_model``, which reloads the result to check its logits);
- ``streamed``: ``estimate_importance_streamed(dir)`` (fp32, hidden states in memory), ``prune_checkpoint(dir, ...,
  max_shard_size=--shard-size)``.

"Above the runtime" is the peak minus the RSS after the imports and a warm-up (building the model weightless, which
imports the family's modeling code): the memory the model and the data take, which is what grows with the teacher.

Both prune to hidden 480, MLP 1024, 6 query / 3 KV heads, 24 layers (Block Influence). The parent then checks the two
runs' scores are equal and that the pruned checkpoints hold the same tensors, byte for byte.

Part 2, Llama-3.1-8B (the published config): the memory each path needs, computed from the config alone for the full
32 layers in bf16, and measured on a ``--llama-layers``-layer cut of it (random bf16 weights written as one shard per
layer, the embedding and LM head at full size, in a temporary directory: about 2.9 GB for 2 layers): the streamed
path holds one layer at a time, so its peak does not grow with depth. ``--llama-layers 0`` skips the measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CALIB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "c4_calib.jsonl"
GIB = float(1 << 30)
READ_BLOCK = 64 << 20  # hf_minitron.streaming.READ_BLOCK_BYTES
SMOL_TARGETS = dict(hidden_size=480, intermediate_size=1024, num_attention_heads=6, num_key_value_heads=3,
                    num_hidden_layers=24)
# config.json of meta-llama/Llama-3.1-8B as published
LLAMA31_8B = dict(architectures=["LlamaForCausalLM"], attention_bias=False, attention_dropout=0.0, bos_token_id=128000,
                  eos_token_id=128001, hidden_act="silu", hidden_size=4096, initializer_range=0.02,
                  intermediate_size=14336, max_position_embeddings=131072, mlp_bias=False, model_type="llama",
                  num_attention_heads=32, num_hidden_layers=32, num_key_value_heads=8, pretraining_tp=1,
                  rms_norm_eps=1e-05, rope_theta=500000.0, tie_word_embeddings=False, vocab_size=128256,
                  rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 8192, "rope_type": "llama3"})
LLAMA_TARGETS = dict(hidden_size=3072, intermediate_size=9216)  # the Minitron-4B-Width recipe


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


# --- child processes -----------------------------------------------------------------------------------------------
def child(args) -> dict:
    import torch

    from hf_minitron import estimate_importance, estimate_importance_streamed, prune_checkpoint, prune_model
    from hf_minitron.loading import load_causal_lm
    from hf_minitron.streaming import empty_model
    from transformers import AutoConfig

    torch.set_num_threads(args.threads)
    targets = json.loads(args.targets)
    calib = torch.load(args.calib_ids)
    empty_model(AutoConfig.from_pretrained(args.model), torch.float32)  # warm-up: the family's modeling code
    baseline = _kib("VmRSS")
    t0 = time.perf_counter()
    if args.mode == "memory":
        model, tok = load_causal_lm(args.model, dtype=args.dtype)
        t_load = time.perf_counter()
        scores = estimate_importance(model, calib, batch_size=args.batch_size)
        t_score = time.perf_counter()
        prune_model(model, targets, scores, out_dir=args.out, tokenizer=tok)
    else:
        t_load = t0
        scores = estimate_importance_streamed(args.model, calib, batch_size=args.batch_size, dtype=args.dtype,
                                              device="cpu")
        t_score = time.perf_counter()
        prune_checkpoint(args.model, targets, scores, args.out, dtype=args.dtype, max_shard_size=args.shard_size)
    t_end = time.perf_counter()
    scores.save(args.scores)
    return {"peak": _kib("VmHWM"), "baseline": baseline, "load_s": t_load - t0, "score_s": t_score - t_load,
            "prune_s": t_end - t_score, "total_s": t_end - t0}


def _run_child(mode, model, calib_ids, out, scores, targets, args, dtype="float32") -> dict:
    cmd = [sys.executable, __file__, "--child", "--mode", mode, "--model", str(model), "--calib-ids", str(calib_ids),
           "--out", str(out), "--scores", str(scores), "--targets", json.dumps(targets), "--dtype", dtype,
           "--threads", str(args.threads), "--shard-size", args.shard_size, "--batch-size", str(args.batch_size)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- comparisons ---------------------------------------------------------------------------------------------------
def _max_score_diff(a_dir: Path, b_dir: Path) -> float:
    from hf_minitron.importance import ImportanceScores

    a, b = ImportanceScores.load(a_dir), ImportanceScores.load(b_dir)
    diffs = [(getattr(a, k) - getattr(b, k)).abs().max().item() for k in ("heads", "neurons", "channels")]
    diffs += [(a.depth[k] - b.depth[k]).abs().max().item() for k in a.depth]
    return max(diffs)


def _same_tensors(a_dir: Path, b_dir: Path) -> tuple[bool, int]:
    """Whether two checkpoints hold the same tensors byte for byte (whatever their sharding), and how many."""
    import torch
    from safetensors import safe_open

    def index(d: Path) -> dict[str, Path]:
        out = {}
        for shard in sorted(d.glob("*.safetensors")):
            with safe_open(str(shard), framework="pt") as f:
                out.update({k: shard for k in f.keys()})
        return out

    ia, ib = index(a_dir), index(b_dir)
    if ia.keys() != ib.keys():
        return False, 0
    for key in ia:
        with safe_open(str(ia[key]), framework="pt") as fa, safe_open(str(ib[key]), framework="pt") as fb:
            x, y = fa.get_tensor(key), fb.get_tensor(key)
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x.reshape(-1).view(torch.uint8),
                                                                       y.reshape(-1).view(torch.uint8)):
            return False, len(ia)
    return True, len(ia)


# --- part 1: SmolLM2 -----------------------------------------------------------------------------------------------
def smollm2(args, work: Path) -> None:
    import torch

    from hf_minitron.data import load_texts, token_blocks
    from hf_minitron.loading import load_causal_lm, save_model

    if not CALIB.is_file():
        print(f"{CALIB} is absent: part 1 needs the workspace's shared/data folder; skipped")
        return
    model, tok = load_causal_lm("default")
    save_model(model, tok, work / "smollm2")
    blocks = token_blocks(load_texts(CALIB), tok, args.seq_len, args.samples)
    torch.save(blocks, work / "calib.pt")
    del model
    runs = {}
    for mode in ("memory", "streamed"):
        runs[mode] = _run_child(mode, work / "smollm2", work / "calib.pt", work / f"out-{mode}",
                                work / f"scores-{mode}", SMOL_TARGETS, args)
    diff = _max_score_diff(work / "scores-memory", work / "scores-streamed")
    same, n = _same_tensors(work / "out-memory", work / "out-streamed")
    m, s = runs["memory"], runs["streamed"]
    print(f"SmolLM2-135M-Instruct (fp32), {blocks.shape[0]} x {blocks.shape[1]} tokens, batch {args.batch_size}, "
          f"{args.threads} thread(s); prune to {SMOL_TARGETS}; streamed shards of {args.shard_size}")
    print("| path | peak RSS GiB | above the runtime GiB | load s | score s | prune + save s | total s |")
    print("|---|---|---|---|---|---|---|")
    for mode, r in runs.items():
        print(f"| {mode} | {r['peak'] / GIB:.2f} | {(r['peak'] - r['baseline']) / GIB:.2f} | {r['load_s']:.1f} | "
              f"{r['score_s']:.1f} | {r['prune_s']:.1f} | {r['total_s']:.1f} |")
    print(f"streamed / in-memory peak: {s['peak'] / m['peak']:.2f} (whole process), "
          f"{(s['peak'] - s['baseline']) / max(m['peak'] - m['baseline'], 1):.2f} (above the runtime); "
          f"max |score difference| {diff:.3g}; pruned tensors identical: {same} ({n} tensors)")


# --- part 2: Llama-3.1-8B ------------------------------------------------------------------------------------------
def llama_estimate(layers: int = 32, tokens: int = 8 * 256, batch: int = 8, seq: int = 256,
                   dtype_bytes: int = 2) -> dict:
    """Bytes each path needs for ``layers`` layers of Llama-3.1-8B (from the config; bf16 by default)."""
    import torch

    from hf_minitron.importance import scoring_memory
    from transformers import LlamaConfig

    c = LlamaConfig(**{**LLAMA31_8B, "num_hidden_layers": layers})
    H, I, V, nH, nKV, d = 4096, 14336, 128256, 32, 8, 128
    layer = dtype_bytes * (H * d * (nH + 2 * nKV) + nH * d * H + 3 * H * I + 2 * H)
    embed = dtype_bytes * V * H
    weights = layers * layer + 2 * embed + dtype_bytes * H
    dtype = torch.bfloat16 if dtype_bytes == 2 else torch.float32
    transient = scoring_memory(c, batch, seq, dtype).transient
    hidden = tokens * H * dtype_bytes
    # scoring: one layer + the batch's activations (the embedding pass reads only the rows it uses, a block at a time);
    # the hidden states throughout
    streamed_score = layer + transient + hidden + READ_BLOCK
    # pruning: the write buffer (a shard, or the pruned embedding when larger), one read block of the embedding, and
    # the largest per-layer tensor read whole with its pruned copy
    pruned_embed = dtype_bytes * V * LLAMA_TARGETS["hidden_size"]
    largest_layer_tensor = dtype_bytes * I * H
    return {"layer": layer, "embed": embed, "weights": weights, "transient": transient, "hidden": hidden,
            "memory_score": weights + transient, "streamed_score": streamed_score, "pruned_embed": pruned_embed,
            "largest_layer_tensor": largest_layer_tensor,
            "streamed_prune": lambda shard: max(shard, pruned_embed) + READ_BLOCK + 2 * largest_layer_tensor}


def _write_random_llama(path: Path, layers: int) -> None:
    """A ``layers``-layer Llama-3.1-8B in bf16 with random weights, one shard per layer (never more than one layer
    in memory), plus the published tokenizer-free config."""
    import torch
    from safetensors.torch import save_file

    from hf_minitron.streaming import empty_model
    from transformers import LlamaConfig

    config = LlamaConfig(**{**LLAMA31_8B, "num_hidden_layers": layers})
    config.dtype = "bfloat16"
    model = empty_model(config, torch.bfloat16)
    path.mkdir(parents=True)
    config.save_pretrained(path)
    groups: dict[str, list[str]] = {}
    for key in model.state_dict():
        group = ".".join(key.split(".")[:3]) if key.startswith("model.layers.") else key
        groups.setdefault(group, []).append(key)
    gen = torch.Generator().manual_seed(0)
    weight_map = {}
    state = model.state_dict()
    for n, (group, keys) in enumerate(groups.items()):
        name = f"model-{n + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for k in keys:
            shape = state[k].shape
            tensors[k] = (torch.ones(shape) if "norm" in k else torch.randn(shape, generator=gen) * 0.02).to(
                torch.bfloat16)
        save_file(tensors, str(path / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in keys})
        del tensors
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def llama(args, work: Path) -> None:
    import torch

    est = llama_estimate()
    print("\nLlama-3.1-8B (published config), bf16, calibration 8 x 256 tokens, pruned to "
          f"{LLAMA_TARGETS} (computed from the config)")
    print("| | GiB |\n|---|---|")
    print(f"| weights (all 32 layers, embedding, LM head) | {est['weights'] / GIB:.2f} |")
    print(f"| in-memory scoring: weights + a batch's activations | {est['memory_score'] / GIB:.2f} |")
    print(f"| streamed scoring: one layer {est['layer'] / GIB:.2f} + activations {est['transient'] / GIB:.2f} + "
          f"hidden states {est['hidden'] / GIB:.3f} + a 64 MiB read block | {est['streamed_score'] / GIB:.2f} |")
    for shard in ("2GB", "100MB"):
        print(f"| streamed pruning, shards of {shard}: max(shard, pruned embedding {est['pruned_embed'] / GIB:.2f}) + "
              f"read block + 2 x the largest layer tensor {est['largest_layer_tensor'] / GIB:.2f} | "
              f"{est['streamed_prune'](_shard_bytes(shard)) / GIB:.2f} |")
    if args.llama_layers <= 0:
        return
    need = llama_estimate(args.llama_layers)["weights"]
    free = shutil.disk_usage(work).free
    if free < 3 * need:
        print(f"measurement skipped: a {args.llama_layers}-layer cut needs {need / GIB:.1f} GiB on disk, "
              f"{free / GIB:.1f} GiB free")
        return
    src = work / "llama31-8b-cut"
    _write_random_llama(src, args.llama_layers)
    gen = torch.Generator().manual_seed(0)
    calib = torch.randint(0, 128256, (args.llama_samples, args.llama_seq_len), generator=gen)
    torch.save(calib, work / "llama-calib.pt")
    r = _run_child("streamed", src, work / "llama-calib.pt", work / "llama-out", work / "llama-scores",
                   {**LLAMA_TARGETS, "num_hidden_layers": args.llama_layers}, args, dtype="bfloat16")
    cut = llama_estimate(args.llama_layers, tokens=args.llama_samples * args.llama_seq_len,
                         batch=min(args.batch_size, args.llama_samples), seq=args.llama_seq_len)
    predicted = max(cut["streamed_score"], cut["streamed_prune"](_shard_bytes(args.shard_size)))
    print(f"measured on a {args.llama_layers}-layer cut (random bf16 weights, {need / GIB:.1f} GiB on disk; "
          f"{args.llama_samples} x {args.llama_seq_len} tokens; shards of {args.shard_size}): streamed peak RSS "
          f"{r['peak'] / GIB:.2f} GiB ({(r['peak'] - r['baseline']) / GIB:.2f} above the runtime; computed "
          f"{predicted / GIB:.2f}); score {r['score_s']:.0f} s, prune {r['prune_s']:.0f} s. In memory the cut alone "
          f"would need its {need / GIB:.2f} GiB of weights")


def _shard_bytes(size: str) -> int:
    from huggingface_hub.serialization._base import parse_size_to_int

    return parse_size_to_int(size)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--shard-size", default="100MB", help="max_shard_size of the streamed write (its write buffer)")
    p.add_argument("--llama-layers", type=int, default=2, help="layers of the measured Llama-3.1-8B cut (0: skip)")
    p.add_argument("--llama-samples", type=int, default=2)
    p.add_argument("--llama-seq-len", type=int, default=128)
    p.add_argument("--skip-smollm2", action="store_true")
    # child-only arguments
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--mode", "--model", "--calib-ids", "--out", "--scores", "--targets", "--dtype"):
        p.add_argument(name, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    work = Path(tempfile.mkdtemp(prefix="hf-minitron-streamed-"))
    try:
        if not args.skip_smollm2:
            smollm2(args, work)
        llama(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
