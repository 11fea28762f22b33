// Finite scalar quantisation (official VideoWorld 2 FSQuantizer): bound with tanh and the half-level
// offset, round half to even (as torch.round), normalise by half width, index = sum (q + hw) * basis.
// The rounded level is a monotone step function of z, so the host finds its thresholds once by
// bisection on the f32 CPU reference itself (`fsq::level_steps`) and the kernels only compare z with
// them: no tanh, the reference's values bit for bit. `fsq_v{D}_*` (fast path, levels <= 8 per
// channel): one thread per group of K rows, K the fewest whose bytes fill whole 16-byte vectors
// (K = 1 for f32 D = 4, 2 for bf16), so loads and code stores are 16 bytes wide and D is a
// compile-time constant. `fsq_*`: one thread per row of D <= 8 channels of up to 16 levels (any
// alignment). `fsq_tanh_*`: the direct formula for more levels. Also the decode of indices to
// normalised codes.
#include "common.cuh"

constexpr int FSQ_MAX_STEPS = 16;  // thresholds per channel the threshold kernels take

struct FsqParams {
  int d;
  int levels[8];
  float half_l[8], offset[8], shift[8], hw[8], basis[8];
  float thr[8][FSQ_MAX_STEPS];   // ascending steps of the rounded level, NaN-padded (never passed)
  float dthr[8][FSQ_MAX_STEPS];  // the same without the -0 -> +0 step: steps of the digit q + hw
  // The level after passing c steps is base + c, except that the zero level is split in two:
  // c == zneg gives -0, c > zneg gives base + c - 1 (zneg = 1e9 where no -0 occurs).
  float base[8], zneg[8];
  float inv_hw[8];  // RN(1 / hw)
};

// Rounded level of channel i from the number of the first S steps that v reaches (NaN stays NaN, as
// in the reference). Counted in float (exact small integers) with no table lookup: a per-lane index
// into the parameters compiles to serialised LDC loads.
template <int S>
__device__ __forceinline__ float fsq_level(float v, const FsqParams& p, int i) {
  float c = 0.f;
#pragma unroll
  for (int j = 0; j < S; ++j) c += v >= p.thr[i][j] ? 1.f : 0.f;
  const float q = c == p.zneg[i] ? -0.f : p.base[i] + c - (c > p.zneg[i] ? 1.f : 0.f);
  return v != v ? v : q;
}

// Code q / hw of channel i: q * RN(1/hw) refined by one FMA residual step, with the sign of q (for
// -0). The host takes this path only where it equals the IEEE quotient for every level value.
template <int S>
__device__ __forceinline__ float fsq_code(float v, const FsqParams& p, int i) {
  const float q = fsq_level<S>(v, p, i);
  const float y0 = __fmul_rn(q, p.inv_hw[i]);
  const float e = __fmaf_rn(-y0, p.hw[i], q);
  return copysignf(__fmaf_rn(e, p.inv_hw[i], y0), q);
}

// Digit q + hw of channel i (the reference's index term before the basis): the number of digit
// steps v reaches (base == -hw, host-checked); NaN stays NaN.
template <int S>
__device__ __forceinline__ float fsq_digit(float v, const FsqParams& p, int i) {
  float c = 0.f;
#pragma unroll
  for (int j = 0; j < S; ++j) c += v >= p.dthr[i][j] ? 1.f : 0.f;
  return v != v ? v : c;
}

// The reference's formula (fallback for channels of more than 16 levels). Explicit _rn ops keep the
// compiler from fusing into FMAs, which would round differently.
__device__ __forceinline__ float fsq_round_tanh(float v, const FsqParams& p, int i) {
  return rintf(__fsub_rn(__fmul_rn(tanhf(__fadd_rn(v, p.shift[i])), p.half_l[i]), p.offset[i]));
}

// One row per thread, run-time D <= 8 (fully unrolled over 8 with a bound check, so the parameter
// arrays are indexed statically); S = 0 takes the tanh formula.
template <typename T, int S>
__device__ void fsq(const T* __restrict__ z, T* __restrict__ codes, unsigned int* __restrict__ idx, long long n,
                    const FsqParams& p) {
  for (long long r = blockIdx.x * (long long)blockDim.x + threadIdx.x; r < n; r += (long long)gridDim.x * blockDim.x) {
    float acc = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      if (i >= p.d) break;
      const float v = to_f(z[r * p.d + i]);
      if constexpr (S == 0) {
        const float q = fsq_round_tanh(v, p, i);
        if (codes) codes[r * p.d + i] = from_f<T>(__fdiv_rn(q, p.hw[i]));
        acc = __fadd_rn(acc, __fmul_rn(__fadd_rn(q, p.hw[i]), p.basis[i]));
      } else {
        if (codes) codes[r * p.d + i] = from_f<T>(fsq_code<S>(v, p, i));
        if (idx) acc = __fadd_rn(acc, __fmul_rn(fsq_digit<S - 1>(v, p, i), p.basis[i]));
      }
    }
    if (idx) idx[r] = (unsigned int)acc;
  }
}

__host__ __device__ constexpr int gcd_c(int a, int b) { return b == 0 ? a : gcd_c(b, a % b); }

