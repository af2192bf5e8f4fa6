# Shared by bench/interleaved.sh, bench/cpu-per-request.sh and bench/instructions.sh (sourced,
# not run): the release nimbus, the bare host and the hello example they serve, built first
# when SKIP_BUILD=0 (by default they are expected from bench/run.sh). NIMBUS_BIN=PATH measures
# another build of nimbus (for example one copied aside before a change) in place of the tree's.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
HELLO_WASM=$ROOT/examples/target/wasm32-wasip2/release/hello.wasm
NIMBUS=${NIMBUS_BIN:-$TARGET_DIR/release/nimbus}
BARE=$TARGET_DIR/release/bare-host
if [[ "${SKIP_BUILD:-1}" == 0 ]]; then
    rustup target add wasm32-wasip2
    (cd "$ROOT" && cargo build --release --locked -p nimbus-cli -p nimbus-bench)
    (cd "$ROOT/examples" && cargo build --release --locked --target wasm32-wasip2 -p hello)
fi
for f in "$NIMBUS" "$BARE" "$HELLO_WASM"; do
    [[ -f "$f" ]] || { echo "missing $f (run bench/run.sh or SKIP_BUILD=0)" >&2; exit 1; }
done
command -v wrk > /dev/null || { echo "wrk is missing (apt-get install -y wrk)" >&2; exit 1; }
