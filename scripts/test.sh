#!/usr/bin/env bash
# The project's test command: fetches the models and photos the tests run
# on (and Debian's nats-server for the async-mode tests, chromium and
# chromium-driver for the console's browser tests), then unit,
# integration and stress tests (nextest), then the documentation examples
# (nextest does not run doc tests).
#
# Everything is built in the release profile with every feature: the tests
# run the real models (they need optimised code), and the README's main job
# (`cargo run --release --bin compare`) has already built the same
# dependencies, so only facepool and its test binaries are compiled here.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-assets.sh
# The NATS tests start their own broker (Debian's nats-server); the
# console tests their own headless browser (Debian's chromium, driven over
# WebDriver by its chromedriver).
need=()
command -v nats-server >/dev/null || need+=(nats-server)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"
    else
        echo "test.sh: the tests need ${need[*]} (apt-get install ${need[*]})" >&2
        exit 1
    fi
fi
# The library's, the binaries' and the integration tests (the examples,
# which have none, are built by clippy's check in CI, not here).
cargo nextest run --release --all-features --no-fail-fast --lib --bins --tests "$@"
cargo test --release --all-features --doc
