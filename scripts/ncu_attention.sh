#!/usr/bin/env bash
# On a GPU machine, after the build: Nsight Compute's speed of light, warp states (the stall reasons)
# and scheduler statistics of one Hopper attention call per schedule, at the V4-Flash prefill case
# (S = 4096, 640 keys a query) and at decode (B = 64), each in OUT_DIR/ncu_<schedule>_<case>.txt.
#   bash scripts/ncu_attention.sh OUT_DIR [SCHEDULE...]   (keys: version 7, dims: version 4, by
#                                   LCATTN_ATTN_SCHEDULE; pair: LCATTN_ATTN_PAIR=1; default: keys dims)
# Each case's report is kept (ncu_<schedule>_<case>.ncu-rep), and the SASS instructions with the most
# warp stall samples are listed in ncu_<schedule>_<case>_sass.txt (where the block's time goes).
# Run it through gpu_check.sh's EXTRA so that it finds the built extension on PYTHONPATH.
set -uo pipefail
out=$(realpath -m "${1:-ncu_attention}")
mkdir -p "$out"
cd "$(dirname "$0")/.."
schedules=("${@:2}")
[ ${#schedules[@]} -gt 0 ] || schedules=(keys dims)
for schedule in "${schedules[@]}"; do
  case $schedule in
    keys | dims) env=(LCATTN_ATTN_SCHEDULE=$schedule) ;;
    pair) env=(LCATTN_ATTN_PAIR=1) ;;
    *) echo "unknown schedule $schedule" >&2; exit 2 ;;
  esac
  for case in prefill decode; do
    args=(--tokens 4096)
    [ "$case" = decode ] && args=(--batch 64 --tokens 1)
    # The second call: the first pays for module loading.
    report=$out/ncu_${schedule}_${case}
    env "${env[@]}" timeout 300 ncu --clock-control none -k regex:attention_sm90 --launch-skip 1 --launch-count 1 \
      --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy \
      --section SourceCounters -f -o "$report" python3 bench/python/attention_once.py "${args[@]}" >"$report.log" 2>&1
    ncu -i "$report.ncu-rep" --print-details all >"$report.txt" 2>&1
    ncu -i "$report.ncu-rep" --page source --csv --print-source sass >"$report.csv" 2>/dev/null &&
      python3 scripts/top_stalls.py "$report.csv" 40 >"${report}_sass.txt" 2>&1
    grep -E "Duration|Issued Warp|Eligible Warps|No Eligible|Stall|Warp Cycles Per" "$out/ncu_${schedule}_${case}.txt" |
      head -20 | sed "s/^/[$schedule $case] /"
  done
done
