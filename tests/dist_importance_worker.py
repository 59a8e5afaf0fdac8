"""Worker for test_importance_dist.py: each rank scores its shard; rank 0 saves the reduced scores.

Run: python -m torch.distributed.run --nproc_per_node 2 tests/dist_importance_worker.py OUT_DIR
"""

import sys

import torch
import torch.distributed as dist

from hf_minitron.importance import estimate_importance
from hf_minitron.testing import TINY_VOCAB, tiny_model, tiny_tokenizer

DOCS = ["first calibration document", "a", "the second, somewhat longer, calibration document", "third",
        "fourth document of the set", "fifth " * 7, "the sixth"]


def calibration() -> torch.Tensor:
    return torch.randint(0, TINY_VOCAB, (7, 16), generator=torch.Generator().manual_seed(11))


def score(model):
    return estimate_importance(model, calibration(), batch_size=2, block_sizes=(2,), loss_num_samples=5)


def score_documents(model):
    """Texts as one sample per document (the default): rank r scores documents r, r + world, ... of the
    length-sorted set."""
    return estimate_importance(model, DOCS, tokenizer=tiny_tokenizer(), seq_len=24, batch_size=2,
                               depth_criteria=("block_influence", "lm_loss"), loss_num_samples=4)


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    scores = score(tiny_model("qwen3"))
    # every rank holds the same reduced scores
    flat = torch.cat([scores.heads.flatten(), scores.neurons.flatten(), scores.channels,
                      *scores.depth.values(), *scores.block_losses.values()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    assert all(torch.equal(g, gathered[0]) for g in gathered), "ranks disagree"
    assert scores.manifest["calibration"]["world_size"] == world
    docs = score_documents(tiny_model("qwen3"))
    if rank == 0:
        scores.save(out_dir)
        docs.save(out_dir + "-documents")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
