"""Bad input through the CLI: every refusal is one line (``hf-minitron COMMAND: error: ...``, exit code 2, no
traceback) that names the field or file, comes before any model loads, and leaves nothing at the output location."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_minitron.cli import main
from hf_minitron.testing import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    tok = tiny_tokenizer()
    model = tiny_model("llama")
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    model.save_pretrained(root / "no_tokenizer")
    (root / "no_config").mkdir()
    (root / "no_config" / "notes.txt").write_text("not a model")
    bert = root / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    tok.save_pretrained(bert)
    gpt2 = root / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    tok.save_pretrained(gpt2)
    other = root / "other_tok"
    model.save_pretrained(other)
    tok.save_pretrained(other)
    vocab_file = other / "tokenizer.json"
    spec = json.loads(vocab_file.read_text())
    vocab = spec["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[10:12]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two ids swapped: a different token -> id map
    vocab_file.write_text(json.dumps(spec))
    (root / "docs.txt").write_text("\n".join(f"document {i} about pruning and distillation" for i in range(40)))
    (root / "empty.txt").write_text("\n\n")
    (root / "binary.txt").write_bytes(b"\x00\x01\x02binary\x00" * 10)
    (root / "bad.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n\n{"text": c}\n')
    (root / "notes.csv").write_text("id,score\n1,2\n3,4\n")
    (root / "paper.pdf").write_text("%PDF-1.4")
    (root / "weights.bin").write_text("x")
    (root / "a_file").write_text("x")
    (root / "busy").mkdir()
    (root / "busy" / "keep.txt").write_text("keep")
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "broken.yaml").write_text("stages: [unclosed\n")
    (root / "unknown_key.yaml").write_text("model: x\nnum_sampels: 3\n")
    return root


def _recipe(root: Path, name: str, text: str) -> str:
    path = root / f"{name}.yaml"
    path.write_text(text)
    return str(path)


# (id, argv builder, words the message must hold). `{r}` is the assets folder, `{o}` the output location.
M, D = "--model {r}/model", "--data {r}/docs.txt"
CASES = [
    # --- data files (every stage reads them the same way) ---
    ("data-missing", f"importance {M} --data {{r}}/missing.txt --output_dir {{o}}", ["missing.txt", "does not exist"]),
    ("data-directory", f"importance {M} --data {{r}}/busy --output_dir {{o}}", ["busy", "is a directory"]),
    ("data-binary", f"importance {M} --data {{r}}/binary.txt --output_dir {{o}}", ["binary.txt", "binary"]),
    ("data-bad-jsonl-line", f"importance {M} --data {{r}}/bad.jsonl --output_dir {{o}}", ["bad.jsonl", "line 4"]),
    ("data-csv-no-text", f"importance {M} --data {{r}}/notes.csv --output_dir {{o}}", ["notes.csv", "'text'", "text_field"]),
    ("data-empty", f"importance {M} --data {{r}}/empty.txt --output_dir {{o}}", ["empty.txt", "holds no"]),
    ("data-unsupported-suffix", f"importance {M} --data {{r}}/paper.pdf --output_dir {{o}}", ["paper.pdf", ".pdf", ".jsonl"]),
    ("distill-data-csv-no-text", "distill --student {r}/model --teacher {r}/model --data {r}/notes.csv --output_dir {o} --use_cpu",
     ["columns", "text"]),
    ("distill-data-bad-jsonl", "distill --student {r}/model --teacher {r}/model --data {r}/bad.jsonl --output_dir {o} --use_cpu",
     ["bad.jsonl", "line 4"]),
    ("cache-data-binary", "cache-teacher --teacher {r}/model --data {r}/binary.txt --output_dir {o}", ["binary.txt", "binary"]),
    # --- importance settings ---
    ("num-samples-0", f"importance {M} {D} --output_dir {{o}} --num_samples 0", ["num_samples=0"]),
    ("seq-len-1", f"importance {M} {D} --output_dir {{o}} --seq_len 1", ["seq_len=1"]),
    ("batch-size-negative", f"importance {M} {D} --output_dir {{o}} --batch_size -1", ["batch_size=-1"]),
    ("batch-too-large", f"importance {M} {D} --output_dir {{o}} --batch_size 100000 --seq_len 4096", ["batch_size", "GiB"]),
    ("depth-criterion-unknown", f"importance {M} {D} --output_dir {{o}} --depth_criteria foo", ["depth_criteria", "foo"]),
    ("block-without-sizes", f"importance {M} {D} --output_dir {{o}} --depth_criteria block", ["block_sizes"]),
    ("block-size-0", f"importance {M} {D} --output_dir {{o}} --block_sizes 0", ["block_sizes", "0"]),
    ("aggregation-choice", f"importance {M} {D} --output_dir {{o}} --aggregation_seq max", ["aggregation_seq", "max"]),
    ("dtype-choice", f"importance {M} {D} --output_dir {{o}} --dtype float8", ["dtype", "float8"]),
    ("importance-no-data", f"importance {M} --output_dir {{o}}", ["data is not set"]),
    ("importance-no-output", f"importance {M} {D}", ["output_dir is not set"]),
    # --- output locations ---
    ("output-is-file", f"importance {M} {D} --output_dir {{r}}/a_file", ["a_file", "is a file"]),
    ("output-under-file", f"importance {M} {D} --output_dir {{r}}/a_file/sub", ["a_file", "under"]),
    ("output-not-empty", f"importance {M} {D} --output_dir {{r}}/busy", ["busy", "not empty", "overwrite"]),
    ("prune-output-not-empty", "prune --model {r}/model --drop_layers 1 --output_dir {r}/busy", ["not empty"]),
    # --- model sources ---
    ("model-missing", f"importance --model {{r}}/nothing {D} --output_dir {{o}}", ["nothing", "does not exist"]),
    ("model-no-config", f"importance --model {{r}}/no_config {D} --output_dir {{o}}", ["no_config", "config.json"]),
    ("model-not-causal", f"importance --model {{r}}/bert {D} --output_dir {{o}}", ["not a causal LM", "BertForMaskedLM"]),
    ("model-no-tokenizer", f"importance --model {{r}}/no_tokenizer {D} --output_dir {{o}}", ["no tokenizer"]),
    ("model-unsupported", f"importance --model {{r}}/gpt2 {D} --output_dir {{o}}", ["gpt2", "supported"]),
    ("model-not-gguf-file", f"importance --model {{r}}/weights.bin {D} --output_dir {{o}}", ["weights.bin", ".gguf"]),
    ("student-not-causal", "distill --student {r}/bert --teacher {r}/model --data {r}/docs.txt --output_dir {o} --use_cpu",
     ["student", "not a causal LM"]),
    ("teacher-missing", "distill --student {r}/model --teacher {r}/nothing --data {r}/docs.txt --output_dir {o} --use_cpu",
     ["nothing", "does not exist"]),
    ("prune-model-no-tokenizer", "prune --model {r}/no_tokenizer --drop_layers 1 --output_dir {o}", ["no tokenizer"]),
    # --- command line and --config files ---
    ("unknown-flag", f"importance {M} {D} --output_dir {{o}} --num_sampels 3", ["--num_sampels", "--num_samples"]),
    ("unknown-command", "prnue --model x", ["prnue", "prune"]),
    ("config-missing", f"importance {M} --config {{r}}/nope.yaml --output_dir {{o}}", ["nope.yaml", "no such file"]),
    ("config-not-mapping", f"importance {M} --config {{r}}/list.yaml --output_dir {{o}}", ["list.yaml", "mapping"]),
    ("config-invalid-yaml", f"importance {M} --config {{r}}/broken.yaml --output_dir {{o}}", ["broken.yaml", "YAML"]),
    ("config-unknown-key", f"importance {M} --config {{r}}/unknown_key.yaml --output_dir {{o}}", ["num_sampels", "num_samples"]),
    ("int-flag-not-int", f"importance {M} {D} --output_dir {{o}} --num_samples many", ["num_samples", "many"]),
    ("distill-tokenizers-differ", "distill --student {r}/other_tok --teacher {r}/model --data {r}/docs.txt "
     "--output_dir {o} --use_cpu", ["student and teacher", "tokenizer"]),
    # --- pruning targets ---
    ("prune-no-target", "prune --model {r}/model --output_dir {o}", ["no target given"]),
    ("prune-too-wide", "prune --model {r}/model --drop_layers 1 --hidden_size 80 --output_dir {o}",
     ["hidden_size=80", "64"]),
    ("prune-ffn-too-wide", "prune --model {r}/model --drop_layers 1 --intermediate_size 999 --output_dir {o}",
     ["intermediate_size=999"]),
    ("prune-heads-not-multiple", "prune --model {r}/model --drop_layers 1 --num_attention_heads 3 --output_dir {o}",
     ["num_attention_heads=3", "num_key_value_heads"]),
    ("prune-kv-not-divisor", "prune --model {r}/model --drop_layers 1 --num_attention_heads 3 --num_key_value_heads 3 "
     "--output_dir {o}", ["num_key_value_heads=3"]),
    ("prune-drop-out-of-range", "prune --model {r}/model --drop_layers 9 --output_dir {o}", ["drop_layers", "[0, 3]"]),
    ("prune-drop-all", "prune --model {r}/model --drop_layers 0 1 2 3 --output_dir {o}", ["drop_layers", "at least one"]),
    ("prune-drop-and-num", "prune --model {r}/model --drop_layers 1 --num_hidden_layers 2 --output_dir {o}",
     ["num_hidden_layers", "drop_layers"]),
    ("prune-layers-0", "prune --model {r}/model --num_hidden_layers 0 --output_dir {o}", ["num_hidden_layers=0"]),
    ("prune-width-without-scores", "prune --model {r}/model --intermediate_size 64 --output_dir {o}", ["scores"]),
    ("prune-scores-not-scores", "prune --model {r}/model --intermediate_size 64 --scores {r}/busy --output_dir {o}",
     ["busy", "no importance scores"]),
    ("prune-depth-criterion-choice", "prune --model {r}/model --num_hidden_layers 2 --depth_criterion best "
     "--output_dir {o}", ["depth_criterion", "best"]),
    # --- distillation settings ---
    ("distill-no-student", "distill --data {r}/docs.txt --output_dir {o} --use_cpu", ["student is not set"]),
    ("distill-no-data", "distill --student {r}/model --output_dir {o} --use_cpu", ["data is not set"]),
    ("distill-no-output", "distill --student {r}/model --data {r}/docs.txt --use_cpu", ["output_dir is not set"]),
    ("distill-max-length", "distill --student {r}/model --teacher {r}/model --data {r}/docs.txt --output_dir {o} "
     "--use_cpu --max_length 100000", ["max_length=100000", "max_position_embeddings"]),
    ("distill-negative-lr", "distill --student {r}/model --data {r}/docs.txt --output_dir {o} --use_cpu "
     "--learning_rate -0.1", ["learning_rate"]),
    ("distill-kd-loss-choice", "distill --student {r}/model --data {r}/docs.txt --output_dir {o} --use_cpu "
     "--kd_loss kl", ["kd_loss", "kl"]),
    ("distill-temperature-0", "distill --student {r}/model --data {r}/docs.txt --output_dir {o} --use_cpu "
     "--temperature 0", ["temperature"]),
    ("distill-jsd-beta", "distill --student {r}/model --data {r}/docs.txt --output_dir {o} --use_cpu "
     "--kd_loss jsd --jsd_beta 1.5", ["jsd_beta"]),
    ("distill-max-samples-0", "distill --student {r}/model --data {r}/docs.txt --output_dir {o} --use_cpu "
     "--max_samples 0", ["max_samples=0"]),
    ("distill-cache-and-data", "distill --student {r}/model --data {r}/docs.txt --teacher_cache {r}/busy "
     "--output_dir {o} --use_cpu", ["teacher_cache", "data"]),
    ("distill-cache-missing", "distill --student {r}/model --teacher_cache {r}/nocache --output_dir {o} --use_cpu",
     ["nocache", "does not exist"]),
    # --- teacher cache settings ---
    ("cache-top-k-0", "cache-teacher --teacher {r}/model --data {r}/docs.txt --output_dir {o} --top_k 0", ["top_k=0"]),
    ("cache-top-k-vocab", "cache-teacher --teacher {r}/model --data {r}/docs.txt --output_dir {o} --top_k 100000",
     ["top_k=100000", "vocabulary"]),
    ("cache-exact-head-unsampled", "cache-teacher --teacher {r}/model --data {r}/docs.txt --output_dir {o} "
     "--exact_head 2", ["exact_head", "sampled"]),
    ("cache-exact-head-range", "cache-teacher --teacher {r}/model --data {r}/docs.txt --output_dir {o} --sampled "
     "--top_k 4 --exact_head 4", ["exact_head=4"]),
    ("cache-temperature", "cache-teacher --teacher {r}/model --data {r}/docs.txt --output_dir {o} --temperature -1",
     ["temperature"]),
    ("cache-max-length", "cache-teacher --teacher {r}/model --data {r}/docs.txt --output_dir {o} --max_length 1",
     ["max_length=1"]),
    ("cache-output-is-file", "cache-teacher --teacher {r}/model --data {r}/docs.txt --output_dir {r}/a_file",
     ["a_file", "is a file"]),
    # --- recipes ---
    ("recipe-missing", "run {r}/nothing.yaml", ["nothing.yaml", "does not exist"]),
    ("recipe-invalid-yaml", "run {r}/broken.yaml", ["broken.yaml", "YAML"]),
    ("recipe-unknown-stage", "run @stages: {{prunee: {{}}}}", ["prunee", "prune"]),
    ("recipe-unknown-field", "run @stages: {{distill: {{max_stepz: 3}}}}", ["max_stepz", "max_steps"]),
    ("recipe-no-output-dir", "run @teacher: x\nstages: {{importance: {{}}}}\n!", ["output_dir is not set"]),
    ("recipe-no-stages", "run @stages: {{}}", ["stages"]),
    ("recipe-missing-input", "run @stages: {{distill: {{max_steps: 1}}}}", ["student", "prune"]),
    ("recipe-target-too-large", "run @stages: {{importance: {{}}, prune: {{intermediate_size: 9999}}}}",
     ["intermediate_size=9999"]),
    ("recipe-unknown-top-key", "run @stagez: {{}}", ["stagez", "stages"]),
    ("recipe-from-unknown", "run @stages: {{importance: {{}}}} --from prune", ["prune", "not in this recipe"]),
    ("recipe-other-run", "run @stages: {{importance: {{}}}} --output_dir {r}/busy", ["busy", "holds no recipe run"]),
    ("info-missing", "info {r}/nothing", ["nothing", "does not exist"]),
]


def _argv(template: str, root: Path, out: Path) -> list[str]:
    if template.startswith("run @"):  # an inline recipe: written to a file with the assets' model and data
        body = template[len("run @"):]
        body, _, rest = body.partition(" --")
        text = body.replace("{{", "{").replace("}}", "}")
        if text.endswith("!"):
            text = text[:-1]
        else:
            text = f"output_dir: {out}\nteacher: {root}/model\ndata: {root}/docs.txt\n{text}\n"
        path = _recipe(root, f"recipe_{abs(hash(template))}", text)
        extra = ("--" + rest).format(r=root, o=out).split() if rest else []
        return ["run", path, *extra]
    return template.format(r=root, o=out).split()


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr("hf_minitron.loading.load_causal_lm", refuse)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", refuse)


def test_the_table_is_big_and_distinct():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("template, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clean_line(assets, tmp_path, capsys, no_model_loads, template, words):
    out = tmp_path / "out"
    before = sorted(p.name for p in (assets / "busy").iterdir())
    code = main(_argv(template, assets, out))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("hf-minitron "), err
    assert ": error: " in last, err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    assert not out.exists()
    assert sorted(p.name for p in (assets / "busy").iterdir()) == before
