"""generate-data: batched generation equals one prompt at a time, chat JSONL output, resume, refused settings, two
processes on gloo equal one process (tiny models and the byte-level tokenizer with its ChatML template)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hf_minitron.generate as gen
from hf_minitron.errors import ConfigError, DataError
from hf_minitron.loading import save_model
from hf_minitron.stages import run_stage
from hf_minitron.testing import CHATML_TEMPLATE, tiny_model, tiny_tokenizer

WORKER = Path(__file__).with_name("dist_generate_worker.py")
PROMPTS = ["hi", "what is two plus two?", "write a short poem about rain", "x", "name three colours",
           "why is the sky blue?", "count to five", "tell me a joke about cats and dogs", "ok", "describe a tree"]
SAMPLED = dict(temperature=0.9, top_p=0.95, seed=3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("gen") / "tiny-llama"
    save_model(tiny_model("llama"), tiny_tokenizer(), out)
    return str(out)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    rows = [{"prompt": p} for p in PROMPTS]
    # a chat record: cut after its last user turn (the assistant turn after it is not part of the prompt)
    rows[6] = {"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "count to five"},
                          {"role": "assistant", "content": "1 2 3 4 5"}, {"role": "user", "content": "again"},
                          {"role": "assistant", "content": "dropped"}]}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def stage(checkpoint, prompts_file, out, **kw):
    values = dict(model=checkpoint, prompts=prompts_file, output_dir=str(out), max_new_tokens=12, batch_size=3,
                  progress=False)
    return run_stage("generate-data", {**values, **kw})


@pytest.fixture(scope="module")
def sampled_run(checkpoint, prompts_file, tmp_path_factory):
    """One uninterrupted single-process sampled run (the reference for resume and two processes)."""
    return stage(checkpoint, prompts_file, tmp_path_factory.mktemp("ref") / "out", **SAMPLED)


def plain_generate(model, tokenizer, messages, max_new_tokens) -> list[int]:
    """Reference: ``model.generate`` on one prompt alone (no padding), greedy, cut at the first EOS."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=0)
    new = out[0, ids.shape[1]:].tolist()
    return new[: new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def settings(n=len(PROMPTS), **kw) -> gen.GenerationSettings:
    values = dict(model="tiny", dtype="float32", max_new_tokens=12, temperature=0.0, top_p=1.0, seed=0,
                  use_chat_template=True, prompts="test", num_prompts=n, prompts_fingerprint="x")
    return gen.GenerationSettings(**{**values, **kw})


def test_tiny_tokenizer_has_a_chat_template():
    assert tiny_tokenizer().chat_template == CHATML_TEMPLATE


def test_left_padded_batches_equal_one_prompt_at_a_time_greedy(family, tokenizer):
    model = tiny_model(family)
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS[:6]]
    ids = gen.encode_prompts(tokenizer, prompts)
    assert len({len(i) for i in ids}) == 6  # every row of the batch is padded differently
    batched = gen.generate_batch(model, ids, [0] * 6, settings(), eos_ids=[2], pad_id=0)
    for messages, (answer, finish) in zip(prompts, batched):
        reference = plain_generate(model, tokenizer, messages, 12)
        assert answer == reference
        assert finish == ("length" if len(reference) == 12 else "stop")


def test_live_token_count_matches_the_answers(tokenizer):
    from types import SimpleNamespace

    model = tiny_model("qwen2")
    ids = gen.encode_prompts(tokenizer, [[{"role": "user", "content": p}] for p in PROMPTS])
    free = gen.generate_batch(model, ids, [0] * len(ids), settings(max_new_tokens=20), eos_ids=[2], pad_id=0)
    stop = free[0][0][5]  # a token the random model does emit serves as end-of-sequence, so rows end early
    shown = []
    rate = gen.TokenRate(SimpleNamespace(set_postfix=lambda **kw: shown.append(kw)), eos_ids=[stop])
    answers = gen.generate_batch(model, ids, [0] * len(ids), settings(max_new_tokens=20), eos_ids=[stop], pad_id=0,
                                 streamer=rate.streamer(len(ids)))
    assert 0 < sum(finish == "stop" for _, finish in answers) < len(ids)
    assert rate.tokens == sum(len(a) + (finish == "stop") for a, finish in answers)  # + each row's EOS token
    assert shown and "tok_s" in shown[0]


