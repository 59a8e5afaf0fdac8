"""Atomic save/reload of every family, and clear errors on bad input."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_minitron.loading import ModelSourceError, check_output_dir, load_causal_lm, save_model
from hf_minitron.testing import TINY_VOCAB, tiny_model, tiny_tokenizer

from conftest import random_ids


def test_save_reload_identical_logits(tiny, family, tokenizer, tmp_path):
    out = save_model(tiny, tokenizer, tmp_path / "ckpt")
    files = {p.name for p in out.iterdir()}
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    assert not any(f.endswith(".bin") for f in files)
    # no temporary siblings are left behind
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    reloaded, tok = load_causal_lm(out)
    ids = random_ids(TINY_VOCAB)
    with torch.no_grad():
        assert torch.equal(tiny(input_ids=ids).logits, reloaded.eval()(input_ids=ids).logits)
    assert tok("abc").input_ids == tokenizer("abc").input_ids
    assert reloaded.config.model_type == family


def test_refuses_non_empty_out_dir(tmp_path, tokenizer):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    model = tiny_model("llama")
    with pytest.raises(FileExistsError, match="not empty"):
        save_model(model, tokenizer, out)
    assert (out / "keep.txt").read_text() == "user data"
    save_model(model, tokenizer, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()


def test_check_output_dir_words_the_error_for_the_caller(tmp_path):
    assert check_output_dir(tmp_path / "new") == (tmp_path / "new").resolve()   # absent: fine, nothing created
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="--out .*file exists and is a file"):
        check_output_dir(tmp_path / "file", overwrite=True, name="--out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a").write_text("x")
    with pytest.raises(FileExistsError, match="--out .*full is not empty; choose another directory or pass --overwrite"):
        check_output_dir(tmp_path / "full", name="--out", fix="pass --overwrite")
    assert check_output_dir(tmp_path / "full", overwrite=True).is_dir()


def test_failed_verification_leaves_nothing(tmp_path, monkeypatch):
    """If the reloaded checkpoint disagrees with the model, nothing appears at out_dir."""
    model = tiny_model("llama")
    real = AutoModelForCausalLM.from_pretrained

    def corrupt(*args, **kwargs):
        m = real(*args, **kwargs)
        with torch.no_grad():
            m.model.norm.weight.mul_(2)
        return m

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", corrupt)
    with pytest.raises(RuntimeError, match="does not reproduce"):
        save_model(model, None, tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(ModelSourceError, match="does not exist"):
        load_causal_lm(tmp_path / "nope")
    with pytest.raises(ModelSourceError, match="does not exist"):
        load_causal_lm("missing-model.gguf")
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"x")
    with pytest.raises(ModelSourceError, match="not a .gguf"):
        load_causal_lm(bad)


def test_trust_remote_code_is_off_by_default():
    import inspect

    assert inspect.signature(load_causal_lm).parameters["trust_remote_code"].default is False


def test_saved_output_gets_normal_permissions_and_stale_temporaries_are_removed(tmp_path):
    """A save gives the directory `save_pretrained`'s permissions (0o777 & ~umask, not mkdtemp's 0o700), and removes
    the hidden temporaries a killed save of the same output left behind once they are old (a fresh one is left
    alone: it may be a concurrent writer's)."""
    import os
    import time

    from hf_minitron.outputs import STALE_AFTER_S

    old_mask = os.umask(0o022)
    try:
        stale = tmp_path / ".student.tmp-killed"
        stale.mkdir()
        (stale / "model.safetensors").write_bytes(b"x" * 1024)
        past = time.time() - STALE_AFTER_S - 60
        os.utime(stale, (past, past))
        fresh = tmp_path / ".student.tmp-running"
        fresh.mkdir()
        other = tmp_path / ".teacher.tmp-killed"
        other.mkdir()
        os.utime(other, (past, past))
        out = save_model(tiny_model("llama"), tiny_tokenizer(), tmp_path / "student")
        assert (out.stat().st_mode & 0o777) == 0o755
        assert not stale.exists() and fresh.exists() and other.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == [".student.tmp-running", ".teacher.tmp-killed", "student"]
    finally:
        os.umask(old_mask)


@pytest.mark.real_model
def test_gguf_dequantized_cache_gives_the_same_model_and_tokenizer(tmp_path, monkeypatch):
    """The first fp32 load of a .gguf writes a plain checkpoint to the cache; later loads read it and get exactly the
    weights and tokenizer a load from the GGUF file gives (HF_MINITRON_CACHE=off)."""
    from hf_minitron.loading import default_teacher_gguf, gguf_cache_dir

    try:
        gguf = default_teacher_gguf()
    except ModelSourceError as err:
        pytest.skip(str(err))
    monkeypatch.setenv("HF_MINITRON_CACHE", "off")
    direct, direct_tok = load_causal_lm(gguf)
    monkeypatch.setenv("HF_MINITRON_CACHE", str(tmp_path))
    first, _ = load_causal_lm(gguf)          # writes the cache
    assert (gguf_cache_dir(gguf) / "model.safetensors").is_file()
    cached, cached_tok = load_causal_lm(gguf)  # reads it
    for model in (first, cached):
        got = dict(model.named_parameters())
        for name, p in direct.named_parameters():
            assert torch.equal(got[name], p), name
    assert cached_tok.get_vocab() == direct_tok.get_vocab()
    assert cached_tok.chat_template == direct_tok.chat_template
    assert cached.config.name_or_path == str(gguf)
