#!/usr/bin/env bash
# Run every fuzz target for SECONDS (default 600) each, one after another,
# on a scratch copy of the committed corpus; print each one's totals.
# Needs a nightly toolchain and cargo-fuzz (cargo +nightly install cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
work=${FUZZ_WORK:-/tmp/sidecheck-fuzz}
for t in scenario wire netlink_trace; do
  mkdir -p "$work/$t"
  cp -n corpus/$t/* "$work/$t/" 2>/dev/null || true
  echo "== $t, $secs s"
  cargo +nightly fuzz run "$t" "$work/$t" -- -max_total_time="$secs" -print_final_stats=1 2>&1 \
    | grep -E "stat::number_of_executed_units|stat::peak_rss|Done [0-9]+ runs|ERROR|panicked|SUMMARY" || true
  echo "   corpus: $(ls "$work/$t" | wc -l) inputs"
done
