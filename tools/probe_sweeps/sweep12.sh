#!/usr/bin/env bash
# Usage: tools/probe_sweeps/sweep12.sh RENDER_ROLLOUT_BIN STAGE1_RUN_DIR OUTDIR (on one GPU; see docs/results.md)
# sweep 12: fresh sprite renderers on the frozen codes of one CPU-trained stage-1 dLDM (runs/p20, seed 20).
set -u
bin=$1 src=$2 out=$3
mkdir -p $out
run() { name=$1; shift; RAYON_NUM_THREADS=1 $bin --ldm $src --episodes 32 --device cuda:0 --tune-out $out/$name --json $out/$name.json --png $out/$name.png "$@" > $out/$name.md 2> $out/$name.log & }
run sp_h1 --fresh-renderer sprite --horizon 1 --steps 1000 --lr 2e-3
run sp_h8 --fresh-renderer sprite --horizon 8 --steps 1000 --lr 2e-3
run spc_h1 --fresh-renderer sprite-composite --horizon 1 --steps 1000 --lr 2e-3
run spc_h4 --fresh-renderer sprite-composite --horizon 4 --steps 1000 --lr 2e-3
run spc_h8 --fresh-renderer sprite-composite --horizon 8 --steps 1000 --lr 2e-3
run spc_h8_2k --fresh-renderer sprite-composite --horizon 8 --steps 2000 --lr 2e-3
run spc_h8_lr1 --fresh-renderer sprite-composite --horizon 8 --steps 1000 --lr 1e-3 --chains 8
wait
for f in $out/*.md; do echo "## $(basename $f .md)"; grep "^| " $f; done > $out/summary.txt
