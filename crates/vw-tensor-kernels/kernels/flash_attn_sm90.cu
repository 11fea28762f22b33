// Flash attention forward for Hopper (sm_90a), head_dim 128, bf16/f16, in the FA3 design.
// One CTA of 3 warpgroups (384 threads) owns 128 query rows of one (batch, head):
//  - warpgroups 0 and 1 consume, 64 query rows each (setmaxnreg gives them 240 registers):
//    S = Q K^T runs on wgmma with Q and K read from shared memory; O += P V runs on wgmma with P
//    (bf16/f16) from registers and V read from shared memory through a transposed (MN-major)
//    descriptor; the online softmax runs in registers;
//  - warpgroup 2 produces (24 registers): one thread issues TMA (bulk tensor) loads of Q once and
//    of K/V tiles (128 keys) into a ring of STAGES shared-memory stages, completing on mbarriers;
//    the consumers release a stage through an "empty" mbarrier once their wgmmas reading it are done.
// Tiles use the 128-byte swizzle (TMA writes it, wgmma reads it): a 128x128 tile is stored as two
// 128-row x 64-column halves, each row 128 bytes, its 16-byte chunks XOR-ed with (row % 8).
// MODE 0 (exported): S = QK^T, wait, softmax, O += PV, wait; the two consumer warpgroups overlap
// each other's softmax and wgmmas. MODE 1 (dev variant, VW_FA90_VARIANTS) adds FA3's
// intra-warpgroup overlap (issue S_{j+1} and P_j V_j back to back, softmax of S_{j+1} while P_j V_j
// runs); it measured slower here (docs/performance.md). FA3's inter-warpgroup ping-pong (named
// barriers) is not in: a first try hung and was dropped.
// Semantics match flash_attn.cu: bottom-right aligned causal masking (query i sees keys
// j <= i + Lk - Lq), Lq != Lk, any lengths (TMA zero-fills rows past the end, scores past Lk are
// masked), rows that see no key are written as zeros. No additive mask: flash_attn.cu covers it.
#include "common.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL) || !defined(__CUDA_ARCH__)
#define VW_SM90A 1
#endif

// The driver's CUtensorMap: 128 opaque bytes, 64-byte aligned, passed by value (__grid_constant__).
struct __align__(64) VwTensorMap {
  unsigned long long v[16];
};

#ifdef VW_SM90A
namespace fa90 {

constexpr int BM = 128, BN = 128, D = 128;
constexpr int TILE_BYTES = BN * D * 2;  // one 128x128 16-bit tile: 32 KiB

// ex2.approx: exact enough for softmax weights (rel. err ~2^-22), and exp2(-inf) = 0.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, int bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, int parity) {
  uint32_t done;
#ifdef VW_FA90_WATCHDOG
  const long long t0 = clock64();
#endif
  do {
#ifdef VW_FA90_WATCHDOG
    if (clock64() - t0 > (1ll << 32)) __trap();  // dev builds: a lost arrival traps (~2 s) instead of hanging
#endif
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}
// TMA: box {64 columns, 128 rows, 1} of a (B*H, L, 128) tensor into 16 KiB of swizzled smem.
__device__ __forceinline__ void tma_load(uint32_t dst, const VwTensorMap* map, int c0, int c1, int c2, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
      "[%5];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accumulator reads/writes across the asynchronous wgmma region.
__device__ __forceinline__ void fence_regs(float (&d)[64]) {
#pragma unroll
  for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Shared-memory matrix descriptor, 128-byte swizzle: start address, leading / stride byte offsets.
__device__ __forceinline__ uint64_t desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)(lbo >> 4) << 16) | ((uint64_t)(sbo >> 4) << 32) |
         (1ull << 62);
}

// D (+)= A(smem) * B(smem), m64n128k16, A and B K-major; scale_d 0 overwrites the accumulator.
__device__ __forceinline__ void wgmma_ss(float (&d)[64], uint64_t da, uint64_t db, int scale_d, __nv_bfloat16) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(scale_d));
}
// D += A(registers) * B(smem), m64n128k16, B MN-major (transposed).
__device__ __forceinline__ void wgmma_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t db, __nv_bfloat16) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}

