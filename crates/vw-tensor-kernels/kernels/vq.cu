// VQ nearest code: for each row of z (N, D) the index of the codebook row (K, D) with the smallest
// squared L2 distance (first minimum wins). One thread per z row; codebook tiles in shared memory.
#include "common.cuh"

template <typename T>
__device__ void vq(const T* __restrict__ z, const T* __restrict__ cb, unsigned int* __restrict__ out, int N, int K,
                   int D) {
  extern __shared__ float tile[];
  const int tk = max(1, 4096 / D);
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  float best = __int_as_float(0x7f800000);
  unsigned int arg = 0;
  for (int k0 = 0; k0 < K; k0 += tk) {
    const int nk = min(tk, K - k0);
    __syncthreads();
    for (int i = threadIdx.x; i < nk * D; i += blockDim.x) tile[i] = to_f(cb[(size_t)k0 * D + i]);
    __syncthreads();
    if (r < N) {
      for (int j = 0; j < nk; ++j) {
        float d = 0.f;
        for (int c = 0; c < D; ++c) {
          const float e = to_f(z[(size_t)r * D + c]) - tile[j * D + c];
          d += e * e;
        }
        if (d < best) {
          best = d;
          arg = k0 + j;
        }
      }
    }
  }
  if (r < N) out[r] = arg;
}

#define VQ_KERNEL(SUF, T)                                                                               \
  extern "C" __global__ void vq_##SUF(const T* z, const T* cb, unsigned int* out, int N, int K, int D) { \
    vq<T>(z, cb, out, N, K, D);                                                                          \
  }
VQ_KERNEL(f32, float)
VQ_KERNEL(bf16, __nv_bfloat16)
VQ_KERNEL(f16, __half)
