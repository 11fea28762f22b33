// Rotary embedding apply: x (B,H,L,D), cos/sin (L, D/2) f32; one thread per rotated pair.
// layout 0 pairs channel i with i + D/2 (rotate-half), layout 1 pairs 2i with 2i+1 (interleaved).
#include "common.cuh"

template <typename T>
__device__ void rope(const T* __restrict__ x, const float* __restrict__ cs, const float* __restrict__ sn,
                     T* __restrict__ y, long long pairs, int L, int D, int interleaved) {
  const int half = D / 2;
  for (long long p = blockIdx.x * (long long)blockDim.x + threadIdx.x; p < pairs; p += (long long)gridDim.x * blockDim.x) {
    const long long rowi = p / half;
    const int i = (int)(p % half), l = (int)(rowi % L);
    const long long base = rowi * D;
    const long long ia = base + (interleaved ? 2 * i : i), ib = base + (interleaved ? 2 * i + 1 : i + half);
    const float c = cs[l * half + i], s = sn[l * half + i];
    const float a = to_f(x[ia]), b = to_f(x[ib]);
    y[ia] = from_f<T>(a * c - b * s);
    y[ib] = from_f<T>(b * c + a * s);
  }
}

#define ROPE_KERNEL(SUF, T)                                                                           \
  extern "C" __global__ void rope_##SUF(const T* x, const float* c, const float* s, T* y, long long pairs, \
                                        int L, int D, int interleaved) {                              \
    rope<T>(x, c, s, y, pairs, L, D, interleaved);                                                    \
  }
ROPE_KERNEL(f32, float)
ROPE_KERNEL(bf16, __nv_bfloat16)
ROPE_KERNEL(f16, __half)
