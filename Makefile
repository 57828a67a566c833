# One-command entry points. `make study` and `make test` install into .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(abspath $(VENV))/bin
# torch 2.13.0 is pinned by version (constraints.txt), so the default index serves it (on Linux
# PyPI's build is the CUDA one). For the CPU-only build (no CUDA libraries, ~5x smaller):
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
# For a GPU cluster, the index of the CUDA version its driver supports, e.g. .../whl/cu128.
TORCH_INDEX ?=
PIP    := $(BIN)/python -m pip
RUN    := PATH="$(BIN):$$PATH"

.PHONY: install study test test-packages test-fast lint schema lock clean dvc plots-template bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0 $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(PIP) install -q -c constraints.txt -e '.[test]'
	$(PIP) check
	touch $@

## The miniature MM1 study: data -> tokenizer -> train -> eval -> figure (results/figures/); then dvc.yaml
## and params/ follow the config (a no-op unless it was edited) and the stages that ran are recorded in
## dvc.lock, so `dvc status` is clean for them and `dvc repro` redoes nothing.
study: install
	$(RUN) snakemake --cores all
	$(RUN) python -m mm1.dvc_stages --write
	$(RUN) python -m mm1.dvc_stages --commit

## The whole test suite (what CI runs), slow and multi-process tests included. As root it installs the
## system packages and starts the local SLURM cluster itself; without root it skips what needs them
## (one summary line names what and how to enable it). PYTEST_ARGS="-x -k dvc" narrows it. It runs in two
## pytest-xdist workers, one test module per unit of work (tests/conftest.py); PYTEST_WORKERS="-n 0" runs it
## in one process.
## One OpenMP thread per test process (a Snakemake job still gets its `threads`), and OpenMP threads that
## spin briefly before they sleep: libgomp's default spin makes oversubscribed processes ~5x slower.
PYTEST_WORKERS ?= -n 2 --dist loadgroup --no-loadscope-reorder
test: test-packages install lint
	$(RUN) OMP_NUM_THREADS=1 GOMP_SPINCOUNT=1000 scripts/test-env run pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

test-packages:
	@scripts/test-env packages

## The tests without the slow end-to-end runs.
test-fast: install
	$(RUN) pytest -m "not slow"

## Performance benchmarks, each against a baseline run alongside (not tests): about 6 min on 2 cores;
## bench/results/summary.{json,md}. Options: make bench BENCH_ARGS="--quick" (or --only NAME ...).
bench: install
	$(RUN) python bench/run.py $(BENCH_ARGS)

lint: install
	$(RUN) ruff check src tests bench scripts workflow
	$(RUN) ruff format --check src tests bench scripts workflow
	$(RUN) snakefmt --check workflow
	$(RUN) mm1 config schema --check workflow/schemas/config.schema.json
	$(RUN) python -m mm1.dvc_stages --check dvc.yaml

## Regenerate the Snakemake schema from the pydantic models.
schema: install
	$(RUN) mm1 config schema --write workflow/schemas/config.schema.json

## Regenerate dvc.yaml and params/ from the stage registry and the study (after changing the config); --check fails if stale.
dvc: install
	$(RUN) python -m mm1.dvc_stages --write dvc.yaml

## The offline `dvc plots show` template: vega/vega-lite/vega-embed inlined (needs npm; into build/),
## then used by this clone's `dvc plots show` (.dvc/config.local). Without it DVC's own page loads them from a CDN.
plots-template: install
	$(RUN) python workflow/scripts/plots_template.py --use

## Re-pin every package after changing pyproject.toml.
lock: install
	{ echo "# Exact versions of every package in the project environment: \`make install\` installs with"; \
	  echo "# \`-c constraints.txt\`, so two installs get the same versions. Regenerate with \`make lock\`."; \
	  $(PIP) freeze --exclude-editable | grep -v '^mm1' | sed -E 's/^(torch[a-z]*==[^+]*)\+.*/\1/'; } > constraints.txt

clean:
	rm -rf results logs benchmarks .snakemake
