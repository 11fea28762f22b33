// Fused LayerNorm / RMSNorm + AdaLN modulation, `norm(x) * (1 + scale) + shift`, over rows of
// (B, L, C); statistics in f32 with a two-pass mean/variance over the row, shift and scale are f32
// read through (b, l, c) broadcast strides. Plus the gated residual `x + gate * y`.
//
// The fast path (`norm_modulate_w{NV}_*`) gives each row to one warp: the row stays in registers
// as raw 16-byte vectors (NV per lane), both reductions are warp shuffles, and a CTA holds several
// rows, so many independent 16-byte loads are in flight per SM and no __syncthreads is needed.
// `norm_modulate_*` (one CTA per row) is the fallback for rows too long for one warp's registers
// and for C not a multiple of the vector width.
#include "common.cuh"

__device__ __forceinline__ float block_sum(float v, float* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float s = lane < nw ? red[lane] : 0.f;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
  return s;
}

template <typename T>
__device__ void norm_mod(const T* __restrict__ x, const float* __restrict__ shift, const float* __restrict__ scale,
                         T* __restrict__ y, int L, int C, long long ssb, long long ssl, long long ssc, long long scb,
                         long long scl, long long scc, float eps, int rms) {
  __shared__ float red[32];
  const long long row = blockIdx.x;
  const int b = (int)(row / L), l = (int)(row % L);
  const T* xr = x + row * C;
  T* yr = y + row * C;
  float mean = 0.f;
  if (!rms) {
    float s = 0.f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) s += to_f(xr[c]);
    mean = block_sum(s, red) / C;
  }
  float s2 = 0.f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float d = to_f(xr[c]) - mean;
    s2 += d * d;
  }
  const float rstd = rsqrtf(block_sum(s2, red) / C + eps);
  const float* sh = shift + b * ssb + l * ssl;
  const float* sc = scale + b * scb + l * scl;
  for (int c = threadIdx.x; c < C; c += blockDim.x)
    yr[c] = from_f<T>((to_f(xr[c]) - mean) * rstd * (1.f + sc[c * scc]) + sh[c * ssc]);
}

template <typename T>
__device__ void gated(const T* __restrict__ x, const float* __restrict__ gate, const T* __restrict__ yv,
                      T* __restrict__ out, int L, int C, long long gb, long long gl, long long gc) {
  const long long row = blockIdx.x;
  const int b = (int)(row / L), l = (int)(row % L);
  const float* gr = gate + b * gb + l * gl;
  for (int c = threadIdx.x; c < C; c += blockDim.x)
    out[row * C + c] = from_f<T>(to_f(x[row * C + c]) + gr[c * gc] * to_f(yv[row * C + c]));
}

// Fast path: the row lives in registers (one DRAM read), 16-byte loads and stores. Needs C a
// multiple of the vector width and C <= 4 * blockDim * width (8192 bf16 / 4096 f32 channels at 256).
template <typename T>
__device__ void norm_mod_vec(const T* __restrict__ x, const float* __restrict__ shift, const float* __restrict__ scale,
                             T* __restrict__ y, int L, int C, long long ssb, long long ssl, long long ssc,
                             long long scb, long long scl, long long scc, float eps, int rms) {
  constexpr int E = 16 / sizeof(T), NV = 4;
  __shared__ float red[32];
  const long long row = blockIdx.x;
  const int b = (int)(row / L), l = (int)(row % L);
  const uint4* xr = reinterpret_cast<const uint4*>(x + row * C);
  uint4* yr = reinterpret_cast<uint4*>(y + row * C);
  const int nvec = C / E;
  float v[NV][E];
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int idx = threadIdx.x + i * blockDim.x;
    if (idx < nvec) {
      uint4 u = xr[idx];
      const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
      for (int j = 0; j < E; ++j) {
        v[i][j] = to_f(e[j]);
        s += v[i][j];
      }
    }
  }
  const float mean = rms ? 0.f : block_sum(s, red) / C;
  float s2 = 0.f;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    if (threadIdx.x + i * blockDim.x < nvec) {
#pragma unroll
      for (int j = 0; j < E; ++j) {
        const float d = v[i][j] - mean;
        s2 += d * d;
      }
    }
  }
  const float rstd = rsqrtf(block_sum(s2, red) / C + eps);
  const float* sh = shift + b * ssb + l * ssl;
  const float* sc = scale + b * scb + l * scl;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int idx = threadIdx.x + i * blockDim.x;
    if (idx < nvec) {
      alignas(16) T o[E];
#pragma unroll
      for (int j = 0; j < E; ++j) {
        const int c = idx * E + j;
        o[j] = from_f<T>((v[i][j] - mean) * rstd * (1.f + sc[c * scc]) + sh[c * ssc]);
      }
      yr[idx] = *reinterpret_cast<const uint4*>(o);
    }
  }
}