// D (+)= A(smem) * B(smem), m64n128k16, A and B K-major; scale_d 0 overwrites the accumulator.
__device__ __forceinline__ void wgmma_ss(float (&d)[64], uint64_t da, uint64_t db, int scale_d, __half) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(scale_d));
}
// D += A(registers) * B(smem), m64n128k16, B MN-major (transposed).
__device__ __forceinline__ void wgmma_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t db, __half) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}

// Online softmax of one 64x128 score tile of a warpgroup (this thread: rows r0 and r0 + 8, columns
// n0 + 8j + 2t + {0,1}). Scores stay unscaled; the max is kept unscaled too, so p = 2^(s*c - m*c)
// is one FMA and one ex2. Row sums stay per thread (the quad reduces them once at the end).
template <bool EDGE>
__device__ __forceinline__ void softmax_tile(float (&s)[64], float (&m)[2], float (&l)[2], float (&corr)[2], int n0,
                                             int r0, int Lk, int causal, int off, float sl2, int t) {
  if (EDGE) {
#pragma unroll
    for (int j = 0; j < 16; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int row = r0 + (e >> 1) * 8, col = n0 + 8 * j + 2 * t + (e & 1);
        if (col >= Lk || (causal && col > row + off)) s[4 * j + e] = VW_NEG_INF;
      }
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = m[r];
#pragma unroll
    for (int j = 0; j < 16; ++j) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * r], s[4 * j + 2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
    const float muse = mx == VW_NEG_INF ? 0.f : mx * sl2;
    corr[r] = fast_exp2(m[r] * sl2 - muse);
    m[r] = mx;
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const float p0 = fast_exp2(fmaf(s[4 * j + 2 * r], sl2, -muse));
      const float p1 = fast_exp2(fmaf(s[4 * j + 2 * r + 1], sl2, -muse));
      s[4 * j + 2 * r] = p0;
      s[4 * j + 2 * r + 1] = p1;
      sum += p0 + p1;
    }
    l[r] = l[r] * corr[r] + sum;
  }
}

template <typename T>
__device__ __forceinline__ void pack_p(uint32_t (&p)[8][4], const float (&s)[64]) {
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) {
#pragma unroll
    for (int i = 0; i < 4; ++i) p[kk][i] = pack2(s[8 * kk + 2 * i], s[8 * kk + 2 * i + 1], T());
  }
}

__device__ __forceinline__ void rescale(float (&o)[64], const float (&corr)[2]) {
#pragma unroll
  for (int i = 0; i < 64; ++i) o[i] *= corr[(i >> 1) & 1];
}

