#!/usr/bin/env bash
# Property tests of the HTTP API from its own OpenAPI document: starts
# `serve` on a free loopback port with a throwaway gallery and token, and
# lets schemathesis (PyPI, pinned in tests/api/requirements.txt, installed
# into target/api-venv) send it generated requests, valid and invalid, to
# every operation. Fails on any 5xx, and on any answer whose status, content
# type, headers or body the document does not describe.
#
#   bash scripts/api-check.sh [MAX_EXAMPLES]     (default 100 per operation)
#   bash scripts/api-check.sh --install          (schemathesis only, then exit)
set -euo pipefail
cd "$(dirname "$0")/.."
examples="${1:-100}"

venv=target/api-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r tests/api/requirements.txt
fi
[ "$examples" != --install ] || exit 0

bash scripts/fetch-assets.sh >/dev/null
# `serve` as the test command (scripts/test.sh) builds it: every feature,
# and the dev-dependencies' features too, which cargo unifies in only when
# a test target is built (here the smallest one). Without them `serve`,
# facepool and a few dependencies would be compiled again after the tests.
cargo build -q --release --all-features --bin serve --test loom_pool

work="$(mktemp -d)"
serve_pid=""
cleanup() {
    if [ -n "$serve_pid" ]; then
        kill -TERM "$serve_pid" 2>/dev/null || true
        wait "$serve_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

token="api-check-$RANDOM$RANDOM"
printf '%s\n' "$token" > "$work/tokens"
mkfifo "$work/out"
# Small limits so that generated requests stay cheap: four images per
# request, 2 MiB bodies, a 20 s timeout.
target/release/serve --listen 127.0.0.1:0 --index "$work/gallery.fpi" --token-file "$work/tokens" \
    --max-images 4 --max-body 2097152 \
    > "$work/out" 2> "$work/serve.log" &
serve_pid=$!
exec 3< "$work/out"
addr=""
if read -r -t 120 line <&3; then
    addr="${line#listening on }"
fi
if [ -z "$addr" ]; then
    echo "api-check: serve did not start:" >&2
    cat "$work/serve.log" >&2
    exit 1
fi
base="http://$addr"
# Ready once the models and the gallery are loaded.
python3 scripts/wait-ready.py "$base/readyz" 60 api-check

# Operations that sample the CPU for seconds are left out (their
# parameters are still checked by tests/server.rs).
check() {
    "$venv/bin/schemathesis" run "$base/openapi.json" \
        --header "Authorization: Bearer $token" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection \
        --phases examples,coverage,fuzzing \
        --max-examples "$examples" \
        --exclude-path-regex '^/debug/' \
        --request-timeout 30 \
        --workers 1 \
        --seed 1 \
        --no-color 2>&1 | tee "$work/check.log"
    return "${PIPESTATUS[0]}"
}
# A run whose only problems are schemathesis's own runtime errors (its
# generator failing inside hypothesis; with two workers, its generators
# raced on Python's AST and failed two runs in a row, and one worker takes
# no longer: about 30 s for the 1,354 cases)
# is run once more; any failure of the API fails at once.
if ! check; then
    summary="$(grep -E '^=+ .* in [0-9.]+s =+$' "$work/check.log" | tail -1)"
    if [[ "$summary" == *error* && "$summary" != *failure* ]]; then
        echo "api-check: schemathesis's own error, not the API's ($summary); running again" >&2
        check
    else
        exit 1
    fi
fi
