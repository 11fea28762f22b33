// Rotary embedding apply: x (B,H,L,D), cos/sin (L, D/2) f32. layout 0 pairs channel i with i + D/2
// (rotate-half), layout 1 pairs 2i with 2i+1 (interleaved).
//
// Fast path (`rope_vec_*`): one thread owns E consecutive pairs (E = elements per 16-byte vector)
// of one position l, loads their cos / sin once (float4) and applies them to the same position of
// `heads` consecutive (b, h) rows: two 16-byte loads and stores per row, no index division in the
// loop. Consecutive CTAs take the same positions for other heads, so the tables come from L2.
// `rope_*` (one thread per pair) is the fallback for D not a multiple of 2E or unaligned operands.
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

// Needs D % (2E) == 0 and 16-byte aligned x, y, cos, sin (the host checks). Threads of CTA `blk`
// cover positions of block blk / chunks and heads [k0, k0 + heads) with k0 = (blk % chunks) * heads.
template <typename T, bool INTERLEAVED>
__device__ void rope_vec(const T* __restrict__ x, const float* __restrict__ cs, const float* __restrict__ sn,
                         T* __restrict__ y, int L, int D, int bh, int heads, int chunks) {
  constexpr int E = 16 / sizeof(T);
  const int half = D / 2, per_row = half / E;  // threads per position
  const int chunk = blockIdx.x % chunks;
  const long long t = (long long)(blockIdx.x / chunks) * blockDim.x + threadIdx.x;
  if (t >= (long long)L * per_row) return;
  const int l = (int)(t / per_row), p0 = (int)(t - (long long)l * per_row) * E;  // first pair
  float c[E], s[E];
#pragma unroll
  for (int j = 0; j < E; j += 4) {
    const float4 c4 = __ldg(reinterpret_cast<const float4*>(cs + (long long)l * half + p0 + j));
    const float4 s4 = __ldg(reinterpret_cast<const float4*>(sn + (long long)l * half + p0 + j));
    c[j] = c4.x, c[j + 1] = c4.y, c[j + 2] = c4.z, c[j + 3] = c4.w;
    s[j] = s4.x, s[j + 1] = s4.y, s[j + 2] = s4.z, s[j + 3] = s4.w;
  }
  // Element offsets of the two vectors inside a row: x1 / x2 halves, or E pairs side by side.
  const long long oa = (long long)l * D + (INTERLEAVED ? 2 * p0 : p0);
  const long long ob = oa + (INTERLEAVED ? E : half);
  const long long row_stride = (long long)L * D;
  const int k0 = chunk * heads, k1 = min(bh, k0 + heads);
#pragma unroll 2
  for (int k = k0; k < k1; ++k) {
    const long long r = k * row_stride;
    const uint4 ua = __ldcs(reinterpret_cast<const uint4*>(x + r + oa));
    const uint4 ub = __ldcs(reinterpret_cast<const uint4*>(x + r + ob));
    const T* ea = reinterpret_cast<const T*>(&ua);
    const T* eb = reinterpret_cast<const T*>(&ub);
    alignas(16) T oa_[E];
    alignas(16) T ob_[E];
    if (INTERLEAVED) {
      // Pair j < E/2 lives in ua, pair j >= E/2 in ub.
#pragma unroll
      for (int j = 0; j < E; ++j) {
        const T* e = j < E / 2 ? ea : eb;
        T* o = j < E / 2 ? oa_ : ob_;
        const int q = 2 * (j % (E / 2));
        const float re = to_f(e[q]), im = to_f(e[q + 1]);
        o[q] = from_f<T>(re * c[j] - im * s[j]);
        o[q + 1] = from_f<T>(im * c[j] + re * s[j]);
      }
    } else {
#pragma unroll
      for (int j = 0; j < E; ++j) {
        const float a = to_f(ea[j]), b = to_f(eb[j]);
        oa_[j] = from_f<T>(a * c[j] - b * s[j]);
        ob_[j] = from_f<T>(b * c[j] + a * s[j]);
      }
    }
    __stcs(reinterpret_cast<uint4*>(y + r + oa), *reinterpret_cast<const uint4*>(oa_));
    __stcs(reinterpret_cast<uint4*>(y + r + ob), *reinterpret_cast<const uint4*>(ob_));
  }
}

#define ROPE_KERNEL(SUF, T)                                                                               \
  extern "C" __global__ void rope_##SUF(const T* x, const float* c, const float* s, T* y, long long pairs,     \
                                        int L, int D, int interleaved) {                                  \
    rope<T>(x, c, s, y, pairs, L, D, interleaved);                                                        \
  }                                                                                                       \
  extern "C" __global__ void rope_vec_##SUF(const T* x, const float* c, const float* s, T* y, int L, int D,    \
                                            int bh, int heads, int chunks, int interleaved) {             \
    if (interleaved)                                                                                      \
      rope_vec<T, true>(x, c, s, y, L, D, bh, heads, chunks);                                             \
    else                                                                                                  \
      rope_vec<T, false>(x, c, s, y, L, D, bh, heads, chunks);                                            \
  }
ROPE_KERNEL(f32, float)
ROPE_KERNEL(bf16, __nv_bfloat16)
ROPE_KERNEL(f16, __half)
