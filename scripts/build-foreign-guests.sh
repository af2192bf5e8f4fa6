#!/usr/bin/env bash
# Builds the test guests written in languages other than Rust, with their own
# toolchains, into target/foreign-guests/<name>.wasm.
#
# They prove that a wasi:http/proxy component built by another toolchain (and
# runnable on `wasmtime serve`) runs unchanged on Nimbus.
#
#   crates/test-programs/foreign/python-hello/app.py -> target/foreign-guests/python-hello.wasm
#       built with componentize-py (PyPI), pinned below.
#   crates/test-programs/foreign/js-hello/app.js -> target/foreign-guests/js-hello.wasm
#   crates/test-programs/foreign/js-data/app.js -> target/foreign-guests/js-data.wasm (documents + KV)
#       built with ComponentizeJS (npm), every package pinned by
#       crates/test-programs/foreign/js-tools/package-lock.json and installed with
#       `npm ci` into target/foreign-tools/js (never globally).
#
# Idempotent: a guest is rebuilt only when one of its sources (or the WIT, or
# this script) is newer than its output. Pass --force to rebuild anyway.
#
# Usage: scripts/build-foreign-guests.sh [--force]
#        scripts/build-foreign-guests.sh --one python|js SRC_DIR OUTPUT
#            build SRC_DIR/app.py or SRC_DIR/app.js (an edited copy of a guest, as
#            bench/deploy-cache.sh makes) into OUTPUT, with the same pinned toolchain
# Env:   PYTHON (default python3), NODE (default node), NPM (default npm)
set -euo pipefail

COMPONENTIZE_PY_VERSION=0.25.1

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
foreign="$root/crates/test-programs/foreign"
wit="$foreign/wit"
out_dir="$root/target/foreign-guests"
python="${PYTHON:-python3}"
node="${NODE:-node}"
npm="${NPM:-npm}"
js_tools="$root/target/foreign-tools/js"
componentize_js_dir="$js_tools/node_modules/@bytecodealliance/componentize-js"

