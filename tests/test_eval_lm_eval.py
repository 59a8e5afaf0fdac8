"""lm-evaluation-harness on the already loaded model, offline, with a local YAML task over a local JSONL file."""

import json
import sys

import pytest
import torch

from hf_minitron.errors import ConfigError
from hf_minitron.loading import save_model
from hf_minitron.stages import run_stage
from hf_minitron.testing import tiny_model

pytest.importorskip("lm_eval", reason="the eval extra (lm-eval) is not installed")

DOCS = [{"question": f"Q{i}: {a} plus {b} is", "choices": [f" {a + b}", f" {a * b + 7}", " many"], "answer": i % 3}
        for i, (a, b) in enumerate([(2, 3), (1, 1), (4, 5), (9, 2), (3, 3), (7, 1), (0, 6), (8, 8)])]


@pytest.fixture
def local_task(tmp_path):
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mc.yaml").write_text(f"""task: tiny_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""")
    return tasks


@torch.no_grad()
def reference_accuracy(model, tokenizer) -> float:
    """Multiple choice by hand: the choice (after lm-eval's " " target delimiter) with the highest summed
    log-likelihood given the question."""
    right = 0
    for doc in DOCS:
        ctx = tokenizer(doc["question"], add_special_tokens=False).input_ids
        scores = []
        for choice in doc["choices"]:
            cont = tokenizer(" " + choice, add_special_tokens=False).input_ids
            ids = torch.tensor([ctx + cont])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
            scores.append(sum(logp[len(ctx) - 1 + k, t].item() for k, t in enumerate(cont)))
        right += max(range(len(scores)), key=scores.__getitem__) == doc["answer"]
    return right / len(DOCS)


def test_lm_eval_runs_on_the_loaded_model(tmp_path, tokenizer, local_task, monkeypatch):
    import transformers

    model = tiny_model("llama", seed=3)
    path = save_model(model, tokenizer, tmp_path / "m")
    loads = []
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def counting(cls, *a, **k):
        loads.append(a[0] if a else k)
        return real(cls, *a, **k)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(counting))
    result = run_stage("eval", {"student": str(path), "throughput": False, "lm_eval_tasks": ["tiny_local_mc"],
                                "lm_eval_include_path": str(local_task), "output_dir": str(tmp_path / "eval")})
    assert len(loads) == 1  # the stage's own load; lm-eval reuses that model
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    got = report["models"][0]["lm_eval"]
    expected = reference_accuracy(model, tokenizer)
    assert 0 < expected < 1  # a task the model neither always passes nor always fails
    assert got["tiny_local_mc"]["acc"] == pytest.approx(expected) and got["_samples"]["tiny_local_mc"] == len(DOCS)
    assert report["settings"]["lm_eval"]["tasks"] == ["tiny_local_mc"]
    assert f"| lm-eval tiny_local_mc acc | {expected:.4f} |" in (tmp_path / "eval" / "eval.md").read_text()
    assert result.metrics["report"].endswith("eval.json")


def test_unknown_task_and_missing_extra(tmp_path, tokenizer, local_task, monkeypatch):
    import hf_minitron.loading

    path = save_model(tiny_model("llama"), tokenizer, tmp_path / "m")
    monkeypatch.setattr(hf_minitron.loading, "load_causal_lm", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(ConfigError, match=r"unknown task\(s\) \['no_such_task'\]"):
        run_stage("eval", {"student": str(path), "throughput": False, "lm_eval_tasks": ["no_such_task"],
                           "lm_eval_include_path": str(local_task), "output_dir": str(tmp_path / "e1")})
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"pip install 'hf-minitron\[eval\]'"):
        run_stage("eval", {"student": str(path), "lm_eval_tasks": ["tiny_local_mc"], "output_dir": str(tmp_path / "e2")})
