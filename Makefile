# Two entry points: `make demo` (whole pipeline on the embedded demo world) and `make test`.
# Both create the virtual environment from the pinned lock file on first use.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
# DeepSpeed compiles its CPU ops once; keep them between runs.
export TORCH_EXTENSIONS_DIR ?= $(abspath .cache/torch_extensions)

.PHONY: demo test env clean-demo

env: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==26.3
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

demo: env
	@start=$$(date +%s); \
	dvc repro && \
	echo && echo "== pipeline finished in $$(( $$(date +%s) - start )) s ==" && \
	dvc metrics show && \
	echo && \
	echo "image shards + truth : data/demo/{train,heldout}/" && \
	echo "stage outputs        : data/build/{captions,regions,negatives}/  (rejects: *.rejects.jsonl)" && \
	echo "QC report            : reports/qc/report.json" && \
	echo "QC review gallery    : reports/qc/gallery/index.html" && \
	echo "MLflow runs          : $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db  (then open http://127.0.0.1:5000)"

test: env
	$(BIN)/python -m pytest -q

clean-demo:
	rm -rf data reports mlflow.db mlruns
