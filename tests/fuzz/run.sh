#!/usr/bin/env bash
# Runs every fuzz target for a bounded time on a throwaway copy of its seed
# corpus (the committed seeds under corpus/ never grow).
#
#   tests/fuzz/run.sh [SECONDS_PER_TARGET]     # default 20
#
# Works on the stable toolchain: cargo-fuzz needs nightly-only flags
# (-Zsanitizer, sancov passes), which RUSTC_BOOTSTRAP=1 unlocks on stable.
# FUZZ_SANITIZER=none skips AddressSanitizer (the crate forbids unsafe code;
# ASan mostly guards the C/asm in ring and libFuzzer itself); default address.
# FUZZ_TARGETS="a b" runs a subset. Crash inputs are written to
# tests/fuzz/artifacts/<target>/ and the script exits 1.
set -euo pipefail
cd "$(dirname "$0")"

secs="${1:-20}"
case "$secs" in ''|*[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 2 ;; esac
CARGO_FUZZ_VERSION=0.13.2
sanitizer="${FUZZ_SANITIZER:-address}"
targets=(${FUZZ_TARGETS:-cookie_session client_frame jwt_header emulator_message splice_id ws_frames channel_policy})
export RUSTC_BOOTSTRAP=1
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

if [ "$(cargo fuzz --version 2>/dev/null | awk '{print $2}')" != "$CARGO_FUZZ_VERSION" ]; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet
fi

# ASan reports leaks at exit by default; the targets keep their fixtures
# (runtime, emulator, JWKS server) in statics on purpose.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "fuzz: building the targets (sanitizer: $sanitizer)" >&2
cargo fuzz build --fuzz-dir . -s "$sanitizer" >"$work/build.log" 2>&1 \
  || { cat "$work/build.log" >&2; exit 1; }
total=0
crashes=0
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "artifacts/$t"
  cp corpus/"$t"/* "$work/$t/"
  log="$work/$t.log"
  start=$(date +%s)
  dict=()
  [ -f "dict/$t.dict" ] && dict=(-dict="dict/$t.dict")
  status=0
  cargo fuzz run --fuzz-dir . -s "$sanitizer" "$t" "$work/$t" -- \
    -max_total_time="$secs" -timeout=30 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" "${dict[@]}" >"$log" 2>&1 || status=$?
  elapsed=$(( $(date +%s) - start ))
  runs=$(awk -F: '/stat::number_of_executed_units/ { gsub(/ /, "", $2); n = $2 } END { print n + 0 }' "$log")
  if [ "$runs" -eq 0 ]; then
    # No final stats (a crash): take the last progress line's count.
    runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
    runs=${runs:-0}
  fi
  total=$((total + runs))
  if [ "$status" -ne 0 ]; then
    crashes=$((crashes + 1))
    echo "fuzz: $t: CRASH after $runs executions ($elapsed s), exit $status" >&2
    grep -E "panicked at|ERROR: libFuzzer|SUMMARY|Test unit written|artifact_prefix" "$log" | head -20 >&2 || true
    sed -n '/panicked at/,/^note:/p' "$log" | head -20 >&2 || true
  else
    echo "fuzz: $t: $runs executions in $elapsed s"
  fi
done
echo "fuzz: ${#targets[@]} targets, $total executions, $crashes crashes"
[ "$crashes" -eq 0 ]
