"""Offline teacher cache: contents against the teacher's own logits, resume after an interruption, per-process shards,
refusal of mismatched settings, detection of truncated/corrupt shards, the sampled kind, the collator and the CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from hf_minitron.distill.teacher_cache import (
    TeacherCache, TeacherCacheCollator, TeacherCacheError, cache_index_dataset, finalize_teacher_cache, merge_draws,
    teacher_topk, write_teacher_cache,
)
from hf_minitron.testing import tiny_model, tiny_tokenizer
from conftest import random_ids

N_SEQ, SEQ, K = 5, 12, 8


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("llama").eval()
    return model, tiny_tokenizer(), random_ids(model.config.vocab_size, batch=N_SEQ, seq=SEQ, seed=3)


def shard_tensors(path: Path) -> dict:
    """{(shard file, tensor name): tensor} of a finished cache (file bytes differ: safetensors headers are unordered)."""
    from safetensors.torch import load_file

    out = {}
    for s in json.loads((path / "manifest.json").read_text())["shards"]:
        out.update({(s["file"], k): v for k, v in load_file(path / s["file"]).items()})
    return out


def same_contents(a: Path, b: Path) -> bool:
    ta, tb = shard_tensors(a), shard_tensors(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_cache_holds_the_teachers_topk(setup, tmp_path):
    model, tok, ids = setup
    write_teacher_cache(model, tok, ids, tmp_path, top_k=K, temperature=2.0, shard_size=2, batch_size=3)
    cache = TeacherCache(tmp_path)
    assert len(cache) == N_SEQ and len(cache.shards) == 3
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits.double() / 2.0, dim=-1)
    for i in range(N_SEQ):
        row = cache[i]
        assert torch.equal(row["input_ids"], ids[i])
        vals, top = logp[i].topk(K, dim=-1)
        assert torch.equal(row["teacher_topk_ids"].long(), top)
        assert row["teacher_topk_logprobs"].dtype == torch.float16
        assert torch.allclose(row["teacher_topk_logprobs"].double(), vals, atol=2e-3, rtol=2e-3)
        tail = torch.log1p(-vals.exp().sum(-1))
        assert torch.allclose(row["teacher_tail_logmass"].double(), tail, atol=1e-4, rtol=1e-4)
    # bytes per token: k ids (4 B) + k log-probs (2 B) + tail (4 B) + input id (4 B), plus small file headers
    assert K * 6 + 8 <= cache.bytes_per_token < K * 6 + 8 + 60


def test_interrupted_run_resumes_without_redoing_finished_shards(setup, tmp_path):
    model, tok, ids = setup
    full = tmp_path / "full"
    write_teacher_cache(model, tok, ids, full, top_k=K, shard_size=2)

    part = tmp_path / "part"

    def stop_after_two(shard):
        if shard == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_teacher_cache(model, tok, ids, part, top_k=K, shard_size=2, on_shard=stop_after_two)
    with pytest.raises(TeacherCacheError, match="unfinished"):
        TeacherCache(part)
    stamps = {p.name: p.stat().st_mtime_ns for p in part.glob("shard-*.safetensors")}
    assert sorted(stamps) == ["shard-00000.safetensors", "shard-00001.safetensors"]

    seen = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        write_teacher_cache(model, tok, ids, part, top_k=K, shard_size=2)
    finally:
        hook.remove()
    assert sum(seen) == 1  # only the last shard's one sequence ran through the teacher
    assert {p.name: p.stat().st_mtime_ns for p in part.glob("shard-0000[01].safetensors")} == stamps
    assert same_contents(part, full)
    # a resume with other settings is refused before any work
    with pytest.raises(TeacherCacheError, match="top_k=8.*top_k=4"):
        write_teacher_cache(model, tok, ids, part, top_k=4, shard_size=2)


def test_each_process_writes_its_own_shards(setup, tmp_path):
    model, tok, ids = setup
    single = tmp_path / "single"
    write_teacher_cache(model, tok, ids, single, top_k=K, shard_size=1)
    multi = tmp_path / "multi"
    write_teacher_cache(model, tok, ids, multi, top_k=K, shard_size=1, process_index=1, num_processes=2,
                        finalize=False)
    with pytest.raises(TeacherCacheError, match="misses 3 of 5 shards"):
        finalize_teacher_cache(multi)
    write_teacher_cache(model, tok, ids, multi, top_k=K, shard_size=1, process_index=0, num_processes=2,
                        finalize=False)
    manifest = finalize_teacher_cache(multi)
    assert [s["process_index"] for s in manifest["shards"]] == [0, 1, 0, 1, 0]
    assert same_contents(multi, single)


def test_mismatched_settings_are_refused(setup, tmp_path):
    model, tok, ids = setup
    write_teacher_cache(model, tok, ids, tmp_path, top_k=K, shard_size=4)
    cache = TeacherCache(tmp_path)
    cache.check_compatible(tokenizer=tok, max_length=SEQ, packing=True, temperature=1.0, tail="bucket",
                           vocab_size=model.config.vocab_size)
    other = tiny_tokenizer()
    other.add_tokens(["<|extra|>"])
    with pytest.raises(TeacherCacheError, match="tokenizer"):
        cache.check_compatible(tokenizer=other)
    with pytest.raises(TeacherCacheError, match="max_length=12.*max_length=16"):
        cache.check_compatible(max_length=16)
    with pytest.raises(TeacherCacheError, match="packing"):
        cache.check_compatible(packing=False)
    with pytest.raises(TeacherCacheError, match="temperature"):
        cache.check_compatible(temperature=2.0, tail="bucket")
    cache.check_compatible(temperature=2.0, tail="renormalize")  # exact re-tempering
    with pytest.raises(TeacherCacheError, match="--sampled"):
        cache.check_compatible(tail="sampled")
    with pytest.raises(TeacherCacheError, match="data_fingerprint"):
        cache.check_compatible(data_fingerprint="0" * 16)


def test_truncated_and_corrupt_shards_are_detected(setup, tmp_path):
    model, tok, ids = setup
    write_teacher_cache(model, tok, ids, tmp_path, top_k=K, shard_size=2)
    shard = tmp_path / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(TeacherCacheError, match="shard-00001.*corrupt"):
        TeacherCache(tmp_path)
    shard.write_bytes(bytes(data[:-100]))
    with pytest.raises(TeacherCacheError, match="shard-00001.*truncated"):
        TeacherCache(tmp_path, verify=False)
    # the resume path rebuilds the damaged shard
    write_teacher_cache(model, tok, ids, tmp_path, top_k=K, shard_size=2)
    assert len(TeacherCache(tmp_path)) == N_SEQ


def test_merge_draws_gives_distinct_ids_with_count_weights():
    g = torch.Generator().manual_seed(0)
    draws = torch.randint(0, 6, (50, 8), generator=g)  # many repeats among 6 ids
    fill = torch.stack([torch.randperm(40, generator=g)[:8] for _ in range(50)])
    ids, logw = merge_draws(draws, fill)
    for d, f, i, w in zip(draws, fill, ids, logw):
        assert len(set(i.tolist())) == 8
        got = {int(a): float(b.exp()) for a, b in zip(i, w) if b > float("-inf")}
        assert got == pytest.approx({a: c / 8 for a, c in Counter(d.tolist()).items()})
        assert set(i.tolist()) - set(got) <= set(f.tolist())


@pytest.mark.parametrize("exact_head", [0, 3, 7])
def test_sampled_weights_are_unbiased_and_keep_the_head_exact(exact_head):
    """Each row's weights sum to 1, the head is the teacher's own top ids and log-probs, and the mean weight of every id
    over many draws is the teacher's probability (within 5 standard errors of the weight's known variance)."""
    rows, vocab, k, n = 3, 40, 8, 20000
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(1)) * 2
    p = torch.softmax(logits.double(), -1)
    ids, logw, tail = teacher_topk(logits.repeat(n, 1), k, kind="sampled", exact_head=exact_head,
                                   generator=torch.Generator().manual_seed(2))
    assert ids.shape == logw.shape == (n * rows, k) and torch.isneginf(tail).all()
    w = torch.zeros(n * rows, vocab, dtype=torch.float64).scatter_add_(1, ids.long(), logw.double().exp())
    assert torch.allclose(w.sum(-1), torch.ones(n * rows, dtype=torch.float64), atol=1e-6)
    assert all(len(set(r.tolist())) == k for r in ids[:50])
    top = p.topk(exact_head, dim=-1)
    assert torch.equal(ids[:rows, :exact_head].long(), top.indices)
    assert torch.allclose(logw[:rows, :exact_head].double(), top.values.log(), atol=1e-5)
    w = w.view(n, rows, vocab)
    p_rest = 1 - top.values.sum(-1, keepdim=True)
    stderr = (p * p_rest / (k - exact_head) / n).sqrt()  # Var(w_id) <= p_id * p_rest / draws
    assert ((w.mean(0) - p).abs() <= 5 * stderr + 1e-6).all()


def test_sampled_rows_without_remaining_mass_get_zero_weights():
    """A teacher whose mass sits entirely in the head (masked vocabulary): no NaN, the rest padded with weight 0."""
    logits = torch.full((2, 20), float("-inf"))
    logits[:, :3] = torch.tensor([2.0, 1.0, 0.0])
    ids, logw, _ = teacher_topk(logits, 6, kind="sampled", exact_head=4)
    assert not torch.isnan(logw).any()
    assert torch.allclose(logw.exp().sum(-1), torch.ones(2), atol=1e-6)
    assert all(len(set(r.tolist())) == 6 for r in ids)


def test_sampled_cache_and_collator(setup, tmp_path):
    model, tok, _ = setup
    ids = random_ids(model.config.vocab_size, batch=3, seq=SEQ, seed=4)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    write_teacher_cache(model, tok, ids, tmp_path, top_k=K, attention_mask=mask, kind="sampled", shard_size=2)
    cache = TeacherCache(tmp_path)
    cache.check_compatible(tail="sampled", packing=False)
    batch = TeacherCacheCollator(cache)([{"cache_index": 1}, {"cache_index": 2}])
    assert torch.equal(batch["input_ids"], ids[1:])
    assert (batch["labels"][0, 7:] == -100).all() and torch.equal(batch["labels"][1], ids[2])
    assert batch["teacher_topk_ids"].shape == (2, SEQ, K)
    w = batch["teacher_topk_logprobs"].float().exp().sum(-1)
    assert torch.allclose(w, torch.ones_like(w), atol=1e-3)
    for row in batch["teacher_topk_ids"].reshape(-1, K):
        assert len(set(row.tolist())) == K
    ds = cache_index_dataset(cache)
    assert ds["cache_index"] == [0, 1, 2] and ds[2]["input_ids"] == ids[2].tolist()


def test_cli_builds_a_cache(tmp_path, capsys):
    from hf_minitron.cli import main
    from hf_minitron.loading import save_model

    model_dir = tmp_path / "teacher"
    save_model(tiny_model("llama"), tiny_tokenizer(), model_dir)
    data = tmp_path / "data.txt"
    data.write_text("\n".join(f"document number {i} says hello to the cache" for i in range(12)))
    out = tmp_path / "cache"
    base = ["cache-teacher", "--teacher", str(model_dir), "--data", str(data)]
    rc = main([*base, "--top_k", "4", "--max_length", "16", "--shard_size", "3", "--output_dir", str(out)])
    assert rc == 0
    cache = TeacherCache(out)
    assert cache.settings.top_k == 4 and cache.settings.max_length == 16 and cache.settings.packing
    printed = json.loads(capsys.readouterr().out)
    assert printed["metrics"]["bytes_per_token"] == cache.bytes_per_token and printed["metrics"]["top_k"] == 4
    for argv, words in [
        (["cache-teacher", "--teacher", str(model_dir), "--data", str(tmp_path / "nope.txt")], "does not exist"),
        ([*base, "--exact_head", "2"], "exact_head applies to sampled caches only"),
        ([*base, "--top_k", "4", "--sampled", "--exact_head", "4"], "exact_head=4: must be in [0, top_k=4)"),
    ]:
        assert main([*argv, "--output_dir", str(tmp_path / "c3")]) == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "c3").exists()


# --- training from the cache (DistillationTrainer with no teacher in memory) -----------------------------------------
def _config(tmp_path, **kw):
    from hf_minitron.distill import DistillationConfig

    base = dict(output_dir=str(tmp_path / "run"), use_cpu=True, bf16=False, per_device_train_batch_size=2,
                max_steps=2, learning_rate=1e-3, logging_steps=1, report_to=[], save_strategy="no",
                max_length=SEQ, kd_loss="topk_kl", teacher_cache=None)
    base.update(kw)
    return DistillationConfig(**base)


@pytest.mark.parametrize("tail", ["bucket", "renormalize", "sampled"])
def test_trainer_loss_from_cache_matches_reference(setup, tmp_path, tail):
    from hf_minitron.distill import DistillationTrainer
    from hf_minitron.kernels.topk_kl import topk_kl_reference

    teacher, tok, ids = setup
    write_teacher_cache(teacher, tok, ids, tmp_path / "cache", top_k=K, shard_size=2,
                        kind="sampled" if tail == "sampled" else "topk")
    student = tiny_model("llama", seed=1)
    trainer = DistillationTrainer(student, args=_config(tmp_path, teacher_cache=str(tmp_path / "cache"),
                                                        topk_tail=tail, ce_weight=0.5),
                                  processing_class=tok)
    assert trainer.teacher_model is None
    batch = trainer.data_collator([{"cache_index": 3}, {"cache_index": 0}])
    ref_batch = {k: v.clone() for k, v in batch.items()}
    loss = trainer.compute_loss(student, batch, num_items_in_batch=torch.tensor(2 * (SEQ - 1)))
    with torch.no_grad():
        logits = student(input_ids=ref_batch["input_ids"]).logits.double()
    mask = torch.ones(2, SEQ, dtype=torch.bool)
    mask[:, -1] = False  # the last position predicts nothing
    kd = topk_kl_reference(logits, ref_batch["teacher_topk_ids"], ref_batch["teacher_topk_logprobs"].double(),
                           ref_batch["teacher_tail_logmass"].double(), tail=tail, valid=mask)
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                           ref_batch["input_ids"][:, 1:].reshape(-1))
    assert float(loss) == pytest.approx(float(kd + 0.5 * ce), rel=1e-5)
    before = [p.detach().clone() for p in student.parameters()]
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_trainer_takes_the_tail_from_the_cache_when_unset(setup, tmp_path):
    from hf_minitron.distill import DistillationTrainer

    model, tok, ids = setup
    for kind, tail in (("topk", "bucket"), ("sampled", "sampled")):
        cache = write_teacher_cache(model, tok, ids, tmp_path / kind, top_k=K, kind=kind)
        args = _config(tmp_path / kind, teacher_cache=str(cache))
        assert args.topk_tail is None
        DistillationTrainer(tiny_model("llama"), args=args, processing_class=tok)
        assert args.topk_tail == tail


def test_trainer_refuses_mismatched_cache(setup, tmp_path):
    from hf_minitron.distill import DistillationConfig, DistillationTrainer

    teacher, tok, ids = setup
    write_teacher_cache(teacher, tok, ids, tmp_path / "cache", top_k=K, shard_size=2)
    cache = str(tmp_path / "cache")
    with pytest.raises(ValueError, match="kd_loss='topk_kl' and teacher_cache go together"):
        DistillationConfig(output_dir=str(tmp_path), use_cpu=True, teacher_cache=cache)
    other = tiny_tokenizer()
    other.add_tokens(["<|extra|>"])
    with pytest.raises(TeacherCacheError, match="tokenizer"):
        DistillationTrainer(tiny_model("llama"), args=_config(tmp_path, teacher_cache=cache), processing_class=other)
    with pytest.raises(TeacherCacheError, match="max_length"):
        DistillationTrainer(tiny_model("llama"), args=_config(tmp_path, teacher_cache=cache, max_length=64),
                            processing_class=tok)
    with pytest.raises(TeacherCacheError, match="--sampled"):
        DistillationTrainer(tiny_model("llama"), args=_config(tmp_path, teacher_cache=cache, topk_tail="sampled"),
                            processing_class=tok)
    with pytest.raises(ValueError, match="not both"):
        DistillationTrainer(tiny_model("llama"), args=_config(tmp_path, teacher_cache=cache), processing_class=tok,
                            teacher_model=teacher)


def test_distill_cli_trains_from_cache(setup, tmp_path):
    from hf_minitron.cli import main
    from hf_minitron.loading import load_causal_lm, save_model

    teacher, tok, ids = setup
    write_teacher_cache(teacher, tok, ids, tmp_path / "cache", top_k=K, shard_size=2)
    save_model(tiny_model("llama", seed=2), tok, tmp_path / "student")
    rc = main(["distill", "--student", str(tmp_path / "student"), "--teacher_cache", str(tmp_path / "cache"),
               "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--per_device_train_batch_size", "2",
               "--use_cpu", "--bf16", "false", "--report_to", "none", "--save_strategy", "no",
               "--topk_tail", "renormalize"])
    assert rc == 0
    trained, _ = load_causal_lm(tmp_path / "out")
    assert not torch.equal(trained.model.embed_tokens.weight, tiny_model("llama", seed=2).model.embed_tokens.weight)


def test_cache_teacher_cli_in_two_processes(tmp_path):
    """torchrun with 2 CPU processes (gloo): each writes its own shards, the result equals a one-process cache."""
    import subprocess
    import sys

    from hf_minitron.cli import main
    from hf_minitron.loading import save_model

    save_model(tiny_model("llama"), tiny_tokenizer(), tmp_path / "teacher")
    data = tmp_path / "data.txt"
    data.write_text("\n".join(f"text {i} for two processes" for i in range(20)))
    args = ["cache-teacher", "--teacher", str(tmp_path / "teacher"), "--data", str(data), "--top_k", "4",
            "--max_length", "16", "--shard_size", "2"]
    exe = Path(sys.executable).parent / "hf-minitron"
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--no-python",
                          str(exe), *args, "--output_dir", str(tmp_path / "two")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert main([*args, "--output_dir", str(tmp_path / "one")]) == 0
    shards = json.loads((tmp_path / "two" / "manifest.json").read_text())["shards"]
    assert {s["process_index"] for s in shards} == {0, 1} and len(shards) > 2
    assert same_contents(tmp_path / "two", tmp_path / "one")
