"""Layer-streamed scoring and shard-streamed pruning of safetensors checkpoints (hf_minitron.streaming): the same
scores as estimate_importance on the loaded model, the same files as save_pretrained of prune_model's result (byte
for byte), one layer / one shard in memory at a time, and bad checkpoints refused before any work."""

import filecmp
import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import random_ids

from hf_minitron import streaming
from hf_minitron.errors import ConfigError, DataError
from hf_minitron.importance import ScoresMismatchError, estimate_importance
from hf_minitron.loading import ModelSourceError
from hf_minitron.pruning import prune_model
from hf_minitron.streaming import estimate_importance_streamed, prune_checkpoint
from hf_minitron.testing import TINY_VOCAB, tiny_model

SHARD = "50KB"  # a tiny model (~150 KB) becomes about 17 shards
TARGETS = dict(hidden_size=48, intermediate_size=96, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=3)
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Pruning keeps what the activations say matters.",
         "short", "A longer document, so that the batch is right-padded: " * 3, "Layer by layer, shard by shard."]


def _saved(model, path: Path, tokenizer=None) -> Path:
    model.save_pretrained(path, max_shard_size=SHARD)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def _assert_same_scores(streamed, reference):
    for name in ("heads", "neurons", "channels"):
        torch.testing.assert_close(getattr(streamed, name), getattr(reference, name), rtol=1e-5, atol=1e-7)
    assert streamed.depth.keys() == reference.depth.keys() == {"block_influence"}
    torch.testing.assert_close(streamed.depth["block_influence"], reference.depth["block_influence"], rtol=1e-5,
                               atol=1e-7)
    for key in ("model_type", "sizes", "weights_fingerprint"):
        assert streamed.manifest["model"][key] == reference.manifest["model"][key]
    assert streamed.manifest["calibration"] == reference.manifest["calibration"]


class _LayerCounter:
    """Wraps streaming._materialize/_release: how many decoder modules hold real weights at once."""

    def __init__(self, monkeypatch):
        self.live, self.peak, self.loaded = 0, 0, []
        real_load, real_release = streaming._materialize, streaming._release

        def load(module, prefix, *args, **kwargs):
            real_load(module, prefix, *args, **kwargs)
            self.live += 1
            self.peak = max(self.peak, self.live)
            self.loaded.append(prefix)

        def release(module):
            real_release(module)
            self.live -= 1

        monkeypatch.setattr(streaming, "_materialize", load)
        monkeypatch.setattr(streaming, "_release", release)


