#!/bin/sh
# Copies this worktree's flash-attention dev files into /work/main/.gpu-fa (the device tool sends the
# session's main checkout; .gpu-fa is git-ignored there through .git/info/exclude, so name it in the
# run's `carry`). On the device: FA_KERNELS=.gpu-fa/kernels python3 .gpu-fa/fa_wgmma_dev.py [--variants]
set -e
d=/work/main/.gpu-fa
mkdir -p $d/kernels
cp crates/vw-tensor-kernels/kernels/common.cuh crates/vw-tensor-kernels/kernels/flash_attn.cu \
  crates/vw-tensor-kernels/kernels/flash_attn_sm90.cu $d/kernels/
cp tools/fa_wgmma_dev.py $d/
