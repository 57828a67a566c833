# One-command entry points. `make study` and `make test` install into .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(abspath $(VENV))/bin
# torch 2.13.0 is pinned to its CPU build (constraints.txt). Where pip's indexes do not carry
# it, point pip at PyTorch's CPU wheels: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
PIP    := $(BIN)/python -m pip
RUN    := PATH="$(BIN):$$PATH"

.PHONY: install study test test-fast lint schema lock clean dvc plots-template bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0 $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(PIP) install -q -c constraints.txt -e '.[test]'
	$(PIP) check
	touch $@

## The miniature MM1 study: data -> tokenizer -> train -> eval -> figure (results/figures/).
study: install
	$(RUN) snakemake --cores all

## The whole test suite (what CI runs), slow and multi-process tests included.
test: install lint
	$(RUN) pytest

## The tests without the slow end-to-end runs.
test-fast: install
	$(RUN) pytest -m "not slow"

## Performance benchmarks, each against a baseline run alongside (not tests): about 6 min on 2 cores;
## bench/results/summary.{json,md}. Options: make bench BENCH_ARGS="--quick" (or --only NAME ...).
bench: install
	$(RUN) python bench/run.py $(BENCH_ARGS)

lint: install
	$(RUN) ruff check src tests
	$(RUN) ruff format --check src tests
	$(RUN) mm1 config schema --check workflow/schemas/config.schema.json
	$(RUN) python -m mm1.dvc_stages --check dvc.yaml

## Regenerate the Snakemake schema from the pydantic models.
schema: install
	$(RUN) mm1 config schema --write workflow/schemas/config.schema.json

## Regenerate dvc.yaml from the Snakemake DAG (after changing rules or the study); --check fails if stale.
dvc: install
	$(RUN) python -m mm1.dvc_stages --write dvc.yaml

## The offline `dvc plots show` template: vega/vega-lite/vega-embed inlined (needs npm; into build/).
plots-template: install
	$(RUN) python workflow/scripts/plots_template.py

## Re-pin every package after changing pyproject.toml.
lock: install
	{ echo "# Exact versions of every package in the project environment: \`make install\` installs with"; \
	  echo "# \`-c constraints.txt\`, so two installs get the same versions. Regenerate with \`make lock\`."; \
	  $(PIP) freeze --exclude-editable | grep -v '^mm1'; } > constraints.txt

clean:
	rm -rf results logs benchmarks .snakemake
