#!/usr/bin/env bash
# The multi-GPU measurements of docs/performance.md ("Data-parallel training"), run on the GPU host:
#   tools/device_ddp.sh VW_BINARY OUT_DIR [MAX_GPUS]
# NCCL correctness + all-reduce bandwidth (ours vs PyTorch's NCCL), then stage-1 dLDM training
# (tools/ddp_stage1.json) at 1, 2, 4 GPUs: strong scaling (global batch 512) and weak scaling
# (512 per GPU), summarised by tools/ddp_scaling.py. NVLink multicast stays off.
set -uo pipefail
VW=$1; OUT=$2; MAXG=${3:-4}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
NCCL_LIB=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))')
export LD_LIBRARY_PATH=$NCCL_LIB:${LD_LIBRARY_PATH:-}
mkdir -p "$OUT"
nvidia-smi topo -m > "$OUT/topo.txt" 2>&1
python3 -c 'import torch; print("torch", torch.__version__, "nccl", torch.cuda.nccl.version(), "gpus", torch.cuda.device_count())' | tee "$OUT/env.txt"
GPUS=(1 2 4)
for n in "${GPUS[@]}"; do
  [ "$n" -le "$MAXG" ] || continue
  if [ "$n" -eq 1 ]; then timeout 120 "$VW" dist-check --device cuda --json "$OUT/dist_check_1.json"
  else timeout 120 "$VW" dist-check --nproc "$n" --device cuda --json "$OUT/dist_check_$n.json"; fi
  [ "$n" -gt 1 ] && timeout 120 torchrun --nproc_per_node="$n" tools/bench_torch_allreduce.py --json "$OUT/torch_allreduce_$n.json"
done 2>&1 | tee "$OUT/dist_check.txt"
python3 - "$OUT" <<'PY'
import json, sys
cfg = json.load(open("tools/ddp_stage1.json"))
for n in (2, 4):
    c = json.loads(json.dumps(cfg)); c["train"]["batch_size"] = 512 * n
    json.dump(c, open(f"{sys.argv[1]}/weak_{n}.json", "w"))
PY
runs=()
for n in 1 2 4; do
  [ "$n" -le "$MAXG" ] || continue
  np=(); [ "$n" -gt 1 ] && np=(--nproc "$n")
  ( time timeout 150 "$VW" train-dldm --config tools/ddp_stage1.json --out "$OUT/strong_$n" --device cuda "${np[@]}" ) > "$OUT/strong_$n.log" 2>&1
  runs+=("$OUT/strong_$n=${n} GPU, batch 512")
done
for n in 2 4; do
  [ "$n" -le "$MAXG" ] || continue
  ( time timeout 150 "$VW" train-dldm --config "$OUT/weak_$n.json" --out "$OUT/weak_$n" --device cuda --nproc "$n" ) > "$OUT/weak_$n.log" 2>&1
  runs+=("$OUT/weak_$n=${n} GPU, batch $((512 * n))")
done
python3 tools/ddp_scaling.py --skip 10 "${runs[@]}" | tee "$OUT/scaling.md"
