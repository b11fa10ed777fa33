# Tierbox: every target here is called by CI or by the README. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The repository folders of the installed packages (pyproject.toml maps them into `tierbox`).
PACKAGES := outbox tierbox api celery_bridge cli flow migrations ops relay scheduler workers webhooks
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: help demo test lint typecheck docs bench chaos fuzz clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,docs]'
	touch $(STAMP)

# The peers (Celery, procrastinate) and py-spy only for `make bench`: `make test` stays lean.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,docs,bench]'
	touch $(BENCH_STAMP)

demo: $(STAMP)  ## Migrate, start relay + the four worker pools, enqueue sample jobs, print what happened
	$(BIN)/tierbox migrate
	$(BIN)/python -m examples.demo

# Two xdist workers: most tests wait on real processes and services, so two run in about the time of
# one; tests/conftest.py keeps the tests of each private RabbitMQ node (or cluster) on one worker.
# --durations=25: the slowest tests in every CI log, to keep the suite within its ~15 min.
# The browser tests need Debian's chromium, the alert-rule tests promtool, the cluster's test hosts socat:
# installed as root, else one line says what.
TEST_WORKERS ?= 2

test: $(STAMP) lint typecheck docs  ## Lint, type-check, build the docs, then the full test suite against the live services
	scripts/ensure-chromium
	scripts/ensure-promtool
	scripts/ensure-socat
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=25

lint: $(STAMP)  ## ruff on every package, the tests, the benchmarks and the examples
	$(BIN)/ruff check $(PACKAGES) tests bench examples

typecheck: $(STAMP)  ## mypy --strict on every package (outbox and tierbox)
	$(BIN)/mypy

# --strict: a broken link or anchor, or a page missing from the nav, fails the build (tests/docs runs the examples).
docs: $(STAMP)  ## Build the documentation site (mkdocs, material theme) into site/ with --strict
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: $(BENCH_STAMP)  ## Benchmarks (not part of `make test`); BENCH_ARGS=--quick for a short run
	$(BIN)/python -m bench $(BENCH_ARGS)

chaos: $(STAMP)  ## Long chaos profile: 1,000,000 jobs over 30 min under faults (release check; not in `make test`)
	$(BIN)/python -m tests.chaos --jobs 1000000 --minutes 30

# The admin API fuzz at release length; `make test` runs the same tests with 12 examples (docs/bad_input.md).
FUZZ_EXAMPLES ?= 500

fuzz: $(STAMP)  ## Admin API fuzz, FUZZ_EXAMPLES (500) per operation, mode and auth (release check; not in `make test`)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q -p no:cacheprovider --durations=10 tests/api/test_api_fuzz.py

clean:  ## Remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
