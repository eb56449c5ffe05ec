#!/usr/bin/env bash
# The whole test suite: installs what the tests need (scripts/setup.sh), then
# runs unit, integration and doc tests of every crate.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace --release