def test_stage_writes_chat_messages_in_prompt_order(checkpoint, prompts_file, tmp_path):
    from hf_minitron.data import load_records
    from hf_minitron.distill.data import load_sft_dataset
    from hf_minitron.loading import load_causal_lm

    result = stage(checkpoint, prompts_file, tmp_path / "out", temperature=0)
    data_file = tmp_path / "out" / gen.DATA_FILE
    assert result.output_dir == result.metrics["data_file"] == str(data_file.resolve())
    records = read_jsonl(data_file)
    model, tokenizer = load_causal_lm(checkpoint)
    assert len(records) == len(PROMPTS) == result.metrics["records"]
    for i, rec in enumerate(records):
        assert list(rec) == ["messages"]
        *prompt, answer = rec["messages"]
        expected_prompt = [{"role": "user", "content": PROMPTS[i]}] if i != 6 else [
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "count to five"},
            {"role": "assistant", "content": "1 2 3 4 5"}, {"role": "user", "content": "again"}]
        assert prompt == expected_prompt
        reference = plain_generate(model, tokenizer, prompt, 12)
        assert answer == {"role": "assistant", "content": tokenizer.decode(reference, skip_special_tokens=True).strip()}
    manifest = json.loads((tmp_path / "out" / gen.MANIFEST_FILE).read_text())
    assert manifest["settings"]["temperature"] == 0 and manifest["settings"]["num_prompts"] == len(PROMPTS)
    assert manifest["new_tokens"] == result.metrics["new_tokens"] <= 12 * len(PROMPTS)
    assert sum(manifest["finish_reasons"].values()) == len(PROMPTS)
    assert not Path(f"{tmp_path / 'out'}.checkpoints").exists()  # part files removed once the data set is written
    # the next stages read the file as it is
    assert load_records(result.output_dir) == records
    assert load_sft_dataset(result.output_dir).column_names == ["messages"]


def test_sampling_is_per_prompt_independent_of_the_batch(checkpoint, prompts_file, tmp_path, sampled_run):
    one_by_one = stage(checkpoint, prompts_file, tmp_path / "b1", batch_size=1, **SAMPLED)
    assert Path(one_by_one.output_dir).read_bytes() == Path(sampled_run.output_dir).read_bytes()
    other_seed = stage(checkpoint, prompts_file, tmp_path / "s4", **{**SAMPLED, "seed": 4})
    assert Path(other_seed.output_dir).read_bytes() != Path(sampled_run.output_dir).read_bytes()


def test_sampler_keeps_the_nucleus_and_its_proportions():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p=0.8 keeps the first two (mass before the third is already 0.8)
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    sampler = gen.PerPromptSampler(range(4000), temperature=1.0, top_p=0.8)
    out = sampler(None, scores)
    drawn = out.argmax(-1)
    assert torch.all(torch.isinf(out).sum(-1) == 3)  # exactly one finite (0) score per row
    counts = torch.bincount(drawn, minlength=4).tolist()
    assert counts[2] == counts[3] == 0
    assert abs(counts[0] / 4000 - 0.625) < 0.03  # 0.5 / 0.8
    again = gen.PerPromptSampler(range(4000), temperature=1.0, top_p=0.8)(None, scores).argmax(-1)
    assert torch.equal(again, drawn)  # same seeds, same draws


def test_nucleus_equals_the_full_sort_reference():
    def reference(probs, top_p):  # sort every row, drop a token once the mass before it reaches top_p
        sorted_probs, order = probs.double().sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p
        return torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, keep)

    gen_ = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 1271, generator=gen_) * torch.tensor([8.0, 4.0, 2.0, 1.0, 0.3, 0.0])[:, None]
    probs = torch.softmax(logits, -1)  # from peaked rows (nucleus of a few tokens) to flat ones (beyond k=16)
    for top_p in (0.5, 0.9, 0.99):
        got = gen.nucleus(probs, top_p, k=16)
        assert torch.equal(got > 0, reference(probs, top_p)), top_p
        assert torch.equal(got[got > 0], probs[got > 0])  # kept tokens keep their probability