template <typename T, int STAGES, int MODE>
__device__ void fwd(const VwTensorMap* tq, const VwTensorMap* tk, const VwTensorMap* tv, T* __restrict__ o, int Lq,
                    int Lk, float sl2, int causal) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;  // the 128B swizzle repeats every 1 KiB
  const uint32_t sQ = base;
  const uint32_t bars = base + TILE_BYTES * (1 + 2 * STAGES);
  auto sK = [&](int s) { return base + TILE_BYTES * (1 + 2 * s); };
  auto sV = [&](int s) { return base + TILE_BYTES * (2 + 2 * s); };
  auto full_k = [&](int s) { return bars + 8 * s; };
  auto full_v = [&](int s) { return bars + 8 * (STAGES + s); };
  auto empty = [&](int s) { return bars + 8 * (2 * STAGES + s); };
  const uint32_t q_full = bars + 8 * 3 * STAGES;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  // Causal: the longest query blocks (most key tiles) start first, for a better-balanced tail.
  const int mb = causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int bh = blockIdx.y, m0 = mb * BM, off = Lk - Lq;
  // Key tiles needed by query rows up to last_row (all of them without causal masking).
  auto tiles_for = [&](int last_row) {
    const int kend = causal ? min(Lk, max(0, last_row + off + 1)) : Lk;
    return (kend + BN - 1) / BN;
  };
  const int ntiles = tiles_for(m0 + BM - 1);

  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(full_k(s), 1);
      mbar_init(full_v(s), 1);
      mbar_init(empty(s), 256);
    }
    mbar_init(q_full, 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (warp >= 8) {  // producer warpgroup: one thread issues every load
    asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
    if (warp == 8 && lane == 0) {
      mbar_expect_tx(q_full, TILE_BYTES);
      tma_load(sQ, tq, 0, m0, bh, q_full);
      tma_load(sQ + TILE_BYTES / 2, tq, 64, m0, bh, q_full);
      for (int it = 0; it < ntiles; ++it) {
        const int s = it % STAGES;
        if (it >= STAGES) mbar_wait(empty(s), ((it / STAGES) - 1) & 1);
        mbar_expect_tx(full_k(s), TILE_BYTES);
        tma_load(sK(s), tk, 0, it * BN, bh, full_k(s));
        tma_load(sK(s) + TILE_BYTES / 2, tk, 64, it * BN, bh, full_k(s));
        mbar_expect_tx(full_v(s), TILE_BYTES);
        tma_load(sV(s), tv, 0, it * BN, bh, full_v(s));
        tma_load(sV(s) + TILE_BYTES / 2, tv, 64, it * BN, bh, full_v(s));
      }
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n" ::: "memory");
  // Consumer warpgroup wg: query rows m0 + 64 wg .. + 63; this thread's rows r0 and r0 + 8.
  const int wg = warp >> 2, g = lane >> 2, t = lane & 3;
  const int first_row = m0 + wg * 64;
  const int r0 = first_row + (warp & 3) * 16 + g;
  // With causal masking warpgroup 0 may need one tile fewer than the CTA (its rows end 64 earlier,
  // BN = 128). It skips that last tile without releasing it, which is safe: the producer only ever
  // waits for the release of tiles at least STAGES before the CTA's last one.
  const int nt = tiles_for(first_row + 63);
  auto is_edge = [&](int n0) { return n0 + BN > Lk || (causal && n0 + BN - 1 > first_row + off); };

  const uint32_t qa = sQ + wg * 64 * 128;
  auto qdesc = [&](int kk) { return desc(qa + (kk >> 2) * (TILE_BYTES / 2) + (kk & 3) * 32, 16, 1024); };
  auto kdesc = [&](int s, int kk) { return desc(sK(s) + (kk >> 2) * (TILE_BYTES / 2) + (kk & 3) * 32, 16, 1024); };
#ifdef VW_FA90_SWAP_V
  auto vdesc = [&](int s, int kk) { return desc(sV(s) + kk * 2048, 1024, TILE_BYTES / 2); };
#else
  auto vdesc = [&](int s, int kk) { return desc(sV(s) + kk * 2048, TILE_BYTES / 2, 1024); };
#endif

  float oacc[64], sacc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) oacc[i] = sacc[i] = 0.f;
  float mrow[2] = {VW_NEG_INF, VW_NEG_INF}, lrow[2] = {0.f, 0.f}, corr[2];
  uint32_t p[8][4];

  auto qk = [&](int s) {
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) wgmma_ss(sacc, qdesc(kk), kdesc(s, kk), kk > 0, T());
  };
  auto pv = [&](int s) {
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) wgmma_rs(oacc, p[kk], vdesc(s, kk), T());
  };
  auto softmax = [&](int n0) {
    if (is_edge(n0))
      softmax_tile<true>(sacc, mrow, lrow, corr, n0, r0, Lk, causal, off, sl2, t);
    else
      softmax_tile<false>(sacc, mrow, lrow, corr, n0, r0, Lk, causal, off, sl2, t);
  };

  mbar_wait(q_full, 0);
  if (MODE == 0) {  // S = QK^T; wait; softmax; O += PV; wait
    for (int it = 0; it < nt; ++it) {
      const int s = it % STAGES, ph = (it / STAGES) & 1;
      mbar_wait(full_k(s), ph);
      wgmma_fence();
      qk(s);
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(sacc);
      softmax(it * BN);
      rescale(oacc, corr);
      pack_p<T>(p, sacc);
      mbar_wait(full_v(s), ph);
      wgmma_fence();
      pv(s);
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(oacc);
      mbar_arrive(empty(s));
    }
  } else {  // MODE 1, FA3's intra-warpgroup overlap: softmax(S_j) runs while P_{j-1} V_{j-1} does
    if (nt > 0) {
      mbar_wait(full_k(0), 0);
      wgmma_fence();
      qk(0);
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(sacc);
      softmax(0);
      pack_p<T>(p, sacc);
      for (int it = 1; it < nt; ++it) {
        const int s = it % STAGES, ph = (it / STAGES) & 1;
        const int sp = (it - 1) % STAGES, php = ((it - 1) / STAGES) & 1;
        mbar_wait(full_k(s), ph);
        wgmma_fence();
        qk(s);
        wgmma_commit();
        mbar_wait(full_v(sp), php);
        pv(sp);
        wgmma_commit();
        wgmma_wait<1>();
        fence_regs(sacc);
        softmax(it * BN);
        wgmma_wait<0>();
        fence_regs(oacc);
        mbar_arrive(empty(sp));
        rescale(oacc, corr);
        pack_p<T>(p, sacc);
      }
      const int sp = (nt - 1) % STAGES, php = ((nt - 1) / STAGES) & 1;
      mbar_wait(full_v(sp), php);
      wgmma_fence();
      pv(sp);
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(oacc);
      mbar_arrive(empty(sp));
    }
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = lrow[r];
    sum += __shfl_xor_sync(0xffffffff, sum, 1);
    sum += __shfl_xor_sync(0xffffffff, sum, 2);
    const int row = r0 + 8 * r;
    if (row >= Lq) continue;
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    T* orow = o + ((size_t)bh * Lq + row) * D + 2 * t;
#pragma unroll
    for (int j = 0; j < 16; ++j)
      *reinterpret_cast<uint32_t*>(orow + 8 * j) = pack2(oacc[4 * j + 2 * r] * inv, oacc[4 * j + 2 * r + 1] * inv, T());
  }
}

}  // namespace fa90
#endif  // VW_SM90A