// Needs a 16-byte aligned z (the host checks) and channels of at most 8 levels; the last n % K rows
// go through the scalar path.
template <typename T, int D>
__device__ void fsq_vec(const T* __restrict__ z, T* __restrict__ codes, unsigned int* __restrict__ idx, long long n,
                        const FsqParams& p) {
  constexpr int S = 8;
  constexpr int K = 16 / gcd_c(16, D * (int)sizeof(T));  // rows per group
  constexpr int NV = K * D * (int)sizeof(T) / 16;         // 16-byte vectors per group
  const long long groups = n / K;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long g = blockIdx.x * (long long)blockDim.x + threadIdx.x; g < groups; g += stride) {
    uint4 u[NV];
    const uint4* src = reinterpret_cast<const uint4*>(z) + g * NV;
#pragma unroll
    for (int v = 0; v < NV; ++v) u[v] = __ldcs(src + v);
    const T* e = reinterpret_cast<const T*>(u);
    if (codes) {
      alignas(16) T o[K * D];
#pragma unroll
      for (int r = 0; r < K; ++r) {
#pragma unroll
        for (int i = 0; i < D; ++i) o[r * D + i] = from_f<T>(fsq_code<S>(to_f(e[r * D + i]), p, i));
      }
      uint4* dst = reinterpret_cast<uint4*>(codes) + g * NV;
#pragma unroll
      for (int v = 0; v < NV; ++v) __stcs(dst + v, reinterpret_cast<const uint4*>(o)[v]);
    }
    if (idx) {
      alignas(16) unsigned int ix[K];
#pragma unroll
      for (int r = 0; r < K; ++r) {
        float acc = 0.f;
#pragma unroll
        for (int i = 0; i < D; ++i) acc = __fadd_rn(acc, __fmul_rn(fsq_digit<S - 1>(to_f(e[r * D + i]), p, i), p.basis[i]));
        ix[r] = (unsigned int)acc;
      }
      if constexpr (K % 4 == 0) {
#pragma unroll
        for (int v = 0; v < K / 4; ++v) __stcs(reinterpret_cast<uint4*>(idx + g * K) + v, reinterpret_cast<const uint4*>(ix)[v]);
      } else {
#pragma unroll
        for (int r = 0; r < K; ++r) idx[g * K + r] = ix[r];
      }
    }
  }
  // Tail rows: one thread each, after the groups.
  const long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  const long long r = groups * K + t;
  if (t < K - 1 && r < n) {
    float acc = 0.f;
#pragma unroll
    for (int i = 0; i < D; ++i) {
      const float v = to_f(z[r * D + i]);
      if (codes) codes[r * D + i] = from_f<T>(fsq_code<S>(v, p, i));
      if (idx) acc = __fadd_rn(acc, __fmul_rn(fsq_digit<S - 1>(v, p, i), p.basis[i]));
    }
    if (idx) idx[r] = (unsigned int)acc;
  }
}

#define FSQ_VEC_KERNEL(SUF, T, D)                                                                          \
  extern "C" __global__ void fsq_v##D##_##SUF(const T* z, T* codes, unsigned int* idx, long long n, FsqParams p) { \
    fsq_vec<T, D>(z, codes, idx, n, p);                                                                     \
  }
#define FSQ_VEC_KERNELS(SUF, T) \
  FSQ_VEC_KERNEL(SUF, T, 1)     \
  FSQ_VEC_KERNEL(SUF, T, 2)     \
  FSQ_VEC_KERNEL(SUF, T, 3)     \
  FSQ_VEC_KERNEL(SUF, T, 4)     \
  FSQ_VEC_KERNEL(SUF, T, 5)     \
  FSQ_VEC_KERNEL(SUF, T, 6)     \
  FSQ_VEC_KERNEL(SUF, T, 7)     \
  FSQ_VEC_KERNEL(SUF, T, 8)
FSQ_VEC_KERNELS(f32, float)
FSQ_VEC_KERNELS(bf16, __nv_bfloat16)
FSQ_VEC_KERNELS(f16, __half)

#define FSQ_KERNEL(SUF, T)                                                                                       \
  extern "C" __global__ void fsq_##SUF(const T* z, T* codes, unsigned int* idx, long long n, FsqParams p) {      \
    fsq<T, FSQ_MAX_STEPS>(z, codes, idx, n, p);                                                                  \
  }                                                                                                              \
  extern "C" __global__ void fsq_tanh_##SUF(const T* z, T* codes, unsigned int* idx, long long n, FsqParams p) { \
    fsq<T, 0>(z, codes, idx, n, p);                                                                              \
  }
FSQ_KERNEL(f32, float)
FSQ_KERNEL(bf16, __nv_bfloat16)
FSQ_KERNEL(f16, __half)

extern "C" __global__ void fsq_decode(const unsigned int* __restrict__ idx, float* __restrict__ out, long long n,
                                      FsqParams p) {
  for (long long r = blockIdx.x * (long long)blockDim.x + threadIdx.x; r < n; r += (long long)gridDim.x * blockDim.x) {
    const unsigned int v = idx[r];
#pragma unroll
    for (int i = 0; i < 8; ++i) {  // unrolled: static indices keep the parameters out of local memory
      if (i >= p.d) break;
      const unsigned int digit = (v / (unsigned int)p.basis[i]) % (unsigned int)p.levels[i];
      out[r * p.d + i] = ((float)digit - p.hw[i]) / p.hw[i];
    }
  }
}
