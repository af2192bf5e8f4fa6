#!/usr/bin/env bash
# Builds the test guests written in languages other than Rust, with their own
# toolchains, into target/foreign-guests/<name>.wasm.
#
# They prove that a wasi:http/proxy component built by another toolchain (and
# runnable on `wasmtime serve`) runs unchanged on Nimbus.
#
#   crates/test-programs/foreign/python-hello/app.py -> target/foreign-guests/python-hello.wasm
#       built with componentize-py (PyPI), pinned below.
#
# Idempotent: a guest is rebuilt only when one of its sources (or the WIT, or
# this script) is newer than its output. Pass --force to rebuild anyway.
#
# Usage: scripts/build-foreign-guests.sh [--force]
# Env:   PYTHON (default python3)
set -euo pipefail

COMPONENTIZE_PY_VERSION=0.25.1

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
foreign="$root/crates/test-programs/foreign"
wit="$foreign/wit"
out_dir="$root/target/foreign-guests"
python="${PYTHON:-python3}"

force=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

log() { echo "build-foreign-guests: $*" >&2; }

# Runs the componentize-py installed for $python, whatever PATH says.
componentize_py() {
    "$python" -c 'import sys; from componentize_py import script; sys.argv[0] = "componentize-py"; sys.exit(script())' "$@"
}

installed_version() {
    "$python" -c 'import importlib.metadata as m; print(m.version("componentize-py"))' 2>/dev/null || true
}

ensure_componentize_py() {
    local have
    have="$(installed_version)"
    if [[ "$have" != "$COMPONENTIZE_PY_VERSION" ]]; then
        log "installing componentize-py==$COMPONENTIZE_PY_VERSION (found: ${have:-none})"
        "$python" -m pip install --quiet --disable-pip-version-check \
            "componentize-py==$COMPONENTIZE_PY_VERSION"
    fi
}

# True when $1 exists and is newer than every file under the other arguments.
up_to_date() {
    local output="$1"
    shift
    [[ -f "$output" ]] || return 1
    [[ -z "$(find "$@" -type f -newer "$output" -not -name '*.pyc' -print -quit)" ]]
}

# build_python NAME: crates/test-programs/foreign/NAME/app.py -> target/foreign-guests/NAME.wasm
build_python() {
    local name="$1"
    local src="$foreign/$name"
    local output="$out_dir/$name.wasm"
    if [[ $force == 0 ]] && up_to_date "$output" "$src" "$wit" "${BASH_SOURCE[0]}"; then
        log "$name: up to date ($output)"
        return
    fi
    ensure_componentize_py
    log "$name: building with componentize-py $(installed_version)"
    local tmp="$output.tmp.$$"
    # -d/-w: the plain wasi:http/proxy@0.2.12 world; -p: where `app` lives.
    if ! (cd "$foreign" && componentize_py --quiet -d "$wit" -w proxy \
        componentize -p "$src" app -o "$tmp"); then
        rm -f "$tmp"
        log "$name: componentize-py failed"
        exit 1
    fi
    mv -f "$tmp" "$output"
    log "$name: built $output ($(wc -c < "$output") bytes)"
}

mkdir -p "$out_dir"
build_python python-hello
