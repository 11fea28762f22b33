#!/usr/bin/env bash
# Runs several `dldm_probe` configurations side by side on one GPU (the tiny model leaves a card
# mostly idle, so N processes share it) and collects their probe tables. A sweep for choosing the
# CPU recipe, not the CPU measurement itself: the issue's budget is 10 minutes on 2 CPU cores, and the
# chosen recipe is re-run there (docs/results.md).
#
#   tools/probe_sweep.sh BIN OUTDIR CONFIGS_FILE [DEVICE]
#
# CONFIGS_FILE: one run per line, `NAME dldm_probe-flags...` (blank lines and # comments skipped).
# Each run writes OUTDIR/NAME/ (probe.md, probe.json, dldm/metrics.jsonl) and OUTDIR/NAME.log; then
# every run's held-out codes are re-probed with the FSQ code vectors (`--probe digits+embedding`)
# into OUTDIR/NAME-emb/. OUTDIR/summary.md holds one line per run and probe. RUN_TIMEOUT=SECONDS
# stops a training run that takes longer (its line then says it failed), and a re-probe too, so a
# device call's limit is not passed in the second stage.
set -u
bin=$1 out=$2 configs=$3 device=${4:-cuda:0}
mkdir -p "$out"
pids=()
while read -r name flags; do
    [[ -z "$name" || "$name" == \#* ]] && continue
    # One CPU thread per run: the GPU does the arithmetic, the CPU the augmentation and bookkeeping.
    RAYON_NUM_THREADS=1 timeout "${RUN_TIMEOUT:-0}" "$bin" --out "$out/$name" --device "$device" $flags \
        >"$out/$name.log" 2>&1 &
    pids+=($!)
done <"$configs"
for p in "${pids[@]}"; do wait "$p"; done
while read -r name flags; do
    [[ -z "$name" || "$name" == \#* ]] && continue
    mkdir -p "$out/$name-emb"
    ln -sfn "../$name/dldm" "$out/$name-emb/dldm"
    RAYON_NUM_THREADS=1 timeout "${RUN_TIMEOUT:-0}" "$bin" --out "$out/$name-emb" --device "$device" $flags --reuse --probe digits+embedding \
        >"$out/$name-emb.log" 2>&1 &
done <"$configs"
wait
{
    echo "| run | probe | flags | table rows |"
    echo "|---|---|---|---|"
    while read -r name flags; do
        [[ -z "$name" || "$name" == \#* ]] && continue
        for r in "$name" "$name-emb"; do
            rows=$(grep '^| dldm\|^| vw1' "$out/$r/probe.md" 2>/dev/null | tr '\n' ' ')
            echo "| $r | $([[ $r == *-emb ]] && echo digits+embedding || echo digits) | \`$flags\` | ${rows:-failed: $(tail -1 "$out/$r.log")} |"
        done
    done <"$configs"
} >"$out/summary.md"
cat "$out/summary.md"
