// 3D convolution (groups = 1) as an implicit GEMM on tensor cores:
//   M = B*To*Ho*Wo output positions, N = O output channels, K = C*kt*kh*kw.
// A CTA of 4 warps computes a 64x64 tile of (M, N) with BK = 32; the A tile is gathered from the
// (B,C,T,H,W) input on the fly (zero padding by bounds checks), the B tile is the (O, K) row-major
// weight. Fragments via ldmatrix, mma.sync m16n8k16 with f32 accumulation, bias fused in the epilogue.
#include "common.cuh"

struct ConvGeom {
  int B, C, T, H, W, O, kt, kh, kw, st, sh, sw, pt, ph, pw, To, Ho, Wo;
};

template <typename T>
__device__ void conv3d_igemm(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                             T* __restrict__ y, ConvGeom g) {
  constexpr int BM = 64, BN = 64, BK = 32, SK = BK + 8;
  __shared__ __align__(16) T sA[BM * SK];
  __shared__ __align__(16) T sB[BN * SK];
  __shared__ int tOff[BK], tA[BK], tP[BK], tQ[BK];

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wm = warp / 2, wn = warp % 2;
  const int S = g.To * g.Ho * g.Wo;
  const long long M = (long long)g.B * S;
  const int K = g.C * g.kt * g.kh * g.kw, N = g.O;
  const int HW = g.H * g.W, THW = g.T * HW, KHW = g.kh * g.kw, KTHW = g.kt * KHW;
  const long long m0 = (long long)blockIdx.x * BM;
  const int n0 = blockIdx.y * BN;

  // This thread's output position for the A gather (fixed over the K loop).
  const int am = tid % BM;
  const long long mg = m0 + am;
  const bool mvalid = mg < M;
  int ti0 = 0, hi0 = 0, wi0 = 0;
  const T* xb = x;
  if (mvalid) {
    int b = (int)(mg / S), s = (int)(mg % S);
    int to = s / (g.Ho * g.Wo), r = s % (g.Ho * g.Wo);
    int ho = r / g.Wo, wo = r % g.Wo;
    ti0 = to * g.st - g.pt;
    hi0 = ho * g.sh - g.ph;
    wi0 = wo * g.sw - g.pw;
    xb = x + (size_t)b * g.C * THW;
  }

  float acc[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;

  for (int k0 = 0; k0 < K; k0 += BK) {
    if (tid < BK) {
      int k = k0 + tid;
      if (k < K) {
        int c = k / KTHW, r = k % KTHW;
        int a = r / KHW;
        r %= KHW;
        tA[tid] = a;
        tP[tid] = r / g.kw;
        tQ[tid] = r % g.kw;
        tOff[tid] = c * THW;
      } else {
        tA[tid] = -1;
      }
    }
    __syncthreads();
#pragma unroll 4
    for (int i = 0; i < (BM * BK) / 128; ++i) {
      const int kk = (tid / BM) + 2 * i;
      float v = 0.f;
      const int a = tA[kk];
      if (mvalid && a >= 0) {
        const int ti = ti0 + a, hi = hi0 + tP[kk], wi = wi0 + tQ[kk];
        if (ti >= 0 && ti < g.T && hi >= 0 && hi < g.H && wi >= 0 && wi < g.W)
          v = to_f(xb[tOff[kk] + ti * HW + hi * g.W + wi]);
      }
      sA[am * SK + kk] = from_f<T>(v);
    }
#pragma unroll 4
    for (int i = 0; i < (BN * BK) / 128; ++i) {
      const int idx = tid + i * 128, n = idx / BK, kk = idx % BK;
      const int on = n0 + n, k = k0 + kk;
      sB[n * SK + kk] = (on < N && k < K) ? w[(size_t)on * K + k] : from_f<T>(0.f);
    }
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < BK / 16; ++ks) {
      uint32_t af[2][4], bf[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
        ldsm_x4(af[mi], sA + (wm * 32 + mi * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * SK + ks * 16 + (lane / 16) * 8);
#pragma unroll
      for (int nj = 0; nj < 2; ++nj)
        ldsm_x4(bf[nj], sB + (wn * 32 + nj * 16 + (lane % 8) + (lane / 16) * 8) * SK + ks * 16 + ((lane / 8) % 2) * 8);
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int nj = 0; nj < 2; ++nj) {
          mma_16816(acc[mi][2 * nj], af[mi], bf[nj], T());
          mma_16816(acc[mi][2 * nj + 1], af[mi], bf[nj] + 2, T());
        }
    }
    __syncthreads();
  }

  const int gq = lane >> 2, tq = lane & 3;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const long long m = m0 + wm * 32 + mi * 16 + gq + (e >= 2 ? 8 : 0);
        const int o = n0 + wn * 32 + j * 8 + 2 * tq + (e & 1);
        if (m < M && o < N) {
          const long long b = m / S, s = m % S;
          y[(b * N + o) * S + s] = from_f<T>(acc[mi][j][e] + to_f(bias[o]));
        }
      }
}