template <typename T>
__device__ void gated_vec(const T* __restrict__ x, const float* __restrict__ gate, const T* __restrict__ yv,
                          T* __restrict__ out, int L, int C, long long gb, long long gl, long long gc) {
  constexpr int E = 16 / sizeof(T);
  const long long row = blockIdx.x;
  const int b = (int)(row / L), l = (int)(row % L);
  const float* gr = gate + b * gb + l * gl;
  const uint4* xr = reinterpret_cast<const uint4*>(x + row * C);
  const uint4* yr = reinterpret_cast<const uint4*>(yv + row * C);
  uint4* orow = reinterpret_cast<uint4*>(out + row * C);
  for (int idx = threadIdx.x; idx < C / E; idx += blockDim.x) {
    uint4 ux = xr[idx], uy = yr[idx];
    const T* ex = reinterpret_cast<const T*>(&ux);
    const T* ey = reinterpret_cast<const T*>(&uy);
    alignas(16) T o[E];
#pragma unroll
    for (int j = 0; j < E; ++j) o[j] = from_f<T>(to_f(ex[j]) + gr[(idx * E + j) * gc] * to_f(ey[j]));
    orow[idx] = *reinterpret_cast<const uint4*>(o);
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}

// The E values of a 16-byte vector, as f32.
template <typename T, int E>
__device__ __forceinline__ void unpack(const uint4& u, float* f) {
  const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
  for (int j = 0; j < E; ++j) f[j] = to_f(e[j]);
}
// bf16: two bit operations per pair, in volatile asm so nvcc redoes them in each pass over the row
// instead of keeping the row as f32 live across the reductions (C = 2048: 117 -> 80 registers, so
// 24 instead of 16 warps per SM).
template <>
__device__ __forceinline__ void unpack<__nv_bfloat16, 8>(const uint4& u, float* f) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    uint32_t lo, hi;
    asm volatile("shl.b32 %0, %1, 16;" : "=r"(lo) : "r"(w[k]));
    asm volatile("and.b32 %0, %1, 0xffff0000;" : "=r"(hi) : "r"(w[k]));
    f[2 * k] = __uint_as_float(lo), f[2 * k + 1] = __uint_as_float(hi);
  }
}

