#!/usr/bin/env bash
# The project's test command (see README): installs what the tests need on a
# fresh machine, builds the binaries the integration tests start, runs every test.
#   scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/test-deps.sh

# A throwaway PostgreSQL cluster for the run (unless one is named already),
# stopped and removed on exit. Without one the PostgreSQL tests print
# SKIPPED lines (or fail under OPAMP_REQUIRE_TOOLS=1).
pg_dir=""
stop_postgres() { [[ -z "${pg_dir}" ]] || bash scripts/pg-throwaway.sh stop "${pg_dir}"; }
trap stop_postgres EXIT
if [[ -z "${OPAMP_TEST_POSTGRES_URL:-}" ]]; then
  pg_dir="$(mktemp -d "${TMPDIR:-/tmp}/opamp-pg.XXXXXX")"
  if url="$(bash scripts/pg-throwaway.sh start "${pg_dir}")"; then
    export OPAMP_TEST_POSTGRES_URL="${url}"
  else
    echo "warning: no throwaway PostgreSQL cluster: the PostgreSQL tests will be skipped" >&2
  fi
fi

# --all-targets: the binaries the integration tests start are built with the
# same dependency features as the tests (`--bins` alone would resolve them
# differently and compile much of the dependency tree twice).
cargo build --workspace --all-targets --locked
cargo test --workspace --locked "$@"

# The integration tests once more with every test server on PostgreSQL (a
# database of its own in the throwaway cluster); tests of the SQLite file
# itself print `SKIPPED (sqlite only)` there. `--test '*'` keeps the first
# pass's features, so nothing is rebuilt. OPAMP_TEST_BACKENDS=sqlite leaves
# this pass out (a quicker local run).
if [[ "${OPAMP_TEST_BACKENDS:-sqlite,postgres}" != *postgres* ]]; then
  echo "SKIPPED: the PostgreSQL pass (OPAMP_TEST_BACKENDS=${OPAMP_TEST_BACKENDS})" >&2
  exit 0
fi
if [[ -z "${OPAMP_TEST_POSTGRES_URL:-}" ]]; then
  if [[ "${OPAMP_REQUIRE_TOOLS:-}" == "1" ]]; then
    echo "error: no PostgreSQL cluster for the PostgreSQL pass" >&2
    exit 1
  fi
  echo "SKIPPED: the PostgreSQL pass (no PostgreSQL cluster)" >&2
  exit 0
fi
OPAMP_TEST_BACKEND=postgres cargo test --workspace --locked --test '*' "$@"
