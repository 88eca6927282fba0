# Two commands on a fresh machine: `make demo` and `make test`. Both create/reuse .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
GLUE ?= $(wildcard ../shared/glue)
DATA_FLAG := $(if $(GLUE),--data-dir $(GLUE),)

.PHONY: demo example example-train test lint bench gpu-check clean-demo

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) run_study.py run studies/demo.yaml $(DATA_FLAG)
	$(PY) run_study.py report --name demo --out reports/demo

# The offline example report (reports/offline-glue, README there): four tasks, all eight methods, holdout
# selection, then five-seed confirmations of every method's best point, then the report.
# `make example` reports from the committed database (EXAMPLE_SAVED, xz), unpacked to EXAMPLE_COPY: seconds, no
# training. `make example-train` trains it all again (44 min on 2 idle CPU cores), packs its database into
# EXAMPLE_SAVED and reports from that. The variables let a test run the same commands on tiny copies of the study
# files (tests/test_example.py).
EXAMPLE_TASKS := sst2 stsb mrpc cola
EXAMPLE_STUDIES := studies
EXAMPLE_DB_FILE := studies/offline-glue.db
EXAMPLE_DB := sqlite:///$(EXAMPLE_DB_FILE)
EXAMPLE_OUT := reports/offline-glue
EXAMPLE_SAVED := $(EXAMPLE_OUT)/offline-glue.db.xz
EXAMPLE_COPY := studies/offline-glue-saved.db
EXAMPLE_SEEDS := 5
CONFIRM := $(PY) run_study.py confirm --name offline-glue --top 1 --seeds $(EXAMPLE_SEEDS) --storage $(EXAMPLE_DB) $(DATA_FLAG)
example: $(VENV)/.installed
	$(PY) -m harness.tools.snapshot unpack $(EXAMPLE_SAVED) $(EXAMPLE_COPY)
	$(PY) run_study.py report --name offline-glue --storage sqlite:///$(EXAMPLE_COPY) --out $(EXAMPLE_OUT)

example-train: $(VENV)/.installed
	for task in $(EXAMPLE_TASKS); do \
		$(PY) run_study.py run $(EXAMPLE_STUDIES)/offline-glue-$$task.yaml --storage $(EXAMPLE_DB) --workers 2 $(DATA_FLAG) \
			|| exit 1; \
	done
	# two confirmation processes share the points through their claims (one thread each: faster on 2 cores)
	OMP_NUM_THREADS=1 $(CONFIRM) & other=$$!; OMP_NUM_THREADS=1 $(CONFIRM); mine=$$?; wait $$other && exit $$mine
	$(PY) -m harness.tools.snapshot pack $(EXAMPLE_DB_FILE) $(EXAMPLE_SAVED)
	$(MAKE) example EXAMPLE_SAVED=$(EXAMPLE_SAVED) EXAMPLE_COPY=$(EXAMPLE_COPY) EXAMPLE_OUT=$(EXAMPLE_OUT)

test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q --durations=15 tests

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The prepared GPU check (README, "GPU check"); `make gpu-check ARGS=--cpu` runs it tiny on the CPU.
gpu-check: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) -m bench.gpu_check $(ARGS) $(DATA_FLAG)

bench: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) -m bench.trial --profile $(DATA_FLAG)

clean-demo:
	rm -f studies/harness.db studies/harness.db-* && rm -rf reports/demo
