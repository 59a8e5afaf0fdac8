"""Worker for test_generate.py: the generate-data stage on every rank (torchrun sets WORLD_SIZE; the stage joins the
process group itself); rank 0 merges the part files.

Run: python -m torch.distributed.run --nproc_per_node 2 tests/dist_generate_worker.py \
         MODEL PROMPTS OUT_DIR TEMPERATURE TOP_P SEED
"""

import json
import sys

import torch


def main(model: str, prompts: str, out_dir: str, temperature: str, top_p: str, seed: str) -> None:
    torch.set_num_threads(1)
    from hf_minitron.stages import run_stage

    result = run_stage("generate-data", dict(model=model, prompts=prompts, output_dir=out_dir, max_new_tokens=10,
                                             temperature=float(temperature), top_p=float(top_p), seed=int(seed),
                                             batch_size=2, progress=False))
    import torch.distributed as dist

    rank = dist.get_rank()
    with open(f"{out_dir}.rank{rank}.json", "w") as f:  # what each rank returned, for the test to compare
        json.dump({"world_size": dist.get_world_size(), "result": result.to_dict()}, f)


if __name__ == "__main__":
    main(*sys.argv[1:7])
