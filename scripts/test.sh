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

cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"

# With OPAMP_TEST_BOTH_BACKENDS=1, the integration tests once more with
# every test server on PostgreSQL (a database of its own in the throwaway
# cluster); tests of the SQLite file itself print `SKIPPED (sqlite only)`
# there. Not part of the default run until that pass is green: doctor's
# database checks on PostgreSQL still look for the SQLite file
# (tests/tests/ctl_ops.rs troubleshoot_db_pool_memory_and_db_maintenance).
if [[ "${OPAMP_TEST_BOTH_BACKENDS:-}" != "1" ]]; then
  exit 0
fi
if [[ -n "${OPAMP_TEST_POSTGRES_URL:-}" ]]; then
  OPAMP_TEST_BACKEND=postgres cargo test -p opamp-tests --tests --locked --no-fail-fast "$@"
else
  echo "error: no PostgreSQL cluster for the PostgreSQL pass" >&2
  exit 1
fi