extern "C" __global__ void __launch_bounds__(128)
    conv3d_bf16(const __nv_bfloat16* x, const __nv_bfloat16* w, const __nv_bfloat16* b, __nv_bfloat16* y, ConvGeom g) {
  conv3d_igemm(x, w, b, y, g);
}
extern "C" __global__ void __launch_bounds__(128)
    conv3d_f16(const __half* x, const __half* w, const __half* b, __half* y, ConvGeom g) {
  conv3d_igemm(x, w, b, y, g);
}

// ---------------------------------------------------------------------------------------------
// Channels-last implicit GEMM (the fast path). x is (B,T,H,W,C) and the weight (O,kt,kh,kw,C), so
// GEMM K is ordered (tap, channel) and, with C % BK == 0, each BK-wide K block of one im2col row
// is BK contiguous input channels of one input voxel: BK/8 16-byte cp.async copies, zero-filled
// where the voxel falls into the padding. A STAGES-deep cp.async pipeline feeds ldmatrix +
// mma.sync m16n8k16 (f32 accumulation); the epilogue adds the bias, stages the tile in shared
// memory and writes the output straight to (B,O,To,Ho,Wo) with 16-byte stores along the spatial
// dim. The Rust glue makes the channels-last copies with `transpose_b16` below.
template <typename T, int BM, int BN, int BK, int WM, int WN, int STAGES, bool NFAST = false>
__device__ __forceinline__ void conv3d_cl_igemm(const T* __restrict__ x, const T* __restrict__ w,
                                                const T* __restrict__ bias, T* __restrict__ y, const ConvGeom& g,
                                                char* smem) {
  constexpr int NT = WM * WN * 32;
  constexpr int SK = BK + 8;  // padded smem row: conflict-free ldmatrix and cp.async stores
  constexpr int WTM = BM / WM, WTN = BN / WN, MI = WTM / 16, NI = WTN / 8;
  static_assert(WTM % 16 == 0 && WTN % 16 == 0, "warp tile must be whole 16x16 ldmatrix blocks");
  constexpr int CPR = BK / 8;           // 16-byte chunks per smem row
  constexpr int RPI = NT / CPR;         // rows covered per copy pass
  static_assert(NT % CPR == 0 && BM % RPI == 0, "A copy must tile the CTA");
  constexpr int A_IT = BM / RPI, B_IT = (BN + RPI - 1) / RPI;
  T* sA = reinterpret_cast<T*>(smem);
  T* sB = sA + STAGES * BM * SK;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wm = warp / WN, wn = warp % WN;
  const int HoWo = g.Ho * g.Wo, S = g.To * HoWo;
  const long long M = (long long)g.B * S;
  const int N = g.O, K = g.kt * g.kh * g.kw * g.C, KB = K / BK;
  // NFAST: a 1-D grid with the N tiles of one M tile adjacent (they share the gathered A in L2).
  const int ntl = (N + BN - 1) / BN;
  const long long m0 = (long long)(NFAST ? blockIdx.x / ntl : blockIdx.x) * BM;
  const int n0 = (NFAST ? blockIdx.x % ntl : blockIdx.y) * BN;
  const int cc = (tid % CPR) * 8, r0 = tid / CPR;

  // Per copied A row: element offset of (b, ti0, hi0, wi0, cc) and a mask of the taps whose voxel
  // lies inside the input (bit a*kh*kw + p*kw + q; the host keeps kt*kh*kw <= 32 on this path).
  long long aoff[A_IT];
  uint32_t amask[A_IT];
#pragma unroll
  for (int i = 0; i < A_IT; ++i) {
    const long long m = m0 + r0 + i * RPI;
    aoff[i] = 0;
    amask[i] = 0;
    if (m < M) {
      const int b = (int)(m / S), s = (int)(m % S);
      const int to = s / HoWo, r = s % HoWo, ho = r / g.Wo, wo = r % g.Wo;
      const int ti = to * g.st - g.pt, hi = ho * g.sh - g.ph, wi = wo * g.sw - g.pw;
      aoff[i] = (((long long)b * g.T + ti) * g.H + hi) * (long long)g.W * g.C + (long long)wi * g.C + cc;
      int bit = 0;
      for (int a = 0; a < g.kt; ++a)
        for (int p = 0; p < g.kh; ++p)
          for (int q = 0; q < g.kw; ++q, ++bit)
            if ((unsigned)(ti + a) < (unsigned)g.T && (unsigned)(hi + p) < (unsigned)g.H && (unsigned)(wi + q) < (unsigned)g.W)
              amask[i] |= 1u << bit;
    }
  }
  // B rows r0 + i*RPI of the (O, taps*C) weight.
  const T* wrow = w + (size_t)(n0 + r0) * K + cc;

  // K-block iterator of the copies: tap (la, lp, lq) = bit lt, channel offset lc, flat offset lk.
  int la = 0, lp = 0, lq = 0, lt = 0, lc = 0, lk = 0;
  const long long WC = (long long)g.W * g.C, HWC = (long long)g.H * WC;
  auto load_next = [&](int stage) {
    T* dA = sA + stage * BM * SK;
    T* dB = sB + stage * BN * SK;
    const long long toff = la * HWC + lp * WC + (long long)lq * g.C + lc;
#pragma unroll
    for (int i = 0; i < A_IT; ++i) {
      const bool ok = (amask[i] >> lt) & 1u;
      cp_async16(dA + (r0 + i * RPI) * SK + cc, ok ? x + aoff[i] + toff : x, ok ? 16 : 0);
    }
#pragma unroll
    for (int i = 0; i < B_IT; ++i) {
      const int row = r0 + i * RPI;
      const bool ok = n0 + row < N;
      if (row < BN) cp_async16(dB + row * SK + cc, ok ? wrow + (size_t)i * RPI * K + lk : w, ok ? 16 : 0);
    }
    lk += BK;
    lc += BK;
    if (lc == g.C) {
      lc = 0;
      ++lt;
      if (++lq == g.kw) {
        lq = 0;
        if (++lp == g.kh) {
          lp = 0;
          ++la;
        }
      }
    }
  };

  float acc[MI][NI][4];
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NI; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < KB) load_next(s);
    cp_async_commit();
  }
  for (int kb = 0; kb < KB; ++kb) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // stage kb landed for all threads; stage kb-1 is free to overwrite
    if (kb + STAGES - 1 < KB) load_next((kb + STAGES - 1) % STAGES);
    cp_async_commit();
    const T* cA = sA + (kb % STAGES) * BM * SK;
    const T* cB = sB + (kb % STAGES) * BN * SK;