# --- layer-streamed scoring ----------------------------------------------------------------------------------------
def test_streamed_scores_equal_in_memory_scores(family, tmp_path, monkeypatch):
    model = tiny_model(family)
    path = _saved(model, tmp_path / "ckpt")
    assert len(list(path.glob("*.safetensors"))) > 5
    ids = random_ids(TINY_VOCAB, batch=5, seq=16, seed=1)
    reference = estimate_importance(model, ids, batch_size=2)
    counter = _LayerCounter(monkeypatch)
    monkeypatch.setattr(streaming, "READ_BLOCK_BYTES", 1024)  # embedding rows gathered from 4-row blocks
    rows_read = []
    real_rows = streaming.ShardedCheckpoint.rows
    monkeypatch.setattr(streaming.ShardedCheckpoint, "rows",
                        lambda self, key, start, stop: rows_read.append((key, start, stop)) or real_rows(self, key,
                                                                                                          start, stop))
    streamed = estimate_importance_streamed(path, ids, batch_size=2, device="cpu")
    _assert_same_scores(streamed, reference)
    streamed.check_model(model)  # streamed scores prune the loaded model, and the other way round below
    assert counter.peak == 1 and counter.live == 0  # one layer at a time
    assert counter.loaded == [f"model.layers.{i}." for i in range(4)]
    # the embedding: only the 4-row blocks holding a calibration token are read (plus the identity's first rows)
    blocks = {start for key, start, _ in rows_read if key == "model.embed_tokens.weight" and start > 0}
    assert blocks == {4 * (int(t) // 4) for t in ids.unique() if t >= 4}


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_streamed_documents_on_disk_bf16(family, tmp_path, tokenizer):
    """Right-padded documents (masked positions never count), bf16 layers, hidden states in a memory-mapped file."""
    model = tiny_model(family, dtype=torch.bfloat16)
    path = _saved(model, tmp_path / "ckpt")
    reference = estimate_importance(model, TEXTS, tokenizer=tokenizer, batch_size=2, seq_len=64)
    offload = tmp_path / "offload"
    offload.mkdir()
    seen = []
    real = streaming._HiddenStates.__init__

    def spy(self, shapes, dtype, where):
        real(self, shapes, dtype, where)
        seen.append((where, dtype, self.slots[0].untyped_storage().filename if where else None))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(streaming._HiddenStates, "__init__", spy)
        streamed = estimate_importance_streamed(path, TEXTS, tokenizer=tokenizer, batch_size=2, seq_len=64,
                                                dtype="bfloat16", device="cpu", hidden_states="disk",
                                                offload_dir=offload)
    _assert_same_scores(streamed, reference)
    (where, dtype, filename), = seen
    assert where.parent == offload and filename == str(where) and dtype == torch.bfloat16
    assert not any(offload.iterdir())  # the hidden-state file is removed


def test_streamed_loader_with_attention_mask(tmp_path):
    """A DataLoader-style list of padded batches with masks: the mask goes into the forward, as in memory."""
    model = tiny_model("qwen2")
    path = _saved(model, tmp_path / "ckpt")
    ids = random_ids(TINY_VOCAB, batch=4, seq=10, seed=3)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[3, 2:] = 0
    batches = [{"input_ids": ids[:2], "attention_mask": mask[:2]}, {"input_ids": ids[2:], "attention_mask": mask[2:]}]
    reference = estimate_importance(model, batches)
    streamed = estimate_importance_streamed(path, batches, device="cpu")
    _assert_same_scores(streamed, reference)
    assert streamed.manifest["calibration"]["tokens"] == int(mask.sum())


def test_lm_loss_criteria_and_bad_options_are_refused_before_work(tmp_path, monkeypatch):
    path = _saved(tiny_model("llama"), tmp_path / "ckpt")
    counter = _LayerCounter(monkeypatch)
    ids = random_ids(TINY_VOCAB)
    with pytest.raises(ConfigError, match=r"depth_criteria \['lm_loss'\] cannot be streamed.*block_influence"):
        estimate_importance_streamed(path, ids, depth_criteria=("block_influence", "lm_loss"), device="cpu")
    with pytest.raises(ConfigError, match=r"\['block'\] cannot be streamed"):
        estimate_importance_streamed(path, ids, block_sizes=(2,), device="cpu")
    with pytest.raises(ConfigError, match="hidden_states='ram'"):
        estimate_importance_streamed(path, ids, hidden_states="ram", device="cpu")
    assert counter.loaded == []


def test_not_enough_disk_for_hidden_states(tmp_path, monkeypatch):
    path = _saved(tiny_model("llama"), tmp_path / "ckpt")
    counter = _LayerCounter(monkeypatch)
    ids = random_ids(TINY_VOCAB, batch=4, seq=16)
    need = streaming.hidden_state_bytes([(4, 16, 64)], torch.float32)
    assert need == 4 * 16 * 64 * 4

    class Usage:
        total, used, free = 1 << 40, 1 << 40, need - 1

    monkeypatch.setattr(streaming.shutil, "disk_usage", lambda where: Usage)
    with pytest.raises(ConfigError, match=rf"offload_dir='{tmp_path}'.*need 0.00 GiB on disk.*pass offload_dir="):
        estimate_importance_streamed(path, ids, batch_size=4, device="cpu", hidden_states="disk",
                                     offload_dir=tmp_path)
    assert counter.loaded == []
    Usage.free = need
    estimate_importance_streamed(path, ids, batch_size=4, device="cpu", hidden_states="disk", offload_dir=tmp_path)
    assert counter.loaded[0] == "model.layers.0."  # ran with just enough


def test_batch_too_large_for_the_device_is_refused_before_work(tmp_path, monkeypatch):
    from hf_minitron import importance

    path = _saved(tiny_model("llama"), tmp_path / "ckpt")
    counter = _LayerCounter(monkeypatch)
    layer = sum(p.numel() for p in tiny_model("llama").model.layers[0].parameters()) * 4
    monkeypatch.setattr(importance, "available_memory", lambda device=None: layer + 1000)
    with pytest.raises(importance.ScoringMemoryError, match=r"batch_size=4 x seq_len=16 needs about .* on cpu \(one "
                                                           r"layer .*pass batch_size=1 \(or batch_size='auto'\)"):
        estimate_importance_streamed(path, random_ids(TINY_VOCAB, batch=4, seq=16), batch_size=4, device="cpu")
    assert counter.loaded == []


# --- bad checkpoints -----------------------------------------------------------------------------------------------
def test_bad_checkpoints_are_refused_with_path_and_fix(tmp_path, monkeypatch):
    model = tiny_model("llama")
    ids = random_ids(TINY_VOCAB)
    counter = _LayerCounter(monkeypatch)

    missing = _saved(model, tmp_path / "missing")
    gone = sorted(missing.glob("model-*.safetensors"))[3]
    gone.unlink()
    with pytest.raises(DataError, match=rf"names 1 shard\(s\) that are missing from .*{gone.name}.*complete "
                                        "checkpoint"):
        estimate_importance_streamed(missing, ids, device="cpu")

    reshaped = _saved(model, tmp_path / "reshaped")
    config = json.loads((reshaped / "config.json").read_text())
    (reshaped / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    with pytest.raises(DataError, match=r"'model.layers.0.mlp.gate_proj.weight' has shape \[128, 64\] but config.json "
                                        r"implies \[96, 64\]"):
        prune_checkpoint(reshaped, {"drop_layers": [1]}, None, tmp_path / "out")

    binary = tmp_path / "binary"
    binary.mkdir()
    (binary / "config.json").write_text(json.dumps(config))
    torch.save(model.state_dict(), binary / "pytorch_model.bin")
    with pytest.raises(ModelSourceError, match=r"holds no safetensors checkpoint.*found pytorch_model.bin.*"
                                               r"save_pretrained\(new_dir\)"):
        estimate_importance_streamed(binary, ids, device="cpu")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ModelSourceError, match="is a file, not a safetensors checkpoint directory"):
        prune_checkpoint(gguf, {"drop_layers": [1]}, None, tmp_path / "out")
    with pytest.raises(ModelSourceError, match="no config.json"):
        estimate_importance_streamed(tmp_path / "missing" / "..", ids, device="cpu")
    assert counter.loaded == [] and not (tmp_path / "out").exists()


# --- shard-streamed pruning ----------------------------------------------------------------------------------------
def _same_files(a: Path, b: Path) -> list[str]:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)
    return names


def test_streamed_pruning_writes_save_pretrained_bytes(family, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(streaming, "READ_BLOCK_BYTES", 4096)  # the embedding / LM head are pruned 16 rows at a time
    model = tiny_model(family)
    path = _saved(model, tmp_path / "ckpt")
    scores = estimate_importance(model, random_ids(TINY_VOCAB, batch=3, seq=16, seed=1))
    pruned = prune_model(model, TARGETS, scores)
    pruned.save_pretrained(tmp_path / "memory", max_shard_size="40KB")
    out = prune_checkpoint(path, TARGETS, scores, tmp_path / "streamed", max_shard_size="40KB")
    names = _same_files(tmp_path / "memory", out)
    assert "model.safetensors.index.json" in names and len([n for n in names if n.startswith("model-")]) > 3

    reloaded, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ids = random_ids(TINY_VOCAB, batch=2, seq=12, seed=7)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(input_ids=ids).logits, pruned(input_ids=ids).logits)


def test_prune_model_on_a_path_streams_with_saved_scores(tmp_path, tokenizer):
    """prune_model(<dir>, ...) dispatches to prune_checkpoint; scores from the streamed scorer, read from disk;
    a single-shard default write equals save_model's; the source's tokenizer files come along."""
    from hf_minitron.importance import ImportanceScores

    model = tiny_model("phi3")
    path = _saved(model, tmp_path / "ckpt", tokenizer)
    streamed = estimate_importance_streamed(path, random_ids(TINY_VOCAB, batch=3, seq=16), device="cpu")
    streamed.save(tmp_path / "scores")
    out = prune_model(str(path), TARGETS, str(tmp_path / "scores"), out_dir=tmp_path / "streamed")
    assert out == (tmp_path / "streamed").resolve()
    reference = prune_model(model, TARGETS, ImportanceScores.load(tmp_path / "scores", model=model),
                            out_dir=tmp_path / "memory", tokenizer=tokenizer)
    assert reference.config.num_hidden_layers == 3
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
        assert filecmp.cmp(tmp_path / "memory" / name, out / name, shallow=False), name
    with pytest.raises(ValueError, match="pass out_dir=DIR"):
        prune_model(str(path), TARGETS, streamed)


def test_plan_from_the_checkpoint_equals_the_plan_of_the_loaded_model(tmp_path):
    from hf_minitron.pruning import plan_pruning
    from hf_minitron.streaming import plan_checkpoint

    model = tiny_model("gemma2")
    path = _saved(model, tmp_path / "ckpt")
    scores = estimate_importance(model, random_ids(TINY_VOCAB, batch=3, seq=16, seed=2))
    for targets in (TARGETS, {"drop_layers": [0, 2]}, {"num_attention_heads": 2}):
        assert plan_checkpoint(path, targets, scores) == plan_pruning(model, targets, scores)


def test_bf16_checkpoint_pruned_in_fp32_matches_loaded_fp32_model(tmp_path):
    from hf_minitron.loading import load_causal_lm

    path = _saved(tiny_model("gemma2", dtype=torch.bfloat16), tmp_path / "ckpt")
    model, _ = load_causal_lm(path, dtype="float32", tokenizer=False)
    scores = estimate_importance_streamed(path, random_ids(TINY_VOCAB, batch=3, seq=16), dtype="float32",
                                          device="cpu")
    scores.check_model(model)  # the bf16-rounded fingerprint matches across dtypes
    prune_model(model, TARGETS, scores).save_pretrained(tmp_path / "memory", max_shard_size=SHARD)
    prune_checkpoint(path, TARGETS, scores, tmp_path / "streamed", dtype="float32", max_shard_size=SHARD)
    _same_files(tmp_path / "memory", tmp_path / "streamed")
    kept = prune_checkpoint(path, TARGETS, scores, tmp_path / "as_stored", max_shard_size=SHARD)
    assert json.loads((kept / "config.json").read_text())["dtype"] == "bfloat16"


def test_write_buffer_is_one_shard_and_reads_are_one_tensor(tmp_path, monkeypatch):
    model = tiny_model("mistral")
    path = _saved(model, tmp_path / "ckpt")
    scores = estimate_importance(model, random_ids(TINY_VOCAB, batch=3, seq=16))
    from safetensors import torch as st

    real_save, written = st.save_file, []

    def save_file(tensors, filename, metadata=None):
        written.append(sum(t.numel() * t.element_size() for t in tensors.values()))
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(st, "save_file", save_file)
    read = []
    real_get = streaming.ShardedCheckpoint.get
    monkeypatch.setattr(streaming.ShardedCheckpoint, "get",
                        lambda self, key, **kw: read.append(key) or real_get(self, key, **kw))
    prune_checkpoint(path, TARGETS, scores, tmp_path / "out", max_shard_size="20KB")
    largest = 259 * 48 * 4  # the pruned embedding, bigger than a 20 KB shard
    assert len(written) > 5 and max(written) <= max(20_000, largest)
    # every source tensor is read once, the final norm once more for the scores' model check
    assert {k for k, n in Counter(read).items() if n > 1} == {"model.norm.weight"}


def test_streamed_pruning_is_atomic_and_verifies_what_it_wrote(tmp_path, monkeypatch):
    model = tiny_model("qwen3")
    path = _saved(model, tmp_path / "ckpt")
    scores = estimate_importance(model, random_ids(TINY_VOCAB, batch=3, seq=16))
    from safetensors import torch as st

    real_save = st.save_file

    def corrupting_save(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:  # flip the last byte of the shard's data
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
            f.seek(-1, os.SEEK_END)
            f.write(bytes([last[0] ^ 0xFF]))

    monkeypatch.setattr(st, "save_file", corrupting_save)
    with pytest.raises(RuntimeError, match="does not read back as written; nothing was written"):
        prune_checkpoint(path, TARGETS, scores, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no output, no temporary sibling

    monkeypatch.setattr(st, "save_file", real_save)
    other = estimate_importance(tiny_model("qwen3", seed=3), random_ids(TINY_VOCAB))
    with pytest.raises(ScoresMismatchError):
        prune_checkpoint(path, TARGETS, other, tmp_path / "out")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="out_dir .* is not empty.*pass overwrite=True"):
        prune_checkpoint(path, TARGETS, scores, busy)
    with pytest.raises(ValueError, match="targets.hidden_size=65 is larger"):
        prune_checkpoint(path, {"hidden_size": 65}, scores, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "ckpt"]


# --- the real teacher ----------------------------------------------------------------------------------------------
@pytest.mark.real_model
def test_smollm2_streamed_scores_and_pruning_equal_in_memory(teacher, teacher_dir, tmp_path):
    torch.set_num_threads(1)
    model, tok = teacher
    texts = [t * 4 for t in TEXTS[:4]]
    reference = estimate_importance(model, texts, tokenizer=tok, batch_size=2, seq_len=64)
    streamed = estimate_importance_streamed(teacher_dir, texts, tokenizer=tok, batch_size=2, seq_len=64,
                                            device="cpu")
    _assert_same_scores(streamed, reference)
    targets = dict(intermediate_size=1024, num_attention_heads=6, num_key_value_heads=3, num_hidden_layers=28)
    prune_model(model, targets, streamed).save_pretrained(tmp_path / "memory")
    prune_checkpoint(teacher_dir, targets, reference, tmp_path / "streamed", max_shard_size="50GB")
    for name in ("model.safetensors", "config.json", "generation_config.json"):
        assert filecmp.cmp(tmp_path / "memory" / name, tmp_path / "streamed" / name, shallow=False), name
