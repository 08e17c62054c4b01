#!/usr/bin/env bash
# Builds and runs every fuzz target for SECONDS (default 30) each, one after the other, and
# prints the number of executions per target. Exits non-zero if a target crashes (the
# crashing input is left in fuzz/artifacts/<target>/) or does not build.
#
#   fuzz/smoke.sh [--stable] [SECONDS]
#
# By default: the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`),
# with AddressSanitizer; override the command with CARGO_FUZZ (default: "cargo +nightly fuzz").
#
# --stable (what scripts/test runs in CI, where only the pinned stable toolchain exists): no
# cargo-fuzz and no sanitizer. The stable `cargo build` of this crate with the flags cargo-fuzz
# gives rustc for coverage (SanitizerCoverage: 8-bit counters, PC table, comparison tracing),
# `--cfg fuzzing`, debug assertions and overflow checks; the same libFuzzer (libfuzzer-sys)
# drives it. Panics, failed assertions, overflows, timeouts and out-of-memory are caught;
# memory errors in C or unsafe code only by the sanitizer build.
set -uo pipefail
stable=0
if [ "${1:-}" = --stable ]; then
    stable=1
    shift
fi
secs="${1:-30}"
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
targets=(frame_decoder tl_boxed session tdx_quote sev_report ratls_cert ledger openai_validate openai_usage gpu_report grammar tools responses)

# Build once, then run the binaries directly, so that every target runs the same build.
target_dir="${CARGO_TARGET_DIR:-target}"
if [ "$stable" = 1 ]; then
    triple="$(rustc -vV | sed -n 's/^host: //p')"
    # --target keeps these flags off build scripts and proc macros (as cargo-fuzz does).
    RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks" \
        cargo build --locked --profile smoke --target "$triple" --bins ||
        { echo "smoke: build failed" >&2; exit 2; }
else
    fuzz_cmd=(${CARGO_FUZZ:-cargo +nightly fuzz})
    "${fuzz_cmd[@]}" build || { echo "smoke: build failed" >&2; exit 2; }
    triple="$(rustc +nightly -vV 2>/dev/null | sed -n 's/^host: //p')"
fi
profile_dir="$([ "$stable" = 1 ] && echo smoke || echo release)"
bin_dir="$target_dir/${triple:-x86_64-unknown-linux-gnu}/$profile_dir"
[ -d corpus ] || ./seed.sh

mkdir -p target/smoke
status=0
summary=()
for t in "${targets[@]}"; do
    log="target/smoke/$t.log"
    mkdir -p "corpus/$t" "artifacts/$t"
    echo "== $t: ${secs}s (log: fuzz/$log)"
    "$bin_dir/$t" "corpus/$t" -artifact_prefix="artifacts/$t/" \
        -max_total_time="$secs" -print_final_stats=1 -timeout=10 >"$log" 2>&1
    rc=$?
    execs="$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)"
    [ -n "$execs" ] || execs="$(grep -oE '^#[0-9]+[[:space:]]+DONE' "$log" | grep -oE '[0-9]+' | tail -1)"
    [ -n "$execs" ] || execs="$(grep -oE '^#[0-9]+' "$log" | tr -d '#' | tail -1)"
    cov="$(grep -oE '^#[0-9]+.*cov: [0-9]+' "$log" | grep -oE 'cov: [0-9]+' | tail -1)"
    if [ "$rc" -ne 0 ]; then
        status=1
        crash="$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -1)"
        summary+=("$t: CRASH after ${execs:-?} executions (exit $rc) ${crash}")
        grep -m3 -E "panicked at|ERROR: libFuzzer|SUMMARY" "$log" | sed 's/^/    /'
    else
        summary+=("$t: ${execs:-?} executions in ${secs}s, ${cov:-cov: ?}, no crash")
    fi
done
echo
build="$([ "$stable" = 1 ] && echo "stable, no sanitizer" || echo "cargo-fuzz, ASan")"
echo "== smoke summary ($(date -u +%Y-%m-%dT%H:%MZ), ${secs}s per target, $build)"
printf '%s\n' "${summary[@]}"
exit "$status"
