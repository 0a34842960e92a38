# Entry points: `make demo` (whole pipeline on the embedded demo world), `make test`, and
# `make rehearse` (the cluster rehearsal on this machine: images built, the DAG's pods run).
# Each creates the virtual environment on first use, from pinned lock files: `make demo`
# from requirements-demo.lock (what the demo needs, wheels only), `make test` and
# `make rehearse` from requirements.lock (everything: orchestration, model backends, test
# and lint tools).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
# DeepSpeed compiles its CPU ops once; keep them between runs.
export TORCH_EXTENSIONS_DIR ?= $(abspath .cache/torch_extensions)
CLIP_BENCHMARK_VERSION := 1.6.2

.PHONY: demo test test-fast lint fmt env env-demo clean-demo airflow engine image-cpu images rehearse

# The lock files are complete (pip freeze), so pip installs them as listed (--no-deps: no
# resolver pass). --no-compile leaves byte-compiling to the first import of each module:
# compiling all of site-packages up front takes longer than the rest of the install,
# and most of it is never imported.
PIP_INSTALL := $(BIN)/pip install --quiet --no-deps --no-compile

# img2dataset (the ingest downloader) pins webdataset<0.3 and pandas<3: it gets its own venv.
# The demo downloads nothing, so env-demo leaves it out.
IMG2DATASET_VENV ?= .venv-img2dataset

env: $(VENV)/.installed $(IMG2DATASET_VENV)/.installed
env-demo: $(VENV)/.demo-installed

$(VENV)/.installed: requirements.lock pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==26.3
	$(PIP_INSTALL) -r requirements.lock
	# LAION's CLIP_benchmark, for CLIP's ImageNet class names and prompt templates: with its
	# dependencies pip would replace the pinned torch (torchvision 0.29.1 needs torch 2.14.1),
	# so it comes without them; the suite reads its data files only (docs/benchmarks.md).
	$(BIN)/pip install --quiet --no-deps clip-benchmark==$(CLIP_BENCHMARK_VERSION)
	$(PIP_INSTALL) -e .
	# pip check, less the dependencies of CLIP_benchmark left out on purpose (above)
	$(BIN)/pip check | grep -v '^clip-benchmark ' | (! grep .)
	touch $@ $(VENV)/.demo-installed

$(VENV)/.demo-installed: requirements-demo.lock pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==26.3
	$(PIP_INSTALL) -r requirements-demo.lock
	$(PIP_INSTALL) -e .
	$(BIN)/pip check
	touch $@

$(IMG2DATASET_VENV)/.installed: requirements-img2dataset.lock
	$(PYTHON) -m venv $(IMG2DATASET_VENV)
	$(IMG2DATASET_VENV)/bin/pip install --quiet --upgrade pip==26.3
	$(IMG2DATASET_VENV)/bin/pip install --quiet -r requirements-img2dataset.lock
	touch $@

demo: env-demo
	@start=$$(date +%s); \
	dvc repro && \
	echo && echo "== pipeline finished in $$(( $$(date +%s) - start )) s ==" && \
	python -c 'import json; print(json.load(open("reports/qc/report.json"))["gate"]["message"])' && echo && \
	fgclip eval-table --reports reports/eval/stage1 reports/eval/stage2 && echo && \
	python -c 'import json; d = json.load(open("reports/register.json")); print("registry:", d["name"], "v" + d["version"], d["decision"], "-", d["reason"], "- champion: v" + str(d["champion_after"]))' && echo && \
	echo "image shards + truth : data/dataset/{train,heldout}/  (pinned in data/dataset/manifest.json)" && \
	echo "stage outputs        : data/build/{captions,regions,negatives}/  (rejects: *.rejects.jsonl)" && \
	echo "QC report            : reports/qc/report.json  (all metrics: dvc metrics show)" && \
	echo "QC review gallery    : reports/qc/gallery/index.html" && \
	echo "models               : models/{base,stage1,stage2}/  (Hugging Face format)" && \
	echo "evaluation           : reports/eval/{stage1,stage2}/metrics.json, metrics.png" && \
	echo "MLflow runs + models : $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db  (then open http://127.0.0.1:5000)"

test: env
	$(BIN)/python -m pytest -q

# The edit-test loop: every test but the end-to-end ones marked slow.
test-fast: env
	$(BIN)/python -m pytest -q -m "not slow"

