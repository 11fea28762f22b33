#!/usr/bin/env bash
# Installs a CUDA 13.0 build toolchain from PyPI wheels (nvcc, headers, cudart, cuBLAS, cuRAND, NVRTC)
# into PREFIX, laid out like a toolkit, plus link-time stubs of libcuda.so, libnccl.so and libcudnn.so.
# It lets a machine with no GPU and no CUDA install build `--features cuda` (and `nccl`, `cudnn`); the
# binaries then run where an NVIDIA driver for CUDA >= 13.0 is installed (the real libcuda is found
# there at run time) and, for `nccl` / `cudnn`, where libnccl.so.2 / libcudnn.so.9 are on the library
# path (e.g. PyTorch's nvidia-nccl-cu13 and nvidia-cudnn-cu13 wheels).
#
#   scripts/install-cuda-toolkit.sh [PREFIX]       # default: $HOME/.cache/vw-cuda-13.0
#   source PREFIX/env.sh && cargo build --release --features cuda
set -euo pipefail

PREFIX=${1:-$HOME/.cache/vw-cuda-13.0}
HERE=$(cd "$(dirname "$0")" && pwd)

if [ -x "$PREFIX/bin/nvcc" ] && [ -f "$PREFIX/lib/stubs/libcuda.so" ] && [ -f "$PREFIX/lib/stubs/libnccl.so" ] \
  && [ -f "$PREFIX/lib/stubs/libcudnn.so" ] \
  && [ -f "$PREFIX/env.sh" ]; then
  echo "CUDA toolchain already installed at $PREFIX"
  exit 0
fi

# Wheel versions of the CUDA 13.0 release, pinned so every build sees the same compiler.
WHEELS=(
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14 nvidia-curand==10.4.5.25
)
VENV="$PREFIX.venv"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "${WHEELS[@]}"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
TOOLKIT="$SITE/nvidia/cu13"
[ -x "$TOOLKIT/bin/nvcc" ] || { echo "error: nvcc not found in $TOOLKIT after install" >&2; exit 1; }

rm -rf "$PREFIX"
ln -s "$TOOLKIT" "$PREFIX"

# Unversioned names for the linker (the wheels ship only the SONAME files).
cd "$PREFIX/lib"
for lib in cublas cublasLt cudart nvrtc; do
  [ -e "lib$lib.so" ] || ln -s "lib$lib.so.13" "lib$lib.so"
done
[ -e libcurand.so ] || ln -s libcurand.so.10 libcurand.so

# libcuda.so comes with the driver, not the toolkit: link against a stub exporting the driver API
# entry points we (cudarc, candle) reference. Symbols are listed one per line in cuda-driver-symbols.txt.
mkdir -p stubs
sed -e '/^#/d' -e '/^$/d' -e 's/.*/void &(void) {}/' "$HERE/cuda-driver-symbols.txt" > stubs/libcuda.c
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 stubs/libcuda.c -o stubs/libcuda.so
ln -sf libcuda.so stubs/libcuda.so.1
# The same for NCCL (`--features nccl`): the binary records libnccl.so.2, found at run time.
sed -e '/^#/d' -e '/^$/d' -e 's/.*/void &(void) {}/' "$HERE/nccl-symbols.txt" > stubs/libnccl.c
gcc -shared -fPIC -Wl,-soname,libnccl.so.2 stubs/libnccl.c -o stubs/libnccl.so
sed -e '/^#/d' -e '/^$/d' -e 's/.*/void &(void) {}/' "$HERE/cudnn-symbols.txt" > stubs/libcudnn.c
gcc -shared -fPIC -Wl,-soname,libcudnn.so.9 stubs/libcudnn.c -o stubs/libcudnn.so

cat > "$PREFIX/env.sh" <<ENV
# Source this before: cargo build --features cuda
export CUDA_HOME="$PREFIX" CUDA_PATH="$PREFIX" CUDA_ROOT="$PREFIX"
export PATH="$PREFIX/bin:\$PATH"
export LIBRARY_PATH="$PREFIX/lib:$PREFIX/lib/stubs:\${LIBRARY_PATH:-}"
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
ENV
"$PREFIX/bin/nvcc" --version | tail -n 1
echo "installed; now run: source $PREFIX/env.sh"