#pragma unroll
    for (int ks = 0; ks < BK / 16; ++ks) {
      uint32_t af[MI][4], bf[NI / 2][4];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
        ldsm_x4(af[mi], cA + (wm * WTM + mi * 16 + (lane % 16)) * SK + ks * 16 + (lane / 16) * 8);
#pragma unroll
      for (int nj = 0; nj < NI / 2; ++nj)
        ldsm_x4(bf[nj], cB + (wn * WTN + nj * 16 + (lane % 8) + (lane / 16) * 8) * SK + ks * 16 + ((lane / 8) % 2) * 8);
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int nj = 0; nj < NI / 2; ++nj) {
          mma_16816(acc[mi][2 * nj], af[mi], bf[nj], T());
          mma_16816(acc[mi][2 * nj + 1], af[mi], bf[nj] + 2, T());
        }
    }
  }
  cp_async_wait<0>();
  __syncthreads();

  // Epilogue: bias, round, stage as (n, m) in smem, then 16-byte stores along m (= spatial).
  constexpr int SCM = BM + 8;
  T* sC = reinterpret_cast<T*>(smem);
  const int gq = lane >> 2, tq = lane & 3;
#pragma unroll
  for (int nj = 0; nj < NI; ++nj)
#pragma unroll
    for (int e1 = 0; e1 < 2; ++e1) {
      const int nl = wn * WTN + nj * 8 + 2 * tq + e1;
      const float bv = n0 + nl < N ? to_f(bias[n0 + nl]) : 0.f;
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) sC[nl * SCM + wm * WTM + mi * 16 + gq + 8 * h] = from_f<T>(acc[mi][nj][2 * h + e1] + bv);
    }
  __syncthreads();
  constexpr int CH = BM / 8;
  for (int idx = tid; idx < BN * CH; idx += NT) {
    const int nl = idx / CH, mc = (idx % CH) * 8, o = n0 + nl;
    const long long m = m0 + mc;
    if (o >= N || m >= M) continue;
    const long long b = m / S;
    const int s = (int)(m % S);
    T* dst = y + (b * N + o) * S + s;
    const T* src = sC + nl * SCM + mc;
    if (m + 8 <= M && s + 8 <= S && (reinterpret_cast<uintptr_t>(dst) & 15) == 0) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
      for (int j = 0; j < 8 && m + j < M; ++j) {
        const long long mm = m + j, bb = mm / S, ss = mm % S;
        y[(bb * N + o) * S + ss] = src[j];
      }
    }
  }
}

// Shared-memory bytes of a channels-last config (pipeline stages, or the epilogue tile if larger).
#define CONV_CL_SMEM(BM, BN, BK, ST) \
  ((ST) * ((BM) + (BN)) * ((BK) + 8) * 2 > (BN) * ((BM) + 8) * 2 ? (ST) * ((BM) + (BN)) * ((BK) + 8) * 2 : (BN) * ((BM) + 8) * 2)

