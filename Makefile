# sparse-ft — `make run` (offline quickstart) and `make test` install into .venv first if needed.
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install run test test-fast bench reproduce report-reproduce clean env-file

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet -e '.[test]'
	touch $@

# The main job, offline: fine-tune the bundled pretrained MiniLM on the generated NLI task.
run: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PYTHON) run.py experiment=quickstart $(ARGS)

# the whole suite, the tests marked slow included (CI runs this: .ci/run)
test: install
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

# a quick local loop: the suite without the tests marked slow (torchrun, real multiruns and
# subprocess runs of run.py, every job of the sweep files), i.e. pytest -m "not slow"
test-fast: install
	$(PYTHON) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: install
	$(PYTHON) -m sparse_ft.bench --out bench.json $(ARGS)

# The CPU reproduction of the five papers (~2-2.5 h on 2 cores; an interrupted one continues),
# then docs/reproduction/README.md. `make report-reproduce` only regenerates the report.
reproduce: install
	PYTHON=$(PYTHON) bash sweeps/reproduce_cpu.sh outputs/reproduce

report-reproduce: install
	$(PYTHON) -m sparse_ft.report outputs/reproduce --reproduce --out docs/reproduction

# environment.yml mirrors pyproject.toml's pins (tests/tools/test_envfile.py checks it)
env-file: install
	$(PYTHON) -m sparse_ft.tools.envfile > environment.yml

clean:
	rm -rf outputs multirun wandb bench.json .pytest_cache
