#!/usr/bin/env bash
# Run the whole test suite, installing what it needs first: the wasm32-wasip2 target (test guests
# are built from source for it) and componentize-py (a Python guest proves that components from
# another toolchain run unchanged). `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rustup target add wasm32-wasip2
scripts/build-foreign-guests.sh
# The Python guest must be tested, not skipped.
export NIMBUS_REQUIRE_FOREIGN=1
cargo test --workspace --locked "$@"
