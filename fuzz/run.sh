#!/usr/bin/env bash
# Runs each fuzz target for a fixed budget with libFuzzer (cargo-fuzz, a nightly toolchain)
# and prints executions and findings per target. Not part of .ci/run.
#   usage: fuzz/run.sh [SECONDS_PER_TARGET]     (default 60)
# Needs: `rustup toolchain list` showing nightly, and `cargo install cargo-fuzz` (from
# crates.io). A crash is saved under fuzz/artifacts/<target>/; turn each into a test.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: no nightly toolchain here; libFuzzer needs one (the property tests in common cover the same decoders on stable: cargo test -p common)" >&2
  exit 2
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
status=0
for t in frame_decoder reassembler ring_reader; do
  log=$(mktemp)
  if cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
    verdict="no findings"
  else
    verdict="FINDING (see fuzz/artifacts/$t/)"; status=1
  fi
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 || true)
  echo "$t: $execs executions in ${secs} s, $cov, $verdict"
  rm -f "$log"
done
exit "$status"