// One warp per row; lane holds vectors lane, lane + 32, ... (NV of them, coalesced across the
// warp). Needs C % E == 0, C <= 32 * NV * E and 16-byte aligned x / y (the host checks).
template <typename T, int NV>
__device__ void norm_mod_warp(const T* __restrict__ x, const float* __restrict__ shift,
                              const float* __restrict__ scale, T* __restrict__ y, long long rows, int L, int C,
                              long long ssb, long long ssl, long long ssc, long long scb, long long scl,
                              long long scc, float eps, int rms) {
  constexpr int E = 16 / sizeof(T);
  const int lane = threadIdx.x & 31;
  const long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;  // whole warps leave together: the shuffles below stay full-warp
  const int b = (int)(row / L), l = (int)(row - (long long)b * L);
  const uint4* xr = reinterpret_cast<const uint4*>(x + row * C);
  uint4* yr = reinterpret_cast<uint4*>(y + row * C);
  const int nvec = C / E;
  uint4 u[NV];
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int idx = lane + 32 * i;
    if (idx < nvec) u[i] = __ldcs(xr + idx);  // streamed once: keep L1/L2 for shift and scale
    else u[i] = make_uint4(0, 0, 0, 0);        // zeros add nothing to the sum
  }
  float mean = 0.f;
  if (!rms) {
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      float f[E];
      unpack<T, E>(u[i], f);
#pragma unroll
      for (int j = 0; j < E; ++j) s += f[j];
    }
    mean = warp_sum(s) / C;
  }
  float s2 = 0.f;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    if (lane + 32 * i < nvec) {
      float f[E];
      unpack<T, E>(u[i], f);
#pragma unroll
      for (int j = 0; j < E; ++j) {
        const float d = f[j] - mean;
        s2 += d * d;
      }
    }
  }
  const float rstd = rsqrtf(warp_sum(s2) / C + eps);
  const float* sh = shift + b * ssb + l * ssl;
  const float* sc = scale + b * scb + l * scl;
  // Shift / scale rows contiguous and 16-byte aligned: float4 loads (they stay in L1 / L2).
  const bool vec_mod = ssc == 1 && scc == 1 && ((reinterpret_cast<uintptr_t>(sh) | reinterpret_cast<uintptr_t>(sc)) & 15) == 0;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int idx = lane + 32 * i;
    if (idx < nvec) {
      float f[E], a[E], m[E];
      unpack<T, E>(u[i], f);
      const int c0 = idx * E;
      if (vec_mod) {
#pragma unroll
        for (int j = 0; j < E; j += 4) {
          const float4 s4 = __ldg(reinterpret_cast<const float4*>(sh + c0 + j));
          const float4 k4 = __ldg(reinterpret_cast<const float4*>(sc + c0 + j));
          a[j] = s4.x, a[j + 1] = s4.y, a[j + 2] = s4.z, a[j + 3] = s4.w;
          m[j] = k4.x, m[j + 1] = k4.y, m[j + 2] = k4.z, m[j + 3] = k4.w;
        }
      } else {
#pragma unroll
        for (int j = 0; j < E; ++j) a[j] = sh[(c0 + j) * ssc], m[j] = sc[(c0 + j) * scc];
      }
      alignas(16) T o[E];
#pragma unroll
      for (int j = 0; j < E; ++j) o[j] = from_f<T>((f[j] - mean) * rstd * (1.f + m[j]) + a[j]);
      __stcs(yr + idx, *reinterpret_cast<const uint4*>(o));
    }
  }
}

#define NORM_WARP_KERNEL(SUF, T, NV)                                                                        \
  extern "C" __global__ void __launch_bounds__(256) norm_modulate_w##NV##_##SUF(                              \
      const T* x, const float* shift, const float* scale, T* y, long long rows, int L, int C, long long ssb,  \
      long long ssl, long long ssc, long long scb, long long scl, long long scc, float eps, int rms) {       \
    norm_mod_warp<T, NV>(x, shift, scale, y, rows, L, C, ssb, ssl, ssc, scb, scl, scc, eps, rms);            \
  }
#define NORM_WARP_KERNELS(SUF, T) \
  NORM_WARP_KERNEL(SUF, T, 1)     \
  NORM_WARP_KERNEL(SUF, T, 2)     \
  NORM_WARP_KERNEL(SUF, T, 4)     \
  NORM_WARP_KERNEL(SUF, T, 8)     \
  NORM_WARP_KERNEL(SUF, T, 16)
NORM_WARP_KERNELS(f32, float)
NORM_WARP_KERNELS(bf16, __nv_bfloat16)
NORM_WARP_KERNELS(f16, __half)


#define NORM_KERNELS(SUF, T)                                                                           \
  extern "C" __global__ void norm_modulate_##SUF(const T* x, const float* shift, const float* scale, T* y, \
                                                 int L, int C, long long ssb, long long ssl, long long ssc, \
                                                 long long scb, long long scl, long long scc, float eps,   \
                                                 int rms) {                                             \
    if (C % (16 / sizeof(T)) == 0 && C <= 4 * (int)blockDim.x * (16 / (int)sizeof(T)))                    \
      norm_mod_vec<T>(x, shift, scale, y, L, C, ssb, ssl, ssc, scb, scl, scc, eps, rms);                   \
    else                                                                                                \
      norm_mod<T>(x, shift, scale, y, L, C, ssb, ssl, ssc, scb, scl, scc, eps, rms);                     \
  }                                                                                                     \
  extern "C" __global__ void gated_residual_##SUF(const T* x, const float* gate, const T* yv, T* out, int L, \
                                                  int C, long long gb, long long gl, long long gc) {      \
    if (C % (16 / sizeof(T)) == 0)                                                                      \
      gated_vec<T>(x, gate, yv, out, L, C, gb, gl, gc);                                                 \
    else                                                                                                \
      gated<T>(x, gate, yv, out, L, C, gb, gl, gc);                                                     \
  }

NORM_KERNELS(f32, float)
NORM_KERNELS(bf16, __nv_bfloat16)
NORM_KERNELS(f16, __half)
