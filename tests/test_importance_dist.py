"""Two processes on gloo: the reduced scores equal one process scoring all the data."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_minitron.importance import ImportanceScores
from hf_minitron.testing import tiny_model

WORKER = Path(__file__).with_name("dist_importance_worker.py")


def test_two_ranks_reduce_to_the_single_process_scores(tmp_path):
    sys.path.insert(0, str(WORKER.parent))
    from dist_importance_worker import score, score_documents

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parent)}
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(WORKER), str(tmp_path / "scores")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    model = tiny_model("qwen3")
    distributed = ImportanceScores.load(tmp_path / "scores", model=model)
    single = score(model)
    assert distributed.manifest["calibration"]["samples"] == single.manifest["calibration"]["samples"] == 7
    assert distributed.manifest["calibration"]["fingerprint"] == single.manifest["calibration"]["fingerprint"]
    for name in ("heads", "neurons", "channels"):
        torch.testing.assert_close(getattr(distributed, name), getattr(single, name), rtol=1e-5, atol=1e-7)
    for name in single.depth:
        torch.testing.assert_close(distributed.depth[name], single.depth[name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(distributed.block_losses[2], single.block_losses[2], rtol=1e-6, atol=1e-6)
    assert distributed.base_loss == pytest.approx(single.base_loss, rel=1e-6)
    # documents (the default calibration rows) shard the same way
    distributed = ImportanceScores.load(str(tmp_path / "scores") + "-documents", model=model)
    single = score_documents(model)
    assert distributed.manifest["calibration"]["samples"] == single.manifest["calibration"]["samples"] == 6
    assert distributed.manifest["calibration"]["fingerprint"] == single.manifest["calibration"]["fingerprint"]
    for name in ("heads", "neurons", "channels"):
        torch.testing.assert_close(getattr(distributed, name), getattr(single, name), rtol=1e-5, atol=1e-7)
    for name in ("block_influence", "lm_loss"):
        torch.testing.assert_close(distributed.depth[name], single.depth[name], rtol=1e-5, atol=1e-6)
    assert distributed.base_loss == pytest.approx(single.base_loss, rel=1e-6)