// Dynamic shared memory: 1 KiB for alignment, Q, STAGES x (K, V), the mbarriers.
#define FA90_KERNEL(NAME, T, STAGES, MODE)                                                               \
  extern "C" __global__ void __launch_bounds__(384, 1)                                                     \
      NAME(const __grid_constant__ VwTensorMap tq, const __grid_constant__ VwTensorMap tk,                  \
           const __grid_constant__ VwTensorMap tv, T* o, int Lq, int Lk, float scale_log2, int causal) {    \
    FA90_BODY(T, STAGES, MODE)                                                                              \
  }
#ifdef VW_SM90A
#define FA90_BODY(T, STAGES, MODE) fa90::fwd<T, STAGES, MODE>(&tq, &tk, &tv, o, Lq, Lk, scale_log2, causal);
#else
#define FA90_BODY(T, STAGES, MODE) __trap();
#endif

FA90_KERNEL(flash_fwd_sm90_bf16_d128, __nv_bfloat16, 2, 0)
FA90_KERNEL(flash_fwd_sm90_f16_d128, __half, 2, 0)
#ifdef VW_FA90_VARIANTS
FA90_KERNEL(fa90_bf16_s2_m0, __nv_bfloat16, 2, 0)
FA90_KERNEL(fa90_bf16_s3_m0, __nv_bfloat16, 3, 0)
FA90_KERNEL(fa90_bf16_s3_m1, __nv_bfloat16, 3, 1)
#endif
