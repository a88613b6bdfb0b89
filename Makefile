# birdstack — everything goes through a local virtual environment in .venv/.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,lite,onnx,birdnet]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install birdstack with all extras

demo: $(STAMP)  ## the main job on the embedded demo data
	$(BIN)/birdstack demo --out outputs/demo

test: $(STAMP)  ## the whole test suite
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks scripts
	$(BIN)/ruff check --fix src tests benchmarks scripts

bench: $(STAMP)  ## speed benchmarks (print ratios against baselines measured in the same run)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/features.py
	$(BIN)/python benchmarks/birdnet_embeddings.py
	$(BIN)/python benchmarks/training.py
	$(BIN)/python benchmarks/inference.py

clean:
	rm -rf outputs .pytest_cache
