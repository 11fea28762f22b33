#!/usr/bin/env bash
# Usage: tools/probe_sweeps/sweep11.sh RENDER_ROLLOUT_BIN STAGE1_RUN_DIR OUTDIR (on one GPU; see docs/results.md)
# sweep 11: stage-1b variants from one CPU-trained stage-1 dLDM (runs/p20, seed 20).
set -u
bin=$1 src=$2 out=$3
mkdir -p $out
run() { name=$1; shift; RAYON_NUM_THREADS=1 $bin --ldm $src --episodes 32 --device cuda:0 --tune-out $out/$name --json $out/$name.json --png $out/$name.png "$@" > $out/$name.md 2> $out/$name.log & }
run res_h8 --horizon 8 --steps 1000 --lr 1e-3
run res_h16 --horizon 16 --steps 1000 --lr 1e-3
run fc_h1 --fresh-renderer composite --horizon 1 --steps 1000 --lr 2e-3
run fc_h4 --fresh-renderer composite --horizon 4 --steps 1000 --lr 2e-3
run fc_h8 --fresh-renderer composite --horizon 8 --steps 1000 --lr 2e-3
run fc_h8_2k --fresh-renderer composite --horizon 8 --steps 2000 --lr 2e-3
run fc_h16 --fresh-renderer composite --horizon 16 --steps 1000 --lr 2e-3
run fc_h8_c8_lr1 --fresh-renderer composite --horizon 8 --steps 1000 --lr 1e-3 --chains 8
wait
for f in $out/*.md; do echo "## $(basename $f .md)"; grep "^| " $f; done > $out/summary.txt
