#!/usr/bin/env bash
# The project's test command: fetches the models and photos the tests run
# on, then unit, integration and stress tests (nextest), then the
# documentation examples (nextest does not run doc tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-assets.sh
cargo nextest run --no-fail-fast "$@"
cargo test --doc