force=0
one=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --force) force=1 ;;
        --one)
            [[ $# -ge 4 ]] || { echo "--one needs: python|js SRC_DIR OUTPUT" >&2; exit 2; }
            one=("$2" "$(cd "$3" && pwd)" "$4")
            shift 3
            ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
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

# build_python NAME [SRC OUTPUT]: crates/test-programs/foreign/NAME/app.py ->
# target/foreign-guests/NAME.wasm (or SRC/app.py -> OUTPUT)
build_python() {
    local name="$1"
    local src="${2:-$foreign/$name}"
    local output="${3:-$out_dir/$name.wasm}"
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

componentize_js_version() {
    "$node" -p 'require(process.argv[1]).version' "$componentize_js_dir/package.json" 2>/dev/null || true
}

# (Re)install the JS toolchain when the committed lockfile differs from the installed one.
ensure_componentize_js() {
    local lock="$foreign/js-tools/package-lock.json"
    if ! cmp -s "$lock" "$js_tools/package-lock.json" || [[ ! -d "$componentize_js_dir" ]]; then
        log "installing the JS toolchain from $lock into $js_tools"
        rm -rf "$js_tools"
        mkdir -p "$js_tools"
        cp "$foreign/js-tools/package.json" "$lock" "$js_tools/"
        "$npm" ci --prefix "$js_tools" --no-audit --no-fund --loglevel=error
    fi
}

# build_js NAME [SRC OUTPUT]: crates/test-programs/foreign/NAME/app.js ->
# target/foreign-guests/NAME.wasm (or SRC/app.js -> OUTPUT). Each word of $IMPORTS (for example
# `wasi:cli/environment`) is added to the world at the engine's WASI version, so that app.js can
# `import` it: `IMPORTS=wasi:cli/environment build_js NAME`.
build_js() {
    local name="$1"
    local src="${2:-$foreign/$name}"
    local output="${3:-$out_dir/$name.wasm}"
    local imports
    read -r -a imports <<< "${IMPORTS:-}"
    if [[ $force == 0 ]] && up_to_date "$output" "$src" "$wit" "$foreign/js-tools" "${BASH_SOURCE[0]}"; then
        log "$name: up to date ($output)"
        return
    fi
    ensure_componentize_js
    # ComponentizeJS's engine (StarlingMonkey) is built against one WASI 0.2.x release and
    # exports its fetch-event handler as that release's wasi:http/incoming-handler, so the
    # target world must be wasi:http/proxy at exactly that version (0.2.10 for 0.23.0). WASI
    # 0.2.x releases only add @since-gated items, so that WIT is our 0.2.12 copy relabelled,
    # minus the items added after it. The component then imports interfaces at 0.2.10 (its
    # own) and 0.2.12 (ComponentizeJS's preview1 adapter); the host's 0.2.12 serves both.
    local engine_wasi
    engine_wasi="$(grep -aoE -m1 'wasi:http/incoming-handler@0\.2\.[0-9]+' \
        "$componentize_js_dir/lib/starlingmonkey_embedding.wasm" | sed -n '1s/.*@//p')"
    if [[ ! "$engine_wasi" =~ ^0\.2\.([0-9]+)$ ]]; then
        log "$name: cannot tell which wasi:http the ComponentizeJS engine exports"
        exit 1
    fi
    local engine_patch="${BASH_REMATCH[1]}"
    log "$name: building with componentize-js $(componentize_js_version) (engine: WASI $engine_wasi)"
    local tmp="$output.tmp.$$"
    local tmp_wit="$out_dir/$name.wit.tmp.$$"
    mkdir -p "$tmp_wit/deps"
    local f
    for f in "$wit"/deps/*.wit; do
        # Drop each one-line item `@since` a later release; stop on anything longer.
        if ! awk -v max="$engine_patch" '
            match($0, /@since\(version = 0\.2\.[0-9]+\)/) {
                split(substr($0, RSTART, RLENGTH), v, /[.)]/)
                if (v[3] + 0 > max) {
                    getline item
                    if (item !~ /;[ \t]*$/) { print "cannot drop: " item > "/dev/stderr"; exit 1 }
                    next
                }
            }
            { print }' "$f" | sed "s/@0\.2\.12\b/@$engine_wasi/g" > "$tmp_wit/deps/${f##*/}"; then
            rm -rf "$tmp_wit"
            log "$name: cannot derive WASI $engine_wasi WIT from $f"
            exit 1
        fi
    done
    {
        printf 'package nimbus:foreign-guests;\n\nworld proxy {\n  include wasi:http/proxy@%s;\n' \
            "$engine_wasi"
        local import
        for import in "${imports[@]}"; do
            printf '  import %s@%s;\n' "$import" "$engine_wasi"
        done
        printf '}\n'
    } > "$tmp_wit/world.wit"
    # Run from the source dir so the component's stack traces name `app.js`, not a path here.
    if ! (cd "$src" && "$node" "$componentize_js_dir/src/cli.js" app.js \
        -w "$tmp_wit" -n proxy -o "$tmp"); then
        rm -rf "$tmp" "$tmp_wit"
        log "$name: componentize-js failed"
        exit 1
    fi
    rm -rf "$tmp_wit"
    mv -f "$tmp" "$output"
    log "$name: built $output ($(wc -c < "$output") bytes)"
}

mkdir -p "$out_dir"
if [[ ${#one[@]} -gt 0 ]]; then
    force=1
    case "${one[0]}" in
        python) build_python "$(basename "${one[1]}")" "${one[1]}" "${one[2]}" ;;
        js) build_js "$(basename "${one[1]}")" "${one[1]}" "${one[2]}" ;;
        *) echo "--one: python or js, not ${one[0]}" >&2; exit 2 ;;
    esac
    exit 0
fi
build_python python-hello
build_js js-hello
# Reads $NIMBUS_API_URL / $NIMBUS_API_TOKEN from the WASI environment.
IMPORTS=wasi:cli/environment build_js js-data

# An edited copy of each (one line of the user's code changed), for the test that an edited
# redeploy compiles only what changed (crates/nimbus-server/tests/it/foreign.rs). The copy is
# rewritten only when it changes, so the up-to-date check still holds.
# edit NAME FILE FROM TO: crates/test-programs/foreign/NAME/FILE -> target/foreign-guests/NAME-edit.wasm
edit() {
    local name="$1" file="$2" from="$3" to="$4"
    local dir="$out_dir/src/$name-edit"
    mkdir -p "$dir"
    sed "s/$from/$to/" "$foreign/$name/$file" > "$dir/$file.new"
    grep -q "$to" "$dir/$file.new" || { log "$name-edit: the edit did not apply"; exit 1; }
    if cmp -s "$dir/$file.new" "$dir/$file"; then rm "$dir/$file.new"; else mv "$dir/$file.new" "$dir/$file"; fi
}
edit python-hello app.py "Hello from Python!" "Hello again from Python!"
build_python python-hello-edit "$out_dir/src/python-hello-edit" "$out_dir/python-hello-edit.wasm"
edit js-hello app.js "Hello from JavaScript!" "Hello again from JavaScript!"
build_js js-hello-edit "$out_dir/src/js-hello-edit" "$out_dir/js-hello-edit.wasm"
