#!/usr/bin/env bash
# Runs the fuzz targets one after another, each for SECONDS, and prints one line per target:
# seconds, executions, corpus size and whether it crashed.
#
#   fuzz/run.sh [SECONDS] [TARGET…]        (default: 300 s each, every target)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain RUSTC_BOOTSTRAP=1
# lets it use the nightly flags it needs. New corpus entries go to fuzz/corpus/TARGET
# (ignored by git), crash inputs to fuzz/artifacts/TARGET, full output to fuzz/logs/TARGET.log.
set -uo pipefail
cd "$(dirname "$0")"
secs=${1:-300}
shift || true
export RUSTC_BOOTSTRAP=1
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi
cargo fuzz build || exit 1
mkdir -p logs
failed=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  extra=()
  case $t in jsonl | config | token_data | checkpoint | tokenize_inputs) extra=(-dict=dicts/json.dict) ;; esac
  # tokenize_files starts a rayon pool per call, whose threads exit after the call returns;
  # LeakSanitizer then reports their thread-exit bookkeeping (glibc's
  # __cxa_thread_atexit_impl, 32 bytes) as a leak. Not a leak: the memory goes with the thread.
  [ "$t" = tokenize_inputs ] && extra+=(-detect_leaks=0)
  cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$secs" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 "${extra[@]}" >"logs/$t.log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "logs/$t.log" | grep -o '[0-9]*$')
  corpus=$(ls "corpus/$t" | wc -l)
  if [ $rc -eq 0 ]; then verdict="no crash"; else verdict="CRASH (exit $rc, see logs/$t.log)"; failed=1; fi
  printf '%-16s %5d s %12s execs %6d corpus files  %s\n' "$t" "$secs" "${execs:-?}" "$corpus" "$verdict"
done
exit $failed
