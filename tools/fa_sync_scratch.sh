#!/bin/sh
# Copies this worktree's flash-attention dev files into /work/main/scratch-fa (the device tool sends
# the session's main checkout); run there as: FA_KERNELS=scratch-fa/kernels python3 scratch-fa/fa_wgmma_dev.py
set -e
d=/work/main/scratch-fa
mkdir -p $d/kernels
cp crates/vw-tensor-kernels/kernels/common.cuh crates/vw-tensor-kernels/kernels/flash_attn.cu crates/vw-tensor-kernels/kernels/flash_attn_sm90.cu $d/kernels/
cp tools/fa_wgmma_dev.py $d/
