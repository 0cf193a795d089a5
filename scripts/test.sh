#!/usr/bin/env bash
# The project's test command (see README): installs what the tests need on a
# fresh machine, builds the binaries the integration tests start, runs every test.
#   scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/test-deps.sh
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
