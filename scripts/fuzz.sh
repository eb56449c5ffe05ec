#!/usr/bin/env bash
# Fuzz every decoder that reads bytes from another process, each for a
# bounded time (default 60 s; FUZZ_SECONDS=N to change). Needs a nightly
# toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Without them, the
# same decoders are exercised on stable by crates/tandem/tests/decoders.rs.
# A crash found here becomes a regression case in that file.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-60}"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz on nightly is not available: install it with 'cargo install cargo-fuzz'" >&2
    echo "running the stable property tests instead" >&2
    cd .. && exec cargo test -p tandem --release --test decoders
fi
for target in wire done fixed codec; do
    mkdir -p "corpus/$target"
    echo "== fuzzing $target for ${seconds}s"
    cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=2048
done
