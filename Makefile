# The two commands: `make demo` (main job end to end) and `make test`. Both build .venv first.
SHELL := /bin/bash
VENV ?= .venv
PYTHON_BOOT ?= python3
PY := $(CURDIR)/$(VENV)/bin/python
DS ?=

export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__PARALLELISM := 4
export AIRFLOW_CONN_SPARK_DEFAULT ?= {"conn_type":"spark","host":"local[2]"}
export SPARK_LOCAL_IP := 127.0.0.1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv prereqs demo test test-fast lint bench-etl airflow-ui clean backfill report

# Python 3.11 and Java >= 17, checked before the venv is made (and on every venv / demo / test):
# one line per missing prerequisite, then stop. The interpreter checked is the venv's once it exists.
prereqs:
	@$(if $(wildcard $(VENV)/bin/python),VENV_DIR=$(VENV) $(SHELL) scripts/check_prereqs.sh $(VENV)/bin/python,$(SHELL) scripts/check_prereqs.sh "$(PYTHON_BOOT)")

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml | prereqs
	test -x $(VENV)/bin/python || $(PYTHON_BOOT) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip==25.3
	$(VENV)/bin/pip install --quiet -r requirements.txt -c constraints.txt
	$(VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

venv: prereqs $(VENV)/.installed

demo: venv
	$(PY) scripts/demo.py

# Test workers: every core by default (TEST_WORKERS=0 runs in one process). Whole files go to one
# worker (--dist loadfile) so module fixtures are built once, in the order of tests/conftest.py
# (longest first; --no-loadscope-reorder keeps it).
TEST_WORKERS ?= auto
test: venv
	$(PY) -m pytest -m "not gpu" -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: venv
	$(PY) -m pytest -m "not gpu and not slow and not airflow" -q

lint: venv
	$(VENV)/bin/ruff check .

bench-etl: venv
	$(PY) bench/etl.py

airflow-ui: venv
	airflow standalone

clean:
	rm -rf data .airflow

START ?=
END ?=
DAG ?= behavior_etl
backfill: venv
	airflow db migrate >/dev/null
	$(PY) scripts/backfill.py $(DAG) $(START) $(END)

# The analyst report of one date: <data root>/reports/ds=$(DS)/index.html (static, self-contained).
DATA_ROOT ?=
report: venv
	@test -n "$(DS)" || { echo "usage: make report DS=YYYY-MM-DD [DATA_ROOT=dir]" >&2; exit 2; }
	$(PY) -m export.report --ds $(DS) $(if $(DATA_ROOT),--data-root $(DATA_ROOT))

# A standalone Spark master + two 1-core workers on 127.0.0.1 (state, logs: .spark-cluster/). Use it with
# AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type":"spark","host":"spark://127.0.0.1","port":7077}' PIPELINE_PROFILE=cluster.
.PHONY: spark-cluster-up spark-cluster-down
spark-cluster-up: venv
	$(PY) scripts/spark_cluster.py start

spark-cluster-down:
	$(PY) scripts/spark_cluster.py stop

# One long-lived Spark Connect application on 127.0.0.1:15002 with the profile's settings (state, log:
# .spark-connect/). Use it with PIPELINE__SPARK__REMOTE=sc://127.0.0.1:15002: the Spark tasks run as its clients.
.PHONY: spark-connect-up spark-connect-down
spark-connect-up: venv
	$(PY) scripts/spark_connect.py start

spark-connect-down:
	$(PY) scripts/spark_connect.py stop
