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
