#!/usr/bin/env bash
# Memory over a long training run: starts `anetrain train` and samples its VmRSS from
# /proc/<pid>/status every RSS_INTERVAL seconds (default 1), with VmHWM (the kernel's peak)
# and the last step the JSONL log has reached, into OUT/rss.csv; then prints the start,
# peak and end RSS, the RSS at six evenly spaced steps, and the slope of RSS against step
# over the second half of the run (a leak shows as a positive slope).
#
#   [STEPS=N] [RSS_INTERVAL=S] scripts/rss_soak.sh [OUT] [extra train flags…]
#
# Defaults: OUT=runs/rss-soak, stories260k on the built-in corpus, 1200 steps of batch 4 ×
# seq 128, validation and a checkpoint every 200 steps. Needs `cargo build --release` first
# (or ANETRAIN=path/to/anetrain).
set -euo pipefail
out=${1:-runs/rss-soak}
shift || true
bin=${ANETRAIN:-target/release/anetrain}
[ -x "$bin" ] || { echo "no $bin: run cargo build --release first" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out"
args=(train --model stories260k --steps "${STEPS:-1200}" --batch 4 --seq 128 --eval-every 200
      --ckpt-every 200 --out "$out" --quiet "$@")
echo "command: $bin ${args[*]}" | tee "$out/command.txt"
"$bin" "${args[@]}" >"$out/stdout.txt" 2>"$out/stderr.txt" &
pid=$!
interval=${RSS_INTERVAL:-1}
echo "t_s,rss_kib,step,hwm_kib" >"$out/rss.csv"
t0=$(date +%s.%N)
while kill -0 "$pid" 2>/dev/null; do
  read -r rss hwm < <(awk '/^VmRSS:/ {r = $2} /^VmHWM:/ {h = $2} END {print r, h}' \
    "/proc/$pid/status" 2>/dev/null || true)
  step=$(tail -n 50 "$out/run.jsonl" 2>/dev/null \
    | grep -o '"type":"step","step":[0-9]*' | tail -n 1 | grep -o '[0-9]*$' || true)
  t=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  [ -n "${rss:-}" ] && echo "$t,$rss,${step:-0},$hwm" >>"$out/rss.csv"
  sleep "$interval"
done
wait "$pid"
status=$?
steps=${STEPS:-1200}
every=$(( (steps / 6 + 199) / 200 * 200 ))
awk -F, -v every="$every" 'NR > 1 {
    n++; t[n] = $1; r[n] = $2; s[n] = $3; hwm = $4
    if ($2 > peak) { peak = $2; peak_step = $3 }
    if (first == "" && $3 > 0) { first = $2; first_step = $3 }
    while ($3 >= mark + every) { mark += every; at[mark] = $2 }
  }
  END {
    # Least-squares slope of RSS against step over the second half of the samples.
    for (i = int(n / 2) + 1; i <= n; i++) { m++; sx += s[i]; sy += r[i]; sxx += s[i] * s[i]; sxy += s[i] * r[i] }
    slope = (m * sxy - sx * sy) / (m * sxx - sx * sx)
    printf "samples:           %d over %.0f s, last step %d\n", n, t[n], s[n]
    printf "start RSS:         %.1f MiB (first sample with training under way, step %d)\n", first / 1024, first_step
    printf "peak RSS:          %.1f MiB (first reached at step %d)\n", peak / 1024, peak_step
    printf "end RSS:           %.1f MiB (last sample, step %d)\n", r[n] / 1024, s[n]
    printf "VmHWM:             %.1f MiB (the kernel'"'"'s peak, between samples too)\n", hwm / 1024
    printf "RSS at step:      "
    for (k = every; k <= mark; k += every) printf " %d: %.1f", k, at[k] / 1024
    printf " MiB\n"
    printf "second-half slope: %.2f KiB per 100 steps\n", slope * 100
  }' "$out/rss.csv" | tee "$out/summary.txt"
grep -h "efficiency report" -A 3 "$out/stderr.txt" "$out/stdout.txt" 2>/dev/null | head -n 4 || true
exit "$status"
