# Two commands do all set-up: `make test` and `make demo`. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-fast demo lint venv clean

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $(STAMP)

venv: $(STAMP)

# torch.compile's kernel cache: a fresh folder per run, set before Python starts (a cache left by other
# runs, or one set only once torch is imported, crashed the compile test; see tests/conftest.py).
PYTEST = dir=$$(mktemp -d); TORCHINDUCTOR_CACHE_DIR=$$dir $(PY) -m pytest -q

test: $(STAMP)
	@$(PYTEST); status=$$?; rm -rf "$$dir"; exit $$status

test-fast: $(STAMP)
	@$(PYTEST) -m "not slow"; status=$$?; rm -rf "$$dir"; exit $$status

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

# A rerun reuses or continues what demo/ holds; `make demo DEMO_FLAGS=--overwrite` starts it over.
demo: $(STAMP)
	$(PY) -m tools.demo --out demo $(DEMO_FLAGS)

clean:
	rm -rf demo .pytest_cache
