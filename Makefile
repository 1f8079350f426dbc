# The front door. `make run` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export PYTHONPATH := $(CURDIR)
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export GX_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1

SHARED ?= ../shared
SOURCE ?=
WEIGHTS ?=
ORIGINALS ?=
FLOW_ARGS ?=

.PHONY: setup run real repro sweep test test-fast lock pin push pull clean prefect-server models rollback serve bento bench bench-full monitor help

help:
	@echo "make run     - set up, then run the whole pipeline as a Prefect flow: dvc stages, gate, promotion"
	@echo "               (default data: synthetic, offline; FLOW_ARGS=--dask for a local Dask cluster)"
	@echo "make repro   - the DVC pipeline alone (no gate, no promotion)"
	@echo "make prefect-server - a local Prefect server + UI on http://127.0.0.1:4200 (make run then reports there)"
	@echo "make models  - the BentoML store's models with their metrics; * = promoted"
	@echo "make rollback [TAG=...] - promote TAG, or the previously promoted model"
	@echo "make serve   - bentoml serve the promoted model on http://127.0.0.1:3000 (page: /ui/)"
	@echo "make bento   - bentoml build: a bento that carries the promoted model"
	@echo "make bench   - the benchmarks in bench/ (serving, export, pipeline --quick; ~8 min), tables with ratios"
	@echo "make bench-full - the same, 3 serving rounds and a full real-data pipeline run (~20 min)"
	@echo "make monitor AUDIT=<audit.jsonl> [CARD=...] [SINCE=<ISO time> | LAST=N] [MONITOR_OUT=<dir>] - drift of the"
	@echo "               service's audit trail vs the promoted model's validation set (Prefect flow cxr-monitor)"
	@echo "make test    - set up, then run the test suite"
	@echo "make real    - switch params to ../shared (data, originals, ImageNet weights), then run"
	@echo "make sweep   - summarise the DVC experiments (dvc exp run --queue ...) by configuration over seeds"
	@echo "make pin SRC=<folder|zip|url|synthetic> - pin a data set in data/pinned (data.dvc)"
	@echo "make lock    - re-resolve requirements.lock from requirements.in"

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==0.13.8
	$(BIN)/uv pip sync --python $(BIN)/python -q requirements.lock
	touch $@

lock: $(VENV)/.installed
	$(BIN)/uv pip compile requirements.in -o requirements.lock --python $(BIN)/python

run: setup
	@if [ -n "$(SOURCE)$(WEIGHTS)$(ORIGINALS)" ]; then \
	  $(BIN)/python -m cxr.params set $(if $(SOURCE),download.source=$(SOURCE)) $(if $(WEIGHTS),train.weights=$(WEIGHTS)) \
	    $(if $(ORIGINALS),evaluate.originals=$(ORIGINALS)); fi
	$(BIN)/python -m pipelines.flow $(FLOW_ARGS)

real:
	$(MAKE) run SOURCE=$(SHARED)/data/chest_xray_224 ORIGINALS=$(SHARED)/data/originals \
	  WEIGHTS=$(SHARED)/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5

repro: setup
	$(BIN)/dvc repro

sweep: setup
	$(BIN)/python bench/sweep.py $(if $(NAMES),--names '$(NAMES)')

test: setup
	$(BIN)/pytest

test-fast: setup
	$(BIN)/pytest -m "not slow"

pin: setup
	@test -n "$(SRC)" || (echo "usage: make pin SRC=<folder|zip|url|synthetic>"; exit 2)
	$(BIN)/python -m stages.download --pin "$(SRC)"
	test -f data.dvc || printf 'outs:\n- path: data/pinned\n' > data.dvc
	$(BIN)/dvc add data/pinned
	@echo "pinned: commit data.dvc and data/pinned.ref, then 'dvc push' to share the data"

push: setup
	$(BIN)/dvc push

pull: setup
	$(BIN)/dvc pull data.dvc

prefect-server: setup
	PREFECT_HOME=$${PREFECT_HOME:-$(CURDIR)/.prefect} $(BIN)/prefect server start --host 127.0.0.1 --port 4200

models: setup
	$(BIN)/python -m cxr.ops.registry list

rollback: setup
	$(BIN)/python -m cxr.ops.registry rollback $(TAG)

serve: setup
	$(BIN)/bentoml serve service:CXRScreening --host 127.0.0.1 --port $${PORT:-3000}

bento: setup
	$(BIN)/bentoml build

bench: setup
	$(BIN)/python bench/serving.py --quick
	$(BIN)/python bench/export.py
	$(BIN)/python bench/pipeline.py --quick

bench-full: setup
	$(BIN)/python bench/serving.py --variants service,service-1worker --rounds 3
	$(BIN)/python bench/export.py
	$(BIN)/python bench/pipeline.py --full

monitor: setup
	@test -n "$(AUDIT)" || (echo "usage: make monitor AUDIT=<audit.jsonl> [CARD=...] [SINCE=<ISO time> | LAST=N] [MONITOR_OUT=<dir>]"; exit 2)
	$(BIN)/python -m pipelines.monitor --audit "$(AUDIT)" $(if $(CARD),--card "$(CARD)") $(if $(SINCE),--since "$(SINCE)") \
	  $(if $(LAST),--last $(LAST)) $(if $(MONITOR_OUT),--out "$(MONITOR_OUT)")

clean:
	rm -rf data/raw data/prepared models reports/validation