def test_resume_after_an_interruption_equals_the_uninterrupted_run(checkpoint, prompts_file, tmp_path, monkeypatch,
                                                                   sampled_run):
    real = gen.generate_batch
    calls = []

    def interrupted_after_two_batches(model, prompt_ids, *args, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(len(prompt_ids))
        return real(model, prompt_ids, *args, **kw)

    monkeypatch.setattr(gen, "generate_batch", interrupted_after_two_batches)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        stage(checkpoint, prompts_file, out, **SAMPLED)
    part = Path(f"{out}.checkpoints") / "part-00000.jsonl"
    assert not out.exists() and len(read_jsonl(part)) == 6
    with open(part, "a") as f:  # a kill in the middle of a write
        f.write('{"index": 9, "messages": [{"role": "us')

    generated = []

    def counted(model, prompt_ids, *args, **kw):
        generated.append(len(prompt_ids))
        return real(model, prompt_ids, *args, **kw)

    monkeypatch.setattr(gen, "generate_batch", counted)
    result = stage(checkpoint, prompts_file, out, batch_size=4, progress=True, **SAMPLED)  # another batch size
    assert sum(generated) == len(PROMPTS) - 6  # nothing generated twice
    assert result.metrics["resumed"] is True
    assert Path(result.output_dir).read_bytes() == Path(sampled_run.output_dir).read_bytes()  # none lost
    assert not part.parent.exists()


def test_other_settings_are_refused(checkpoint, prompts_file, tmp_path, monkeypatch, sampled_run):
    import hf_minitron.loading

    finished = Path(sampled_run.output_dir).parent
    with pytest.raises(ConfigError, match=r"temperature: 0\.9 -> 0\.5.*set overwrite"):
        stage(checkpoint, prompts_file, finished, **{**SAMPLED, "temperature": 0.5})
    with pytest.raises(ConfigError, match="prompts_fingerprint"):
        stage(checkpoint, prompts_file, finished, num_prompts=4, **SAMPLED)

    def no_model(*a, **k):
        raise AssertionError("a finished data set of the same settings needs no model")

    monkeypatch.setattr(hf_minitron.loading, "load_causal_lm", no_model)
    again = stage(checkpoint, prompts_file, finished, batch_size=5, **SAMPLED)
    assert again.metrics["reused"] is True and again.output_dir == sampled_run.output_dir
    moved = tmp_path / "moved.jsonl"  # the same prompts under another name are the same setting
    moved.write_bytes(Path(prompts_file).read_bytes())
    assert stage(checkpoint, str(moved), finished, **SAMPLED).metrics["reused"] is True
    monkeypatch.undo()

    # an unfinished run: other settings are refused, overwrite starts again
    out = tmp_path / "out"
    gen.start_checkpoint_dir(f"{out}.checkpoints", settings(model=checkpoint))
    with pytest.raises(ConfigError, match="max_new_tokens: 12 -> 7"):
        stage(checkpoint, prompts_file, out, max_new_tokens=7, temperature=0)
    fresh = stage(checkpoint, prompts_file, out, max_new_tokens=7, temperature=0, overwrite=True)
    assert json.loads((out / gen.MANIFEST_FILE).read_text())["settings"]["max_new_tokens"] == 7
    assert fresh.metrics["resumed"] is False


def test_config_and_prompt_errors_name_the_field(checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="temperature=-1"):
        stage(checkpoint, "builtin", tmp_path / "o", temperature=-1)
    with pytest.raises(ConfigError, match="top_p=0"):
        stage(checkpoint, "builtin", tmp_path / "o", top_p=0)
    with pytest.raises(ConfigError, match="output_dir is not set"):
        run_stage("generate-data", {})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"question": "where is the prompt?"}\n')
    with pytest.raises(DataError, match=r"record 1 has no field 'prompt' \(fields: \['question'\]\)"):
        stage(checkpoint, str(bad), tmp_path / "o")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.checkpoints").exists()


def test_prompt_messages_forms():
    assert gen.prompt_messages({"instruction": "Add", "input": "2 and 3"}) == [
        {"role": "user", "content": "Add\n\n2 and 3"}]
    assert gen.prompt_messages({"prompt": "hi"}, system_prompt="be kind") == [
        {"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}]
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert gen.prompt_messages({"prompt": chat}, system_prompt="ignored") == chat
    with pytest.raises(DataError, match="no user turn"):
        gen.prompt_messages({"prompt": [{"role": "assistant", "content": "a"}]})


def test_cli(checkpoint, prompts_file, tmp_path, capsys):
    from hf_minitron.cli import main

    code = main(["generate-data", "--model", checkpoint, "--prompts", prompts_file, "--output_dir",
                 str(tmp_path / "o"), "--max_new_tokens", "4", "--temperature", "0", "--progress", "false"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["output_dir"] == str((tmp_path / "o" / gen.DATA_FILE).resolve())
    (tmp_path / "p.xyz").write_text("hello\n")
    code = main(["generate-data", "--model", checkpoint, "--prompts", str(tmp_path / "p.xyz"), "--output_dir",
                 str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("hf-minitron generate-data: error: data file") and ".jsonl" in err


def test_two_processes_merge_to_the_single_process_file(checkpoint, prompts_file, tmp_path, sampled_run):
    greedy_single = stage(checkpoint, prompts_file, tmp_path / "greedy1", temperature=0, max_new_tokens=10,
                          batch_size=2)
    sampled_single = stage(checkpoint, prompts_file, tmp_path / "sampled1", max_new_tokens=10, batch_size=2,
                           **SAMPLED)
    for name, temperature, single in (("greedy2", 0.0, greedy_single), ("sampled2", SAMPLED["temperature"],
                                                                        sampled_single)):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parent)}
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        out = tmp_path / name
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               str(WORKER), checkpoint, prompts_file, str(out), str(temperature), str(SAMPLED["top_p"]),
               str(SAMPLED["seed"])]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        ranks = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in (0, 1)]
        assert [r["world_size"] for r in ranks] == [2, 2]
        assert ranks[0]["result"] == ranks[1]["result"]
        assert Path(ranks[0]["result"]["output_dir"]).read_bytes() == Path(single.output_dir).read_bytes()
        assert json.loads((out / gen.MANIFEST_FILE).read_text())["world_size"] == 2
