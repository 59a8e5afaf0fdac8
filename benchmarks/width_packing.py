"""Width pruning from document vs packed-block importance scores, on the same held-out windows.

`.venv/bin/python benchmarks/width_packing.py` (SmolLM2-135M-Instruct): 64 `c4_calib` documents x 512 tokens scored
one document a sample (the default) and as packed blocks, the MLP cut to 768 and to 512 from each, perplexity on
8 x 1024 held-out windows of `wiki_train.txt` (the setting of `benchmarks/prune_quality.py`).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> int:
    if not SHARED.is_dir():
        print(f"{SHARED} is absent: this benchmark needs the workspace's shared/data folder", file=sys.stderr)
        return 1
    from hf_minitron import estimate_importance, load_causal_lm, prune_model
    from hf_minitron.data import load_texts, split_held_out, token_blocks
    from hf_minitron.evaluation import mean_nll

    model, tok = load_causal_lm()
    calib = load_texts(SHARED / "c4_calib.jsonl")[:64]
    held = split_held_out(load_texts(SHARED / "wiki_train.txt"), 0.1)[1]
    blocks = token_blocks(held, tok, 1024, 8)
    print(f"teacher: ppl {math.exp(mean_nll(model, blocks, batch_size=2)):.1f}", flush=True)
    for packing in (False, True):
        start = time.time()
        scores = estimate_importance(model, calib, tokenizer=tok, num_samples=64, seq_len=512, batch_size=4,
                                     packing=packing)
        for ffn in (768, 512):
            pruned = prune_model(model, {"intermediate_size": ffn}, scores)
            ppl = math.exp(mean_nll(pruned, blocks, batch_size=2))
            print(f"scores {'packed' if packing else 'documents'}: MLP {ffn}: ppl {ppl:.1f} "
                  f"({time.time() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
