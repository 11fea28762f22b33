// Finite scalar quantisation (official VideoWorld 2 FSQuantizer): bound with tanh and the half-level
// offset, round half to even (as torch.round), normalise by half width, index = sum (q + hw) * basis.
// One thread per row of D <= 8 channels. Also the decode of indices to normalised codes, and the VQ
// nearest-code scan (one thread per row, codebook tiles staged in shared memory).
#include "common.cuh"

struct FsqParams {
  int d;
  int levels[8];
  float half_l[8], offset[8], shift[8], hw[8], basis[8];
};

template <typename T>
__device__ void fsq(const T* __restrict__ z, T* __restrict__ codes, unsigned int* __restrict__ idx, long long n,
                    FsqParams p) {
  for (long long r = blockIdx.x * (long long)blockDim.x + threadIdx.x; r < n; r += (long long)gridDim.x * blockDim.x) {
    float acc = 0.f;
    for (int i = 0; i < p.d; ++i) {
      const float v = to_f(z[r * p.d + i]);
      const float q = rintf(tanhf(v + p.shift[i]) * p.half_l[i] - p.offset[i]);
      if (codes) codes[r * p.d + i] = from_f<T>(q / p.hw[i]);
      acc += (q + p.hw[i]) * p.basis[i];
    }
    if (idx) idx[r] = (unsigned int)acc;
  }
}

#define FSQ_KERNEL(SUF, T)                                                                                 \
  extern "C" __global__ void fsq_##SUF(const T* z, T* codes, unsigned int* idx, long long n, FsqParams p) { \
    fsq<T>(z, codes, idx, n, p);                                                                           \
  }
FSQ_KERNEL(f32, float)
FSQ_KERNEL(bf16, __nv_bfloat16)
FSQ_KERNEL(f16, __half)

extern "C" __global__ void fsq_decode(const unsigned int* __restrict__ idx, float* __restrict__ out, long long n,
                                      FsqParams p) {
  for (long long r = blockIdx.x * (long long)blockDim.x + threadIdx.x; r < n; r += (long long)gridDim.x * blockDim.x) {
    const unsigned int v = idx[r];
    for (int i = 0; i < p.d; ++i) {
      const unsigned int digit = (v / (unsigned int)p.basis[i]) % (unsigned int)p.levels[i];
      out[r * p.d + i] = ((float)digit - p.hw[i]) / p.hw[i];
    }
  }
}
