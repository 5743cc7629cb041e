# `make train` and `make test` do all set-up themselves on a fresh clone (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install train smoke evaluate plot test test-full test-gpu lint format clean clean-logs bench

help: ## Show the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "nowcast needs Python 3.11 or newer; found $$($(PYTHON) --version)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(INSTALLED) ## Create .venv and install nowcast with its dev tools

# oneDNN kernels made the default model's CPU training step 1.4x faster here (1.07 s against
# 1.49 s); TensorFlow turns them on by itself only on CPUs with AVX-512. `make bench` measures
# with them too, as training runs.
train: $(INSTALLED) ## Set up, then train the default model on the synthetic set (ARGS=overrides)
	TF_ENABLE_ONEDNN_OPTS=$${TF_ENABLE_ONEDNN_OPTS:-1} $(BIN)/nowcast-train $(ARGS)

# The newest run directory under logs/train, unless RUN=<dir> is given.
RUN ?= $(patsubst %/config.yaml,%,$(firstword $(shell ls -t logs/train/*/config.yaml 2>/dev/null)))

evaluate: $(INSTALLED) ## Score the newest run (or RUN=<dir>) against persistence and optical flow
	$(BIN)/nowcast-evaluate run=$(RUN) $(ARGS)

plot: $(INSTALLED) ## Animate a forecast of the newest run (or RUN=<dir>) with its baselines
	$(BIN)/nowcast-plot run=$(RUN) $(ARGS)

smoke: $(INSTALLED) ## A training run of a few steps on a tiny model
	$(BIN)/nowcast-train debug=fast $(ARGS)

bench: $(INSTALLED) ## Fused ConvLSTM vs keras ConvLSTM2D: speed, FLOP use, pipeline (ARGS=flags)
	TF_ENABLE_ONEDNN_OPTS=$${TF_ENABLE_ONEDNN_OPTS:-1} TF_CPP_MIN_LOG_LEVEL=$${TF_CPP_MIN_LOG_LEVEL:-2} \
		$(BIN)/python scripts/benchmark.py --overwrite $(ARGS)

test: $(INSTALLED) ## Set up, then run the fast test suite
	$(BIN)/pytest -m "not slow and not gpu" $(ARGS)

test-full: $(INSTALLED) ## The whole test suite, slow tests included
	$(BIN)/pytest -m "not gpu" $(ARGS)

test-gpu: $(INSTALLED) ## The tests that need a GPU (skipped where there is none)
	$(BIN)/pytest -m gpu $(ARGS)

lint: $(INSTALLED) ## ruff lint and format check
	$(BIN)/ruff check nowcast tests scripts
	$(BIN)/ruff format --check nowcast tests scripts

format: $(INSTALLED) ## ruff format and import sorting
	$(BIN)/ruff check --fix nowcast tests scripts
	$(BIN)/ruff format nowcast tests scripts

clean-logs: ## Delete the run directories under logs/
	rm -rf logs

clean: ## Delete .venv and caches (keeps data/ and logs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
