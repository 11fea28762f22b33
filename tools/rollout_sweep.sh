#!/usr/bin/env bash
# Trains several `dldm_probe` configurations side by side on one GPU, then scores each trained dLDM's
# renderer with `render_rollout` (the expert's codes of held-out episodes rendered back and judged,
# before and after stage-1b rollout tuning). A sweep for choosing the CPU recipe; the chosen one is
# re-run on the CPU (docs/results.md).
#
#   tools/rollout_sweep.sh PROBE_BIN ROLLOUT_BIN OUTDIR CONFIGS_FILE [DEVICE] [ROLLOUT_FLAGS...]
#
# CONFIGS_FILE as for tools/probe_sweep.sh (`NAME dldm_probe-flags...` per line). Each run writes
# OUTDIR/NAME/ (probe.md, dldm/), OUTDIR/NAME/tuned/ (the stage-1b run), OUTDIR/NAME.log and
# OUTDIR/NAME-rollout.md; OUTDIR/summary.md collects the tables. RUN_TIMEOUT=SECONDS bounds each
# training run.
set -u
probe=$1 rollout=$2 out=$3 configs=$4 device=${5:-cuda:0}
shift $(( $# < 5 ? $# : 5 ))
mkdir -p "$out"
runs() { grep -v '^\s*\(#\|$\)' "$configs"; }
pids=()
while read -r name flags; do
    RAYON_NUM_THREADS=1 timeout "${RUN_TIMEOUT:-0}" "$probe" --out "$out/$name" --device "$device" $flags \
        >"$out/$name.log" 2>&1 &
    pids+=($!)
done < <(runs)
for p in "${pids[@]}"; do wait "$p"; done
while read -r name flags; do
    RAYON_NUM_THREADS=1 "$rollout" --ldm "$out/$name/dldm" --tune-out "$out/$name/tuned" --device "$device" \
        --json "$out/$name/rollout.json" "$@" >"$out/$name-rollout.md" 2>"$out/$name-rollout.log" &
done < <(runs)
wait
{
    while read -r name flags; do
        echo "## $name \`$flags\`"
        grep '^| dldm' "$out/$name/probe.md" 2>/dev/null || echo "probe failed: $(tail -1 "$out/$name.log")"
        cat "$out/$name-rollout.md"
        echo
    done < <(runs)
} >"$out/summary.md"
cat "$out/summary.md"
