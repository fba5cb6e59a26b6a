#!/usr/bin/env bash
# The project's test command: unit, integration and stress tests (nextest),
# then the documentation examples (nextest does not run doc tests).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo nextest run --no-fail-fast "$@"
cargo test --doc
