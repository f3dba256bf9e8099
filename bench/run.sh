#!/usr/bin/env bash
# `make bench`: start what the benchmarks need (PostgreSQL, pgbench, the SMTP sink's Python),
# build in release, run.
# Without PostgreSQL available (and no CLM_TEST_DATABASE_URL), only the SQLite workloads run.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"

if [ -z "${CLM_TEST_DATABASE_URL:-}" ]; then
  if ! command -v pg_isready >/dev/null || ! command -v pgbench >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      apt-get install -y -q postgresql postgresql-contrib >/dev/null || true
    fi
  fi
  if command -v pg_isready >/dev/null && ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
      for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
    fi
  fi
  if command -v pg_isready >/dev/null && pg_isready -h 127.0.0.1 -p 5432 -q; then
    db="clm_bench_$(date +%s)"
    psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE ${db}"
    trap 'psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS ${db} WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
    export CLM_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/${db}"
  else
    echo "PostgreSQL is not available: running the SQLite workloads only" >&2
  fi
fi

# The delivery workload's SMTP server is the tests' (aiosmtpd in .venv-test); without it that
# workload is skipped, the others run.
if [ "${BENCH_DELIVERIES:-1}" != 0 ]; then
  make -s test-deps || echo "make test-deps failed: the delivery workload will be skipped" >&2
fi

"$CARGO" build --release --workspace --bins
"$CARGO" run --release -p clm-bench -- \
  --duration "${BENCH_SECONDS:-10}" --concurrency "${BENCH_CONCURRENCY:-16}"
