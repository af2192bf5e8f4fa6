#!/usr/bin/env bash
# Start Nimbus with its embedded defaults (SQLite and the local disk under ./nimbus-data) and the
# sample `hello` function deployed, then keep serving until Ctrl-C:
#
#   ./scripts/quickstart.sh
#   curl http://127.0.0.1:8080/hello
#
# Installs what it needs: the wasm32-wasip2 target (through rustup) for the sample function, and
# the `nimbus` CLI itself with `cargo install` (into ~/.cargo/bin, which rustup puts on the PATH).
# Env: NIMBUS_DATA (default ./nimbus-data), NIMBUS_LISTEN (default 127.0.0.1:8080).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

data="${NIMBUS_DATA:-./nimbus-data}"
listen="${NIMBUS_LISTEN:-127.0.0.1:8080}"

rustup target add wasm32-wasip2
echo "quickstart: installing nimbus (a release build; the first one takes several minutes)" >&2
# --target-dir: build in the workspace's target/, so a later `cargo build --release` reuses it.
cargo install --locked --path crates/nimbus-cli --target-dir target
echo "quickstart: building the sample function examples/hello" >&2
(cd examples && cargo build --release --locked --target wasm32-wasip2 -p hello)

nimbus="${CARGO_HOME:-$HOME/.cargo}/bin/nimbus"
"$nimbus" serve --data "$data" --listen "$listen" &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT INT TERM

for _ in $(seq 1 100); do
    if curl -fsS "http://$listen/healthz" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$server" 2>/dev/null; then echo "quickstart: nimbus serve exited" >&2; exit 1; fi
    sleep 0.1
done

# Save this server as the CLI's `local` profile (the server does so itself on its first start;
# this covers a data directory that already existed), so `nimbus` works from any directory.
"$nimbus" login --profile local --url "http://$listen" --data-dir "$data" >/dev/null
"$nimbus" --profile local deploy examples/hello --no-build
cat >&2 <<MSG

Nimbus is running at http://$listen with the sample function deployed. Try:
    curl http://$listen/hello
    nimbus list
Press Ctrl-C to stop.
MSG
wait "$server"
