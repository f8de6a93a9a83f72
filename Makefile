# Two commands on a fresh machine: `make demo` and `make test`. Both install first.
VENV        ?= .venv
PY          := $(VENV)/bin/python
# A GPU box overrides this (e.g. TORCH_SPEC="torch==2.11.0"); torch goes in first so no resolver pulls another.
TORCH_SPEC  ?= torch==2.13.0
# DeepSpeed ships only an sdist: built against the installed torch (no isolated build env, which would fetch one).
DEEPSPEED_SPEC ?= deepspeed==0.19.8
STAMP       := $(VENV)/.scgrn-installed
DEMO_DIR    ?= demo_out
# make demo DATA="a.h5ad b.h5ad" PRIOR=edges.tsv : the same pipeline on your raw-count files and a TF->target table
DATA        ?=
PRIOR       ?=
PYTEST_ARGS ?=
# two pytest-xdist workers (tests/conftest.py gives each one torch thread); TEST_WORKERS=0 runs in one process
TEST_WORKERS ?= 2

.PHONY: install test lint demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -c "import deepspeed" 2>/dev/null || $(PY) -m pip install -q --no-build-isolation "$(DEEPSPEED_SPEC)"
	$(PY) -m pip install -q -e '.[dev,bench,grnboost,eval]'
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check .

test: install lint
	$(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup) $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/scgrn demo --out $(DEMO_DIR) $(if $(DATA),--data $(DATA)) $(if $(PRIOR),--prior $(PRIOR))

bench: install
	$(VENV)/bin/scgrn bench loader
	$(VENV)/bin/scgrn bench shard

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache
