#!/usr/bin/env bash
# Fuzz every decoder that reads bytes from another process, each for a
# bounded time (default 60 s; FUZZ_SECONDS=N to change).
#
# With cargo-fuzz on a nightly toolchain it uses `cargo fuzz run` (with
# AddressSanitizer). Without them it builds the same libFuzzer targets on
# stable with coverage instrumentation (the sancov pass; only ASan needs
# nightly) and runs them directly. The checked-in seed corpus is copied to a
# scratch directory, so a run never changes the repository. A crash found
# here becomes a regression case in crates/tandem/tests/decoders.rs.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-60}"
targets=(wire done fixed codec)
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

if cargo +nightly fuzz --version >/dev/null 2>&1; then
    for target in "${targets[@]}"; do
        cp -r "corpus/$target" "$scratch/$target"
        echo "== fuzzing $target for ${seconds}s (cargo fuzz, nightly)"
        cargo +nightly fuzz run "$target" "$scratch/$target" -- -max_total_time="$seconds" -rss_limit_mb=2048
    done
    exit 0
fi

triple="$(rustc -vV | sed -n 's/^host: //p')"
# --target keeps these flags off build scripts and proc macros, as cargo-fuzz does.
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks --cfg fuzzing" \
    cargo build --release --target "$triple" --target-dir "${FUZZ_TARGET_DIR:-target}"
for target in "${targets[@]}"; do
    cp -r "corpus/$target" "$scratch/$target"
    echo "== fuzzing $target for ${seconds}s (stable, coverage-guided, no sanitizer)"
    "${FUZZ_TARGET_DIR:-target}/$triple/release/$target" "$scratch/$target" \
        -max_total_time="$seconds" -rss_limit_mb=2048
done
