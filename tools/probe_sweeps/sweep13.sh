#!/usr/bin/env bash
# Usage: tools/probe_sweeps/sweep13.sh RENDER_ROLLOUT_BIN STAGE1_RUN_DIR OUTDIR (on one GPU; see docs/results.md)
# sweep 13: stage 1b on the scripted expert's episodes (the kind of video the demo renders) from runs/p20.
set -u
bin=$1 src=$2 out=$3
mkdir -p $out
run() { name=$1; shift; RAYON_NUM_THREADS=1 $bin --ldm $src --episodes 32 --device cuda:0 --tune-out $out/$name --json $out/$name.json --png $out/$name.png "$@" > $out/$name.md 2> $out/$name.log & }
run ex_res_h8 --play-frames 0 --horizon 8 --steps 2000 --lr 1e-3
run ex_fc_h8 --play-frames 0 --fresh-renderer composite --horizon 8 --steps 2000 --lr 2e-3
run ex_spc_h8 --play-frames 0 --fresh-renderer sprite-composite --horizon 8 --steps 2000 --lr 2e-3
run ex_fc_h4 --play-frames 0 --fresh-renderer composite --horizon 4 --steps 2000 --lr 2e-3
run ex_fc_h1 --play-frames 0 --fresh-renderer composite --horizon 1 --steps 2000 --lr 2e-3
wait
for f in $out/*.md; do echo "## $(basename $f .md)"; grep "^| " $f; done > $out/summary.txt
