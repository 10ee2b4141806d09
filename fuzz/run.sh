#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer on stable Rust (sanitizer-coverage passes through -C flags; no nightly,
# no cargo-fuzz) and runs one.
#   fuzz/run.sh build                      build every target
#   fuzz/run.sh run TARGET [libFuzzer args] run TARGET on its corpus (fuzz/corpus/TARGET, seeds fuzz/seeds/TARGET)
# Targets: archive, record, apply, safetensors, torch. Crashes land in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros (they are not linked with libFuzzer).
triple="$(rustc -vV | sed -n 's/^host: //p')"
case "${1:-}" in
build)
    cargo build --release --locked --target "$triple" --bins
    ;;
run)
    t="$2"; shift 2
    bin="$CARGO_TARGET_DIR/$triple/release/$t"
    [ -x "$bin" ] || cargo build --release --locked --target "$triple" --bin "$t"
    mkdir -p "corpus/$t" "artifacts/$t"
    exec "$bin" -artifact_prefix="artifacts/$t/" "$@" "corpus/$t" "seeds/$t"
    ;;
*)
    sed -n '2,7p' "$0"; exit 2
    ;;
esac