#define CONV_CL_NF(NAME, T, BM, BN, BK, WM, WN, ST, MINB, NF)                                               \
  extern "C" __global__ void __launch_bounds__((WM) * (WN) * 32, MINB)                                      \
      NAME(const T* x, const T* w, const T* b, T* y, ConvGeom g) {                                         \
    extern __shared__ __align__(16) char smem[];                                                           \
    conv3d_cl_igemm<T, BM, BN, BK, WM, WN, ST, NF>(x, w, b, y, g, smem);                                   \
  }
#define CONV_CL(NAME, T, BM, BN, BK, WM, WN, ST, MINB) CONV_CL_NF(NAME, T, BM, BN, BK, WM, WN, ST, MINB, false)

// Tile configs of the Rust glue: 128x96, 8 warps of 32x48; BK = 64 with 3 stages when C % 64 == 0,
// else BK = 32 with 4 stages (the fastest of the configs below at the three Wan-VAE decoder shapes,
// C = O = 384/192/96; tools/conv3d_dev.py times them all).
CONV_CL(conv3d_cl_bf16_128x96x64, __nv_bfloat16, 128, 96, 64, 4, 2, 3, 2)
CONV_CL(conv3d_cl_f16_128x96x64, __half, 128, 96, 64, 4, 2, 3, 2)
CONV_CL(conv3d_cl_bf16_128x96x32, __nv_bfloat16, 128, 96, 32, 4, 2, 4, 2)
CONV_CL(conv3d_cl_f16_128x96x32, __half, 128, 96, 32, 4, 2, 4, 2)
#ifdef VW_CONV_DEV
// Extra configs only built by tools/conv3d_dev.py to compare.
CONV_CL(conv3d_cl_bf16_128x128x32, __nv_bfloat16, 128, 128, 32, 2, 4, 4, 2)
CONV_CL(conv3d_cl_bf16_128x64x64, __nv_bfloat16, 128, 64, 64, 4, 2, 3, 2)
CONV_CL(conv3d_cl_bf16_128x96x32w4, __nv_bfloat16, 128, 96, 32, 2, 2, 4, 2)
CONV_CL(conv3d_cl_bf16_128x96x64w4, __nv_bfloat16, 128, 96, 64, 2, 2, 3, 2)
CONV_CL(conv3d_cl_bf16_256x96x32, __nv_bfloat16, 256, 96, 32, 4, 2, 3, 1)
CONV_CL(conv3d_cl_bf16_128x192x32, __nv_bfloat16, 128, 192, 32, 2, 4, 4, 1)
CONV_CL(conv3d_cl_bf16_128x96x32s3, __nv_bfloat16, 128, 96, 32, 4, 2, 3, 2)
CONV_CL(conv3d_cl_bf16_128x96x32s5, __nv_bfloat16, 128, 96, 32, 4, 2, 5, 2)
CONV_CL(conv3d_cl_bf16_128x96x64m1, __nv_bfloat16, 128, 96, 64, 4, 2, 3, 1)
CONV_CL_NF(conv3d_cl_bf16_128x96x64nf, __nv_bfloat16, 128, 96, 64, 4, 2, 3, 2, true)
CONV_CL_NF(conv3d_cl_bf16_128x96x32nf, __nv_bfloat16, 128, 96, 32, 4, 2, 4, 2, true)
#endif

// (nb, R, L) -> (nb, L, R) for 2-byte elements: NCDHW -> NDHWC (R = C, L = T*H*W) and the
// weight (O, C, taps) -> (O, taps, C). 32x32 tiles through padded shared memory, grid
// (ceil(L/32), ceil(R/32), nb), block (32, 8).
extern "C" __global__ void __launch_bounds__(256) transpose_b16(const unsigned short* __restrict__ in,
                                                                unsigned short* __restrict__ out, int R, long long L) {
  __shared__ unsigned short tile[32][34];
  const long long l0 = (long long)blockIdx.x * 32;
  const int rr0 = blockIdx.y * 32;
  const size_t base = (size_t)blockIdx.z * R * L;
#pragma unroll
  for (int j = 0; j < 32; j += 8) {
    const int r = rr0 + threadIdx.y + j;
    const long long l = l0 + threadIdx.x;
    if (r < R && l < L) tile[threadIdx.y + j][threadIdx.x] = in[base + (size_t)r * L + l];
  }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < 32; j += 8) {
    const long long l = l0 + threadIdx.y + j;
    const int r = rr0 + threadIdx.x;
    if (r < R && l < L) out[base + (size_t)l * R + r] = tile[threadIdx.x][threadIdx.y + j];
  }
}