# What CI checks before the tests (CONTRIBUTING.md): lint, format, types, layer contracts.
LINT_PATHS := components tests benchmarks dags airflow_settings rehearsal
lint: env
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy
	PYTHONPATH=components $(BIN)/lint-imports --no-cache

fmt: env
	$(BIN)/ruff format $(LINT_PATHS)
	$(BIN)/ruff check --fix $(LINT_PATHS)

# --- container images and the cluster rehearsal (images/README.md, rehearsal/) ---------------
# podman, buildah, runc and mmdebstrap from Debian's packages (installed when missing; root).
engine:
	images/engine/install-host.sh

# The CPU image (run in the rehearsal and in CI); `make images` adds the GPU image (gigabytes
# of CUDA wheels: not in every CI run). Both from the project's own base image and a
# wheelhouse made from the lock; sizes and build times in build/images/*.json.
image-cpu: env engine
	images/build.sh cpu

images: env engine
	images/build.sh cpu gpu

# What to run before a first deployment: the data build DAG's pods, 2-node training with a
# node killed, a failing pod, and the tracking and S3 servers stopped mid-run, all on this
# machine with podman (rehearsal/). Figures in build/rehearsal/report.json.
rehearse: env image-cpu
	@mkdir -p build/rehearsal  # pytest makes --basetemp itself, not its parent (a fresh clone has none)
	@start=$$(date +%s); \
	CONTAINERS_CONF=$(abspath images/engine/containers.conf) $(BIN)/python -m pytest -q \
		--basetemp=$(abspath build/rehearsal/tmp) rehearsal; rc=$$?; \
	echo "== cluster rehearsal finished in $$(( $$(date +%s) - start )) s (exit $$rc) =="; exit $$rc

clean-demo:
	rm -rf data reports models mlflow.db mlruns

# `make airflow`: the Airflow UI on the embedded default: `airflow standalone` (scheduler,
# API server, DAG processor and triggerer in one command) with the DAGs of dags/, its state
# in .airflow/, and the `local` runtime (each task runs its stage command on this machine).
# Another port: make airflow AIRFLOW_PORT=8090
AIRFLOW_PORT ?= 8080
AIRFLOW_DIR := $(abspath .airflow)
AIRFLOW_PASSWORDS := $(AIRFLOW_DIR)/passwords.json
airflow: export AIRFLOW_HOME := $(AIRFLOW_DIR)
airflow: export AIRFLOW__CORE__DAGS_FOLDER := $(abspath dags)
airflow: export AIRFLOW__CORE__LOAD_EXAMPLES := False
airflow: export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION := False
airflow: export AIRFLOW__CORE__PARALLELISM := 4
# airflow_local_settings: the task processes start with the DAG builders, the components and MLflow loaded
airflow: export PYTHONPATH := $(abspath airflow_settings)$(if $(PYTHONPATH),:$(PYTHONPATH))
airflow: export AIRFLOW__API__PORT := $(AIRFLOW_PORT)
airflow: export AIRFLOW__API__BASE_URL := http://localhost:$(AIRFLOW_PORT)
airflow: export AIRFLOW__CORE__EXECUTION_API_SERVER_URL := http://localhost:$(AIRFLOW_PORT)/execution/
airflow: export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS := admin:admin
airflow: export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE := $(AIRFLOW_PASSWORDS)
airflow: env
	@mkdir -p $(AIRFLOW_DIR)
	@test -s $(AIRFLOW_PASSWORDS) || $(BIN)/python -c \
		"import json, secrets; print(json.dumps({'admin': secrets.token_urlsafe(12)}))" > $(AIRFLOW_PASSWORDS)
	@echo "Airflow UI: http://localhost:$(AIRFLOW_PORT)   user: admin   password:" \
		"$$($(BIN)/python -c "import json; print(json.load(open('$(AIRFLOW_PASSWORDS)'))['admin'])")"
	@airflow db migrate > $(AIRFLOW_DIR)/migrate.log
	@$(BIN)/python -m fgclip.orchestration.pools > $(AIRFLOW_DIR)/pools.json && airflow pools import $(AIRFLOW_DIR)/pools.json > /dev/null
	@echo "Trigger fgclip_data_build (the play button, then the form); fgclip_train follows on its dataset. Ctrl-C stops."
	airflow standalone
