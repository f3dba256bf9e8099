# CLM — one entry point for people and CI. `make help` lists targets.
SHELL := /bin/bash
CARGO ?= cargo
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf

.PHONY: help run build test test-deps lint fmt fmt-check clippy lint-proto buf bench profile profile-mixed clean

help: ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

run: ## run all four services in one process on 127.0.0.1:50051 (SQLite under ./data)
	$(CARGO) run --bin clm -- serve

build: ## build every binary (debug)
	$(CARGO) build --workspace --bins

test: test-deps ## run every test (PostgreSQL tests too when CLM_TEST_DATABASE_URL is set)
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast

# Python tools the tests run (aiosmtpd behind clm_testkit::smtp::SmtpSink), in .venv-test/;
# reinstalled only when tests/support/requirements.txt changed or the venv cannot import them.
PYTHON ?= python3
VENV_TEST := .venv-test
test-deps: ## Python test tools (tests/support/requirements.txt) into .venv-test/
	@if $(VENV_TEST)/bin/python -c 'import aiosmtpd' 2>/dev/null && \
	    cmp -s tests/support/requirements.txt $(VENV_TEST)/requirements.txt; then \
	  echo "test-deps: $(VENV_TEST) is up to date"; \
	else \
	  set -e; \
	  $(PYTHON) -m venv $(VENV_TEST); \
	  $(VENV_TEST)/bin/pip install --quiet --disable-pip-version-check -r tests/support/requirements.txt; \
	  $(VENV_TEST)/bin/python -c 'import aiosmtpd'; \
	  cp tests/support/requirements.txt $(VENV_TEST)/requirements.txt; \
	  echo "test-deps: $(VENV_TEST) ready"; \
	fi

lint: fmt-check clippy lint-proto ## rustfmt check, clippy -D warnings, buf lint

fmt: ## format the code
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

buf: $(BUF)

lint-proto: $(BUF) ## buf lint (DEFAULT rules) of proto/
	$(BUF) lint proto
	$(BUF) build proto -o /dev/null

bench: ## run the benchmarks (release; starts PostgreSQL when it can); results in bench/results/latest.{json,md}
	CARGO=$(CARGO) bash bench/run.sh

PROFILE_SECONDS ?= 10
profile: ## perf profile (whole machine: CLM and PostgreSQL) of CreateContact then GetContact on PostgreSQL; bench/results/profile-*.txt
	$(CARGO) build --profile profiling -p clm-bench
	perf record -a -F 499 -o /tmp/clm-perf.data -- $(or $(CARGO_TARGET_DIR),target)/profiling/clm-bench --skip-sqlite \
	  --duration $(PROFILE_SECONDS) --import-rows 0 --mixed-rate 0 --resource-seconds 0 --metrics-contacts 0 --out /tmp/clm-profile
	perf report -i /tmp/clm-perf.data --stdio --no-children --sort comm,dso --percent-limit 1 2>/dev/null | sed "s/  */ /g" > bench/results/profile-by-process.txt
	perf report -i /tmp/clm-perf.data --stdio --no-children --sort comm,symbol --percent-limit 0.2 2>/dev/null | sed "s/  */ /g" > bench/results/profile-by-symbol.txt
	@head -40 bench/results/profile-by-process.txt

MIXED_RATE ?= 1000
profile-mixed: ## perf profile (whole machine) of the mixed RecordJourneyEvent + SubmitResponse load on the single binary (SQLite); bench/results/profile-mixed-*.txt
	$(CARGO) build --profile profiling -p clm-bench -p clm
	env -u CLM_TEST_DATABASE_URL perf record -a -F 499 -o /tmp/clm-perf-mixed.data -- $(or $(CARGO_TARGET_DIR),target)/profiling/clm-bench \
	  --skip-contacts --duration $(PROFILE_SECONDS) --mixed-rate $(MIXED_RATE) --resource-seconds 0 --metrics-contacts 0 --out /tmp/clm-profile
	perf report -i /tmp/clm-perf-mixed.data --stdio --no-children --sort comm,dso --percent-limit 1 2>/dev/null | sed "s/  */ /g" > bench/results/profile-mixed-by-process.txt
	perf report -i /tmp/clm-perf-mixed.data --stdio --no-children --sort comm,symbol --percent-limit 0.2 2>/dev/null | sed "s/  */ /g" > bench/results/profile-mixed-by-symbol.txt
	@head -40 bench/results/profile-mixed-by-process.txt

include deploy/deploy.mk

clean: ## remove build output and local data
	$(CARGO) clean
	rm -rf data
