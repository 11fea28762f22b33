#!/usr/bin/env bash
# On a device machine (docs/performance.md, "Across device calls"): the demo on cuda:0, from the
# packed binary .gpu-vw/vw.xz (it needs only CUDA's libraries, which the device has).
#
#   tools/device_demo.sh OUT SECONDS [eval]
#
# `eval` first runs the default demo (committed checkpoints, evaluation only) on the GPU. Then it
# continues `vw demo --retrain --large --device cuda:0 --out runs/gpu-demo` until SECONDS after the
# script started (SIGINT then: every stage in training writes its checkpoint and the next call
# continues; SIGKILL 30 s later), and leaves runs/gpu-demo as OUT/gpu-demo.tar (unpack it over
# runs/gpu-demo before the next call). nvidia-smi samples the GPU's load every 5 s meanwhile.
set -u
out=$1
secs=$2
t0=$(date +%s)
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
xz -d -c .gpu-vw/vw.xz > /tmp/vw && chmod +x /tmp/vw
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 5 > "$out/smi.csv" &
smi=$!
if [ "${3:-}" = eval ]; then
    /tmp/vw demo --device cuda:0 --out runs/gpu-eval > "$out/eval.log" 2> "$out/eval.err"
    echo "eval rc=$? after $(( $(date +%s) - t0 )) s" | tee -a "$out/rc.txt"
    tar -cf "$out/gpu-eval.tar" runs/gpu-eval
fi
start=$(date +%s)
timeout -s INT -k 30 $(( secs - (start - t0) )) /tmp/vw demo --retrain --large --device cuda:0 --out runs/gpu-demo \
    > "$out/retrain.log" 2> "$out/retrain.err"
echo "retrain rc=$? after $(( $(date +%s) - start )) s" | tee -a "$out/rc.txt"
kill $smi
mkdir -p runs/gpu-demo && tar -cf "$out/gpu-demo.tar" runs/gpu-demo
tail -c 3000 "$out/retrain.log"
