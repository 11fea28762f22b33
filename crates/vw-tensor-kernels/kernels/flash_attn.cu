// Flash attention forward (FlashAttention-2 style): one CTA of 4 warps owns 64 query rows of one
// (batch, head); K/V stream through shared memory in 64-key tiles (cp.async double buffer), scores
// and P·V run on tensor cores (mma.sync m16n8k16, f32 accumulate), softmax is online in registers.
// Causal masking is bottom-right aligned (query i sees keys j <= i + Lk - Lq); an optional f32
// additive mask is read through broadcast strides. Rows that see no key are written as zeros.
#include "common.cuh"

// ex2.approx: exact enough for softmax weights (rel. err ~2^-22), and exp2(-inf) = 0.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

template <typename T, int D>
__device__ __forceinline__ void load_tile(T* s, const T* g, int row0, int rows, int tid) {
  constexpr int SD = D + 8, CPR = D / 8;  // 16-byte chunks per row
#pragma unroll
  for (int i = 0; i < (64 * CPR) / 128; ++i) {
    int chunk = tid + i * 128;
    int r = chunk / CPR, c = chunk % CPR;
    bool ok = row0 + r < rows;
    const T* src = g + (size_t)(ok ? row0 + r : 0) * D + c * 8;
    cp_async16(s + r * SD + c * 8, src, ok ? 16 : 0);
  }
}

template <typename T, int D>
__device__ void flash_fwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                          T* __restrict__ o, const float* __restrict__ mask, int H, int Lq, int Lk,
                          float scale_log2, int causal, long long msb, long long msh, long long msq,
                          long long msk) {
  constexpr int BM = 64, BN = 64, SD = D + 8;
  constexpr float LOG2E = 1.4426950408889634f;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);
  // Two stages of (K, V); Q is staged through stage 1's K buffer first.
  T* sK[2] = {smem, smem + 2 * BN * SD};
  T* sV[2] = {smem + BN * SD, smem + 3 * BN * SD};

  const int bh = blockIdx.y, b = bh / H, h = bh % H;
  const int m0 = blockIdx.x * BM;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane >> 2, t = lane & 3;
  const T* qb = q + (size_t)bh * Lq * D;
  const T* kb = k + (size_t)bh * Lk * D;
  const T* vb = v + (size_t)bh * Lk * D;
  T* ob = o + (size_t)bh * Lq * D;
  const int off = Lk - Lq;

  int kend = Lk;
  if (causal) kend = min(Lk, max(0, m0 + BM - 1 + off + 1));
  const int ntiles = (kend + BN - 1) / BN;

  load_tile<T, D>(sK[1], qb, m0, Lq, tid);
  cp_async_commit();
  if (ntiles > 0) {
    load_tile<T, D>(sK[0], kb, 0, Lk, tid);
    load_tile<T, D>(sV[0], vb, 0, Lk, tid);
  }
  cp_async_commit();
  cp_async_wait<1>();
  __syncthreads();

  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
    ldsm_x4(qf[kk], sK[1] + (warp * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * SD + kk * 16 + (lane / 16) * 8);
  __syncthreads();

  float oacc[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) oacc[j][0] = oacc[j][1] = oacc[j][2] = oacc[j][3] = 0.f;
  float mrow[2] = {VW_NEG_INF, VW_NEG_INF}, lrow[2] = {0.f, 0.f};
  const int r0 = m0 + warp * 16 + g;

  for (int it = 0; it < ntiles; ++it) {
    const int st = it & 1, n0 = it * BN;
    if (it + 1 < ntiles) {
      load_tile<T, D>(sK[st ^ 1], kb, n0 + BN, Lk, tid);
      load_tile<T, D>(sV[st ^ 1], vb, n0 + BN, Lk, tid);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    float s[BN / 8][4];
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int nn = 0; nn < BN / 16; ++nn) {
        uint32_t kf[4];
        ldsm_x4(kf, sK[st] + (nn * 16 + (lane % 8) + (lane / 16) * 8) * SD + kk * 16 + ((lane / 8) % 2) * 8);
        mma_16816(s[2 * nn], qf[kk], kf, T());
        mma_16816(s[2 * nn + 1], qf[kk], kf + 2, T());
      }
    }

    // Only tiles that cross the causal diagonal, the end of the keys, or carry a mask need checks.
    const bool edge = (n0 + BN > Lk) || mask != nullptr || (causal && n0 + BN - 1 > m0 + off);
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[j][e] * scale_log2;
        if (edge) {
          const int row = e < 2 ? r0 : r0 + 8;
          const int col = n0 + j * 8 + 2 * t + (e & 1);
          if (col >= Lk || (causal && col > row + off)) {
            x = VW_NEG_INF;
          } else if (mask != nullptr && row < Lq) {
            x += mask[b * msb + h * msh + row * msq + col * msk] * LOG2E;
          }
        }
        s[j][e] = x;
      }
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = VW_NEG_INF;
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
      const float mnew = fmaxf(mrow[r], mx);
      const float muse = mnew == VW_NEG_INF ? 0.f : mnew;
      const float corr = fast_exp2(mrow[r] - muse);
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
        const float p0 = fast_exp2(s[j][2 * r] - muse), p1 = fast_exp2(s[j][2 * r + 1] - muse);
        s[j][2 * r] = p0;
        s[j][2 * r + 1] = p1;
        sum += p0 + p1;
      }
      sum += __shfl_xor_sync(0xffffffff, sum, 1);
      sum += __shfl_xor_sync(0xffffffff, sum, 2);
      lrow[r] = lrow[r] * corr + sum;
      mrow[r] = mnew;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        oacc[j][2 * r] *= corr;
        oacc[j][2 * r + 1] *= corr;
      }
    }

#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[4];
      a[0] = pack2(s[2 * kk][0], s[2 * kk][1], T());
      a[1] = pack2(s[2 * kk][2], s[2 * kk][3], T());
      a[2] = pack2(s[2 * kk + 1][0], s[2 * kk + 1][1], T());
      a[3] = pack2(s[2 * kk + 1][2], s[2 * kk + 1][3], T());
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        uint32_t vf[4];
        ldsm_x4_t(vf, sV[st] + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * SD + dn * 16 + (lane / 16) * 8);
        mma_16816(oacc[2 * dn], a, vf, T());
        mma_16816(oacc[2 * dn + 1], a, vf + 2, T());
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = r0 + 8 * r;
    if (row >= Lq) continue;
    const float inv = lrow[r] > 0.f ? 1.f / lrow[r] : 0.f;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      uint32_t pk = pack2(oacc[j][2 * r] * inv, oacc[j][2 * r + 1] * inv, T());
      *reinterpret_cast<uint32_t*>(ob + (size_t)row * D + j * 8 + 2 * t) = pk;
    }
  }
}

#define FLASH_KERNEL(NAME, T, D)                                                                   \
  extern "C" __global__ void __launch_bounds__(128) NAME(                                          \
      const T* q, const T* k, const T* v, T* o, const float* mask, int H, int Lq, int Lk,          \
      float scale_log2, int causal, long long msb, long long msh, long long msq, long long msk) {  \
    flash_fwd<T, D>(q, k, v, o, mask, H, Lq, Lk, scale_log2, causal, msb, msh, msq, msk);          \
  }

FLASH_KERNEL(flash_fwd_bf16_d64, __nv_bfloat16, 64)
FLASH_KERNEL(flash_fwd_bf16_d128, __nv_bfloat16, 128)
FLASH_KERNEL(flash_fwd_f16_d64, __half, 64)
FLASH_KERNEL(flash_fwd_f16_d128, __half, 128)
