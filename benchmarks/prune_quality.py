"""Perplexity after pruning SmolLM2-135M-Instruct, before any recovery training: the library's depth criteria side
by side with an independent ShortGPT Block Influence, and width pruning.

    python benchmarks/prune_quality.py [--model DIR] [--num-samples 64] [--seq-len 512] [--loss-num-samples 8]
                                       [--eval-blocks 8] [--eval-len 1024] [--drop 15] [--threads 1]

Calibration: the first ``--num-samples`` documents of ``../shared/data/c4_calib.jsonl``, each truncated at
``--seq-len`` tokens (the library's default ``packing=False``); the LM-loss and contiguous-block criteria use the
first ``--loss-num-samples`` of them. ``block_influence, packed`` scores the same texts as EOS-joined blocks of
``--seq-len`` tokens (``packing=True``, the library's earlier default). The independent reference is Block Influence
as ShortGPT describes it, written here without the library: each document alone, ``output_hidden_states=True``, per
layer ``1 - cos(h_i, h_{i+1})`` averaged over the document's tokens, then over the documents. Evaluation: held-out
perplexity on ``--eval-blocks`` windows of ``--eval-len`` tokens of the last 10% of the articles of
``../shared/data/wiki_train.txt``. Width rows: the MLP pruned to the depth-pruned parameter count, and halved, from
the document scores and from the packed ones.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch

from hf_minitron.arch import count_parameters, get_adapter
from hf_minitron.data import load_texts, split_held_out, token_blocks
from hf_minitron.evaluation import perplexity
from hf_minitron.importance import estimate_importance
from hf_minitron.loading import load_causal_lm
from hf_minitron.pruning import DEPTH_PREFERENCE, prune_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@torch.no_grad()
def shortgpt_block_influence(model, tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    """ShortGPT's Block Influence from ``output_hidden_states``, one document at a time (not packed, no padding).
    HF applies the final norm to the last hidden state, so the last layer's value compares its input with the normed
    output (as a plain ShortGPT script does); the last layer ranks as most important either way."""
    per_doc = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :seq_len]
        hs = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
        per_doc.append(torch.stack([1 - torch.cosine_similarity(a[0].double(), b[0].double(), dim=-1).mean()
                                    for a, b in zip(hs, hs[1:])]))
    return torch.stack(per_doc).mean(0)


def lowest(values: torch.Tensor, n: int) -> list[int]:
    return sorted(int(i) for i in torch.argsort(values, stable=True)[:n])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model dir / Hub id / .gguf (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--calib", default=str(SHARED / "c4_calib.jsonl"))
    p.add_argument("--eval", default=str(SHARED / "wiki_train.txt"))
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--loss-num-samples", type=int, default=8)
    p.add_argument("--eval-blocks", type=int, default=8)
    p.add_argument("--eval-len", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--drop", type=int, default=15)
    p.add_argument("--skip-packed", action="store_true", help="leave out the packed Block Influence row")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    model, tok = load_causal_lm(args.model)
    model.eval()
    texts = load_texts(args.calib)[: args.num_samples]
    _, held_out = split_held_out(load_texts(args.eval), 0.1)
    eval_blocks = token_blocks(held_out, tok, args.eval_len, args.eval_blocks)
    ppl = lambda m: perplexity(m, eval_blocks, 1)  # noqa: E731

    reference = shortgpt_block_influence(model, tok, texts, args.seq_len)
    scores = estimate_importance(model, texts, tokenizer=tok, seq_len=args.seq_len, num_samples=args.num_samples,
                                 batch_size=args.batch_size, depth_criteria=("block_influence", "lm_loss"),
                                 block_sizes=(args.drop,), loss_num_samples=args.loss_num_samples, progress=True)
    drops = {"reference: ShortGPT Block Influence (independent)": lowest(reference, args.drop)}
    default = next(c for c in DEPTH_PREFERENCE if c in scores.available_depth_criteria(args.drop))
    for criterion in ("block_influence", "lm_loss", "block"):
        label = f"`{criterion}`" + (" (default)" if criterion == default else "")
        drops[label] = scores.layers_to_drop(args.drop, criterion)
    if not args.skip_packed:
        packed = estimate_importance(model, texts, tokenizer=tok, seq_len=args.seq_len, num_samples=args.num_samples,
                                     batch_size=args.batch_size, packing=True, progress=True)
        drops["`block_influence`, packed blocks"] = packed.layers_to_drop(args.drop, "block_influence")
    bi = scores.depth["block_influence"].double()
    print("Block Influence per layer, library (documents) vs reference, max |diff| over layers 0..L-2: "
          f"{float((bi[:-1] - reference[:-1]).abs().max()):.2e}")

    L = get_adapter(model).num_layers
    teacher_ppl = ppl(model)
    rows, ref_ppl, depth_params = [("teacher", "-", L, count_parameters(model)[0], teacher_ppl, None)], None, None
    for label, dropped in drops.items():
        pruned = prune_model(model, {"drop_layers": dropped})
        depth_params, value = count_parameters(pruned)[0], ppl(pruned)
        ref_ppl = value if ref_ppl is None else ref_ppl
        rows.append((f"depth: {label}", _ranges(dropped), L - args.drop, depth_params, value, value / ref_ppl))
        del pruned
    s = get_adapter(model).sizes()
    per_neuron = 3 * s.hidden_size * L  # gate + up rows and a down column in every layer
    same = s.intermediate_size - round((count_parameters(model)[0] - depth_params) / per_neuron)
    width_scores = {"documents": scores} if args.skip_packed else {"documents": scores, "packed blocks": packed}
    for ffn in (same, s.intermediate_size // 2):
        for calibration, sc in width_scores.items():
            pruned = prune_model(model, {"intermediate_size": ffn}, sc)
            value = ppl(pruned)
            rows.append((f"width: MLP, {calibration}", f"intermediate_size {s.intermediate_size} -> {ffn}", L,
                         count_parameters(pruned)[0], value, value / ref_ppl))

    print(f"\ncalibration: first {len(texts)} c4_calib documents, each cut at {args.seq_len} tokens (LM-loss/block "
          f"criteria: first {args.loss_num_samples}); eval: {eval_blocks.shape[0]} x {args.eval_len} held-out "
          f"wiki_train tokens; torch threads {torch.get_num_threads()}; {time.perf_counter() - t0:.0f} s in all")
    print("| model | pruning | layers | parameters | held-out ppl | vs reference |\n|---|---|---|---|---|---|")
    for label, what, layers, params, value, ratio in rows:
        vs = "-" if ratio is None else f"{ratio:.2f}x"
        print(f"| {label} | {what} | {layers} | {params / 1e6:.1f}M | {value:.1f} | {vs} |")


def _ranges(layers: list[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``drop 3-5, 9``."""
    parts, start = [], None
    for i, layer in enumerate(layers):
        if start is None:
            start = layer
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            parts.append(str(start) if start == layer else f"{start}-{layer}")
            start = None
    return "drop " + ", ".join(parts)


if __name__ == "__main__":
    main()
