#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS seconds each, one after another, and
# prints how many inputs each executed. Exits non-zero if any target crashed, hung or failed to
# build; the input that did it is in fuzz/artifacts/<target>/.
#
#   fuzz/run.sh SECONDS [TARGET...]
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Builds with debug
# assertions (so arithmetic overflow is a finding too) and AddressSanitizer. Starts from the
# committed corpus (fuzz/corpus/<target>, never modified here) and keeps what it finds in
# fuzz/work/<target> (ignored by git; copy an input into the corpus to keep it). Honours
# CARGO_TARGET_DIR. CI does not run this: it replays the committed corpus on stable
# (crates/memlink/tests/fuzz_corpus.rs).
set -uo pipefail
cd "$(dirname "$0")"

seconds=${1:-}
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
  echo "usage: fuzz/run.sh SECONDS [TARGET...]" >&2
  exit 2
fi
shift
if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for file in fuzz_targets/*.rs; do
    targets+=("$(basename "$file" .rs)")
  done
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz (and the nightly toolchain) are needed: cargo install cargo-fuzz" >&2
  exit 2
fi

echo "== building ${#targets[@]} targets"
if ! cargo +nightly fuzz build --debug-assertions; then
  echo "build failed" >&2
  exit 1
fi

mkdir -p work
failed=()
summary=()
for target in "${targets[@]}"; do
  echo "== $target: ${seconds}s"
  mkdir -p "work/$target"
  log="work/$target.log"
  cargo +nightly fuzz run --debug-assertions "$target" "work/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1
  status=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
  corpus=$(find "work/$target" -type f | wc -l)
  if [ "$status" -ne 0 ]; then
    failed+=("$target")
    grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written|^thread' "$log" | head -8
    summary+=("$(printf '%-14s FAILED (exit %s) after %s runs; see fuzz/%s' "$target" "$status" "${runs:-?}" "$log")")
  else
    summary+=("$(printf '%-14s %10s runs  %7s/s  cov %5s  %5s new inputs' "$target" "${runs:-?}" "${speed:-?}" "${cov:-?}" "$corpus")")
  fi
done

echo "== summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
