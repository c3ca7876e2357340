# The README's two commands:  `make demo`  and  `make test`.
# Both create .venv if it is missing and install what is needed; re-running rebuilds nothing that is up to date.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.megadfm-installed
TOKENIZER := artifacts/tokenizer/qwen3

# Keep every cache inside the repo's ignored .cache/ rather than the user's home.
export PIP_CACHE_DIR := $(CURDIR)/.cache/pip
export HF_HOME := $(CURDIR)/.cache/hf
export HF_DATASETS_CACHE := $(CURDIR)/.cache/hf/datasets
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export TRITON_CACHE_DIR := $(CURDIR)/.cache/triton
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/.cache/inductor
export WANDB_DIR := $(CURDIR)/.cache/wandb
export WANDB_CACHE_DIR := $(CURDIR)/.cache/wandb
export WANDB_CONFIG_DIR := $(CURDIR)/.cache/wandb
export WANDB_MODE ?= offline
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install tokenizer demo eval-demo sft-demo ar2dfm scale-smoke test bench gpu-wheels gpu-check-dry clean help

help:
	@echo "make demo   - set up .venv, build the Qwen3 tokenizer, run the main job on the embedded tiny CPU default"
	@echo "make test   - set up .venv and run the whole test suite"
	@echo "make bench  - run the CPU benchmarks in bench/ (ratios against baselines; results in bench/results/LATEST.json;"
	@echo "              BENCH_CONVERT=1 make bench adds the conversion bench, which needs ~13 GB of disk)"
	@echo "make eval-demo - evaluate the demo model (HumanEval, infill, likelihood) next to an AR baseline"
	@echo "make sft-demo  - fine-tune the demo model on the stdlib instruction set (chat format), evaluate held-out instructions"
	@echo "make gpu-wheels    - build artifacts/gpu_wheels/ for bench/gpu_check.sh (needs network; docs/GPU_CHECK.md)"
	@echo "make gpu-check-dry - check that folder and print the GPU check's plan (no GPU needed)"
	@echo "make ar2dfm    - the AR -> DFM experiment (examples/ar_to_dfm/): AR pretrain, export, convert, 4 DFM runs, report (~45 min)"
	@echo "make scale-smoke - a Qwen3-0.6B-shape DFM on 2 CPU ranks: 3 steps, save, resume, offload, export, memory per phase vs DeepSpeed's estimate (~13 min, < 24 GiB)"

$(STAMP): setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: a bare torch requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(STAMP)

$(TOKENIZER)/tokenizer.json: $(STAMP) megadfm/data/qwen_tokenizer_build.py tools/build_qwen_tokenizer.py
	$(PY) tools/build_qwen_tokenizer.py --out $(TOKENIZER) --cache-dir .cache/dl
	@touch $@

tokenizer: $(TOKENIZER)/tokenizer.json

demo: tokenizer
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 bash examples/demo.sh

eval-demo: tokenizer
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 bash examples/eval_demo.sh

# runs `make demo` first (a finished demo run is not retrained): SFT starts from its last checkpoint
sft-demo: demo
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 bash examples/sft_demo.sh

# Two pytest workers (one per CI core): most tests are single-threaded, so one process leaves a core idle.
# --dist loadfile keeps each file, and its module-scoped training runs, in one worker. xdist's default order (files
# with the most tests first) is kept on purpose: it interleaves the 2-rank DeepSpeed files with single-process
# ones; running the slowest (2-rank) files first on both workers oversubscribed the 2 cores and took 789 s
# instead of 711 s. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2

ar2dfm: tokenizer
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) examples/ar_to_dfm/run.py

scale-smoke: tokenizer
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 bash examples/scale_smoke.sh

test: tokenizer
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 TORCHDYNAMO_DISABLE=1 $(PY) -m pytest tests \
		$(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

bench: tokenizer
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 bash bench/run_all.sh

gpu-wheels: tokenizer
	bash bench/gpu_wheels.sh

gpu-check-dry:
	PYTHON=$(PY) bash bench/gpu_check.sh --dry-run

clean:
	rm -rf $(VENV) .cache artifacts runs
