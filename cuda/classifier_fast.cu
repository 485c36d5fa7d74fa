/* classifier_fast.cu: tensor-core kernels of the classifier step: the fused SGD + SR update, the
 * split-K dX = G W and the fused e4m3 logits + gradient (classifier_fast.h). BF16 mma.sync
 * m16n8k16 with FP32 accumulation (and Hopper's wgmma where noted);
 * operands staged by cp.async (zero-filled outside the matrices) and read with ldmatrix from
 * padded rows (16 bytes of padding per row: conflict-free). */
#include "classifier_fast.h"
#include "check.h"
#include "convert.h"

#include "numerics.h"

#include <stdlib.h>
#include <string.h>

#include <cuda.h> /* CUtensorMap and its encoder's types (the encoder itself comes through the runtime) */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

/* ---- PTX helpers ------------------------------------------------------------------------- */

static __device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

/* 16 bytes global -> shared without waiting; writes zeros (reads nothing) when !valid. */
static __device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(valid ? 16 : 0));
}
static __device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> static __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i. */
static __device__ __forceinline__ void ldsm_x4(uint32_t r[4], const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
/* The same, each matrix transposed. */
static __device__ __forceinline__ void ldsm_x4_t(uint32_t r[4], const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

/* d += a b: a 16x16 (row), b 16x8 (col), BF16, FP32 accumulators. */
static __device__ __forceinline__ void mma_bf16(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
               "{%0, %1, %2, %3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Two e4m3 codes (low byte first) -> two FP32 values, exact (hardware e4m3 -> f16). */
static __device__ __forceinline__ float2 fp8x2_to_f32(uint32_t pair) {
  __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)pair, __NV_E4M3);
  return __half22float2(*(const __half2 *)&h);
}

/* Two e4m3 codes -> their two bf16 codes (low half first), exact. */
static __device__ __forceinline__ uint32_t fp8x2_to_bf16x2(uint32_t pair) {
  const float2 f = fp8x2_to_f32(pair);
  return (elmo_f32_bits(f.x) >> 16) | (elmo_f32_bits(f.y) & 0xFFFF0000u);
}

static __device__ __forceinline__ int64_t min64d(int64_t a, int64_t b) { return a < b ? a : b; }

/* The warp's place in a 128 x 128 tile of 8 warps: 2 along the rows (64 each) by 4 along the
 * columns (32 each); per warp 4 x 4 mma tiles of 16 x 8. */
#define WARP_M0(w) (((w) >> 2) * 64)
#define WARP_N0(w) (((w) & 3) * 32)

/* B fragments of 4 n8 tiles from a [k][n] bf16 tile (row length ld) at (kk, n0). */
static __device__ __forceinline__ void load_b_frags(uint32_t bf[4][2], const uint16_t *s, int ld, int kk, int n0,
                                                    int lane) {
#pragma unroll
  for (int jj = 0; jj < 2; jj++) {
    uint32_t r[4];
    ldsm_x4_t(r, s + (kk + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0 + 16 * jj + (lane >> 4) * 8);
    bf[2 * jj][0] = r[0];
    bf[2 * jj][1] = r[1];
    bf[2 * jj + 1][0] = r[2];
    bf[2 * jj + 1][1] = r[3];
  }
}

/* ---- work distribution and launches --------------------------------------------------------- */

/* Tiles handed out at run time (update_wg_kernel's blocks): word 0 counts tiles taken, word 1 workers
 * finished; the last worker to finish zeroes both for the next launch (which starts only after this one
 * has ended). A worker's tiles ascend, and each tile is computed whole by one worker, so the results do
 * not depend on who takes what. (The fused logits kernel keeps its round-robin tiles: taken at run time
 * they made it 5-10% slower, docs/PERFORMANCE.md, ninth round.) */
__device__ unsigned elmo_tile_ctr[2];

/* Run-time switches for measurements (default on): ELMO_CLS_PDL=0 launches the step's fused kernels the
 * usual way, ELMO_CLS_DYN=0 gives the update's tiles out round-robin instead of at run time. */
static int env_on(const char *var) {
  const char *e = getenv(var);
  return !(e && strcmp(e, "0") == 0);
}
static int cls_pdl_on(void) { return env_on("ELMO_CLS_PDL"); } /* read at every launch: tests switch them */
static int cls_dyn_on(void) { return env_on("ELMO_CLS_DYN"); }
extern "C" int elmo_cuda_fp8_fast_accum(void) { return env_on("ELMO_FP8_FAST_ACCUM"); }

/* kernel<<<grid, threads, smem, s>>>(args...), with programmatic stream serialization when pdl (only for
 * kernels that keep the protocol of pdl_wait). */
template <typename... KArgs, typename... Args>
static void launch_k(bool pdl, void (*kernel)(KArgs...), dim3 grid, int threads, size_t smem, cudaStream_t s,
                     Args... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3((unsigned)threads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute at[1] = {};
  at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = at;
  cfg.numAttrs = pdl && cls_pdl_on() ? 1 : 0;
  ELMO_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, args...));
}

/* ---- Hopper warpgroup MMA (sm_90a code only) ------------------------------------------------ */

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ELMO_HAVE_WGMMA 1
/* Shared-memory matrix descriptor of a K-major operand with 128-byte swizzle: rows of 128 bytes
 * (64 bf16 along K), 8-row atoms of 1024 bytes (SBO), the 16-byte chunk c of row r stored at chunk
 * c ^ (r % 8); atoms 1024-byte aligned. A k16 step inside the row advances the start by 32 bytes. */
static __device__ __forceinline__ uint64_t wg_desc(const void *p) {
  return (uint64_t)((smem_addr(p) & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
         ((uint64_t)1 << 62);
}
static __device__ __forceinline__ void wg_fence_proxy() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
static __device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
static __device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> static __device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
static __device__ __forceinline__ void tile_done(unsigned *ctr, unsigned workers) {
  __threadfence();
  if (atomicAdd(ctr + 1, 1u) == workers - 1) {
    ctr[0] = 0;
    ctr[1] = 0;
    __threadfence();
  }
}

/* Programmatic dependent launch (sm_90): a kernel launched with programmatic stream serialization may
 * start while the kernel ahead of it in the stream still runs. pdl_wait blocks until that kernel has ended
 * and its writes are visible; pdl_trigger lets the kernel after this one launch once every block here has
 * triggered or exited. Both do nothing in a kernel launched the usual way. The step's protocol
 * (launch_k): every kernel triggers only after its own wait, so when kernel N + 1 starts, kernel N - 1 and
 * all before it have ended: before its wait, N + 1 may read what N - 1 and earlier wrote, and must neither
 * read what N writes nor write what N reads. */
static __device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
static __device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }
/* pdl_wait then pdl_trigger, once per thread (flag: done already). */
static __device__ __forceinline__ void pdl_sync(bool &done) {
  if (done) return;
  pdl_wait();
  pdl_trigger();
  done = true;
}
/* d[N / 2] += A (64 x 16, desc a) B^T (N x 16, desc b), both K-major bf16; TA = 1: A MN-major instead
 * (transposed: the 64 M elements of each K row contiguous, 128-byte swizzle, 8-row atoms of 1024 bytes;
 * a k16 step advances the start by 16 rows). */
template <int TA = 0>
static __device__ __forceinline__ void wgmma_m64n128k16(float d[64], uint64_t a, uint64_t b) {
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %66, 0;\n wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, %67, 0;\n}\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
               : "l"(a), "l"(b), "r"(1), "n"(TA));
}
static __device__ __forceinline__ void wgmma_m64n256k16(float d[128], uint64_t a, uint64_t b) {
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %130, 0;\n wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, 0, 0;\n}\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
               : "l"(a), "l"(b), "r"(1));
}
template <int N> static __device__ __forceinline__ void wgmma_k16(float d[N / 2], uint64_t a, uint64_t b) {
  if constexpr (N == 128) wgmma_m64n128k16(d, a, b);
  else wgmma_m64n256k16(d, a, b);
}
/* d[64] += A (64 x 16 from registers: each warp's 16 rows as an mma.m16n8k16 A fragment) B^T (128 x 16,
 * desc b, K-major bf16). */
static __device__ __forceinline__ void wgmma_rs_m64n128k16(float d[64], const uint32_t a[4], uint64_t b) {
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %69, 0;\n wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}
/* Keeps the compiler from touching the accumulators between an asynchronous wgmma and its wait. */
template <int K> static __device__ __forceinline__ void wg_pin(float d[K]) {
#pragma unroll
  for (int i = 0; i < K; i++) asm volatile("" : "+f"(d[i])::"memory");
}
/* Four 8 x 8 b16 matrices from registers, each stored transposed; lanes 8i..8i+7 give the row addresses of
 * matrix i (row j of the stored matrix = column j of the fragment). */
static __device__ __forceinline__ void stsm_x4_t(void *p, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(smem_addr(p)), "r"(r0),
               "r"(r1), "r"(r2), "r"(r3)
               : "memory");
}
/* Tensor-memory-access (TMA) copies of 2-D boxes and the shared-memory barriers that count their bytes. */
static __device__ __forceinline__ void mbar_init(uint64_t *bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
static __device__ __forceinline__ void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
/* One arrival that also expects `bytes` of TMA transactions before the phase completes. */
static __device__ __forceinline__ void mbar_expect_tx(uint64_t *bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}
static __device__ __forceinline__ void mbar_wait(uint64_t *bar, unsigned parity) {
  uint32_t done = 0;
  while (!done)
    asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done)
                 : "r"(smem_addr(bar)), "r"(parity)
                 : "memory");
}
/* Box at (c0 = inner coordinate, c1) of the map into dst, counted on bar. */
static __device__ __forceinline__ void tma_load_2d(void *dst, const CUtensorMap *map, int c0, int c1, uint64_t *bar) {
  asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n"
               ::"r"(smem_addr(dst)), "l"((uint64_t)map), "r"(c0), "r"(c1), "r"(smem_addr(bar))
               : "memory");
}
/* src to the box at (c0, c1), clipped to the map's bounds; one bulk group per commit. */
static __device__ __forceinline__ void tma_store_2d(const CUtensorMap *map, int c0, int c1, const void *src) {
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];\n"
               ::"l"((uint64_t)map), "r"(c0), "r"(c1), "r"(smem_addr(src))
               : "memory");
}
static __device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
/* The committed stores have read their shared memory / are complete. */
static __device__ __forceinline__ void bulk_wait_read0() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }
static __device__ __forceinline__ void bulk_wait0() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }
#endif

/* ---- SR bits and rounding, bit-identical to numerics.h, cheaper on the device ---------------- */

/* elmo_rand_block with the round keys precomputed (rk[2r], rk[2r+1] = the keys of round r, kept
 * in the kernel's parameter space): four multiply-and-XOR steps per round. */
static __host__ __device__ __forceinline__ uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return (uint32_t)(((uint64_t)a * b) >> 32);
#endif
}

template <int ROUNDS>
static __host__ __device__ __forceinline__ void philox_rk(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                                          const uint32_t rk[20], uint32_t out[4]) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < ROUNDS; r++) {
    const uint32_t hi0 = mulhi32(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const uint32_t hi1 = mulhi32(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    c0 = hi1 ^ c1 ^ rk[2 * r];
    c2 = hi0 ^ c3 ^ rk[2 * r + 1];
    c1 = lo1;
    c3 = lo0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

/* The round keys of elmo_rand_block(seed, step, ...). */
static void philox_round_keys(uint64_t seed, uint64_t step, uint32_t rk[20]) {
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32) ^ (uint32_t)(step >> 32);
  for (int r = 0; r < 10; r++) {
    rk[2 * r] = k0;
    rk[2 * r + 1] = k1;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

/* elmo_sr_fp8 as an FP32 value that the E4M3 grid holds exactly, so that the hardware's
 * round-to-nearest satfinite conversion (two values per instruction) only re-encodes it:
 *   |v| >= 2^-6: add the 20 random bits to the dropped bits and clear them (inf stays inf and
 *                saturates in the conversion, as does anything from 448 up);
 *   |v| <  2^-6 or NaN: t = |v| + (2^-6 + rr 2^-29) in FP32, cleared to the 2^-9 grid, minus 2^-6
 *                (exact), with v's sign. A NaN goes this way because the first form could carry a
 *                NaN's payload into the sign; v must come from an FP32 add, whose NaN is the
 *                canonical positive one, which converts to 0x7F as elmo_sr_fp8 gives.
 * About 10 instructions a weight, against some 22 for the integer form it replaced. */
static __device__ __forceinline__ uint32_t lop3_or_and(uint32_t a, uint32_t b, uint32_t c) { /* a | (b & c) */
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xF8;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}
static __device__ __forceinline__ float sr8_value(float v, uint32_t r) {
  const uint32_t u = __float_as_uint(v);
  uint32_t f; /* 2^-6 + rr 2^-29 = (r & 0xFFFFF) | 0x3C800000, one LOP3 */
  asm("lop3.b32 %0, %1, 0xFFFFF, 0x3C800000, 0xEA;" : "=r"(f) : "r"(r));
  const uint32_t n = (u + f - 0x3C800000u) & 0xFFF00000u; /* u + rr, truncated */
  const float t = __fadd_rn(fabsf(v), __uint_as_float(f));
  /* t cut to the 2^-9 grid, minus 2^-6 (>= +0 or NaN), on the FMA pipes: t + 2^14 rounded toward zero keeps
   * t's bits down to 2^-9 (t < 2^-5 + 2^-29), and the difference with 2^14 + 2^-6 is exact */
  const float s = __fadd_rn(__fadd_rz(t, 16384.0f), -16384.015625f);
  return __uint_as_float(fabsf(v) >= 0.015625f ? n : lop3_or_and(__float_as_uint(s), u, 0x80000000u));
}

/* elmo_sr_bf16: below 0x7F7F0000 in magnitude the add cannot reach inf (nor carry a NaN's
 * payload into the sign), so only the rare rest takes the general form. */
static __device__ __forceinline__ uint32_t sr16(float v, uint32_t r) {
  if (!(fabsf(v) <= __uint_as_float(0x7F7F0000u))) return elmo_sr_bf16(v, r);
  return (__float_as_uint(v) + (r & 0xFFFFu)) >> 16;
}

/* Four FP32 values -> four e4m3 codes (a in the low byte), round to nearest, satfinite: two conversions
 * straight into the halves of one register (no masks or byte permutes). */
static __device__ __forceinline__ uint32_t cvt_e4m3x4(float a, float b, float c, float d) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890 /* no e4m3 conversion instruction: the reference's */
  return (uint32_t)elmo_f32_to_fp8(a) | (uint32_t)elmo_f32_to_fp8(b) << 8 | (uint32_t)elmo_f32_to_fp8(c) << 16 |
         (uint32_t)elmo_f32_to_fp8(d) << 24;
#else
  uint32_t r;
  asm("{ .reg .b16 lo, hi;\n cvt.rn.satfinite.e4m3x2.f32 lo, %2, %1;\n cvt.rn.satfinite.e4m3x2.f32 hi, %4, %3;\n"
      " mov.b32 %0, {lo, hi}; }"
      : "=r"(r)
      : "f"(a), "f"(b), "f"(c), "f"(d));
  return r;
#endif
}

/* Two FP32 values -> two e4m3 codes (lo in the low byte), round to nearest, satfinite. */
static __device__ __forceinline__ uint32_t cvt_e4m3x2(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
  return (uint32_t)elmo_f32_to_fp8(lo) | (uint32_t)elmo_f32_to_fp8(hi) << 8;
#else
  uint16_t p;
  asm("{ .reg .b16 t;\n cvt.rn.satfinite.e4m3x2.f32 t, %1, %2;\n mov.b16 %0, t; }" : "=h"(p) : "f"(hi), "f"(lo));
  return p;
#endif
}

/* For tests: the update kernel's SR of x[i] + zero (zero = -0.0f: the add every update value
 * comes from) with bits r[i], two at a time: e4m3 codes into out8 or bf16 codes into out16; n even. */
static __global__ void sr_test_kernel(const float *x, const uint32_t *r, uint8_t *out8, uint16_t *out16, int64_t n,
                                      float zero) {
  for (int64_t i = 2 * (blockIdx.x * (int64_t)blockDim.x + threadIdx.x); i < n; i += 2 * (int64_t)gridDim.x * blockDim.x) {
    const float v0 = __fadd_rn(x[i], zero), v1 = __fadd_rn(x[i + 1], zero);
    if (out8) *(uint16_t *)(out8 + i) = (uint16_t)cvt_e4m3x2(sr8_value(v0, r[i]), sr8_value(v1, r[i + 1]));
    else *(uint32_t *)(out16 + i) = __byte_perm(sr16(v0, r[i]), sr16(v1, r[i + 1]), 0x5410);
  }
}

static unsigned sr_test_blocks(int64_t n) { return (unsigned)((n / 2 + 255) / 256 < 1024 ? (n / 2 + 255) / 256 : 1024); }

extern "C" void elmo_cuda_cls_sr_fp8_dev(const float *x, const uint32_t *r, uint8_t *out, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  sr_test_kernel<<<sr_test_blocks(n), 256, 0, s>>>(x, r, out, NULL, n, -0.0f);
  ELMO_LAUNCH_CHECK();
}

extern "C" void elmo_cuda_cls_sr_bf16_dev(const float *x, const uint32_t *r, uint16_t *out, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  sr_test_kernel<<<sr_test_blocks(n), 256, 0, s>>>(x, r, NULL, out, n, -0.0f);
  ELMO_LAUNCH_CHECK();
}

extern "C" void elmo_cuda_cls_rand_block_rk(uint64_t seed, uint64_t step, uint32_t tensor, uint64_t block,
                                            uint32_t out[4]) {
  uint32_t rk[20];
  philox_round_keys(seed, step, rk);
  philox_rk<ELMO_CLS_SR_ROUNDS>((uint32_t)block, (uint32_t)(block >> 32), (uint32_t)step, tensor, rk, out);
}

/* ---- weight codecs: codes <-> FP32 for the update epilogue ---------------------------------- */

template <int DT> struct wcodec;
template <> struct wcodec<ELMO_FP8> {
  static constexpr int es = 1;
  static __device__ __forceinline__ void get2(const uint8_t *p, float v[2]) {
    const float2 f = fp8x2_to_f32(*(const uint16_t *)p);
    v[0] = f.x;
    v[1] = f.y;
  }
  static __device__ __forceinline__ uint32_t rn(float v) { return elmo_f32_to_fp8(v); }
  static __device__ __forceinline__ float dec(uint32_t c) { return elmo_fp8_to_f32((uint8_t)c); }
  static __device__ __forceinline__ void put2(uint8_t *p, uint32_t c0, uint32_t c1) {
    *(uint16_t *)p = (uint16_t)(c0 | (c1 << 8));
  }
};
template <> struct wcodec<ELMO_BF16> {
  static constexpr int es = 2;
  static __device__ __forceinline__ void get2(const uint8_t *p, float v[2]) {
    const uint32_t u = *(const uint32_t *)p;
    v[0] = elmo_bits_f32(u << 16);
    v[1] = elmo_bits_f32(u & 0xFFFF0000u);
  }
  static __device__ __forceinline__ uint32_t rn(float v) { return elmo_f32_to_bf16(v); }
  static __device__ __forceinline__ float dec(uint32_t c) { return elmo_bf16_to_f32((uint16_t)c); }
  static __device__ __forceinline__ void put2(uint8_t *p, uint32_t c0, uint32_t c1) {
    *(uint32_t *)p = c0 | (c1 << 16);
  }
};
template <> struct wcodec<ELMO_F32> {
  static constexpr int es = 4;
  static __device__ __forceinline__ void get2(const uint8_t *p, float v[2]) {
    const float2 f = *(const float2 *)p;
    v[0] = f.x;
    v[1] = f.y;
  }
  static __device__ __forceinline__ uint32_t rn(float v) { return elmo_f32_bits(v); }
  static __device__ __forceinline__ float dec(uint32_t c) { return elmo_bits_f32(c); }
  static __device__ __forceinline__ void put2(uint8_t *p, uint32_t c0, uint32_t c1) {
    *(float2 *)p = make_float2(elmo_bits_f32(c0), elmo_bits_f32(c1));
  }
};

/* ---- Xq with permuted columns ------------------------------------------------------------- */

/* The update kernels read Xq through a copy whose column c holds feature xperm(c) (within each 32
 * columns): mma column 8j + 2t + e (n8 tile j, lane quad t) is then feature 8t + 2j + e, so the
 * accumulators of lane t are features 8t..8t+7 of its rows, and the epilogue reads, rounds and
 * writes 8 adjacent weights at a time from whole Philox blocks and no exchange between lanes. */
static __host__ __device__ __forceinline__ int xperm(int c) {
  return (c & ~31) | (((c >> 1) & 3) << 3) | (((c >> 3) & 3) << 1) | (c & 1);
}

/* Rows of the permuted copy: d rounded up to whole groups of 32 (features >= d read as zeros). */
static int64_t xperm_ld(int64_t d) { return (d + 31) / 32 * 32; }

/* Xp[b, c] = Xq[b, xperm(c)] (0 past d), two columns (4 bytes) a thread; d a multiple of 16. */
static __global__ void permute_x_kernel(const uint32_t *Xq, uint32_t *Xp, int64_t rows, int64_t d, int64_t dp) {
  const int64_t pairs = rows * (dp / 2);
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < pairs; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = i / (dp / 2);
    const int f = xperm((int)(i % (dp / 2)) * 2);
    Xp[i] = f < d ? Xq[(b * d + f) / 2] : 0u;
  }
}

extern "C" int64_t elmo_cuda_cls_xp_cols(int64_t d) { return xperm_ld(d); }

/* c->Xp16 rows < B from c->Xq16. */
static void permute_x(const elmo_cuda_cls *c, int64_t B, cudaStream_t s) {
  const int64_t dp = xperm_ld(c->d), pairs = B * (dp / 2);
  if (pairs <= 0) return;
  const int64_t blocks = (pairs + 255) / 256 < 1024 ? (pairs + 255) / 256 : 1024;
  permute_x_kernel<<<(unsigned)blocks, 256, 0, s>>>((const uint32_t *)c->Xq16, (uint32_t *)c->Xp16, B, c->d, dp);
  ELMO_LAUNCH_CHECK();
}

/* Xt[f, b] = Xp[b, f] for b < B, 0 for B <= b < ldt (the wgmma update's K-major B operand). */
static __global__ void transpose_x_kernel(const uint16_t *Xp, uint16_t *Xt, int64_t B, int64_t dp, int64_t ldt) {
  const int64_t n = dp * ldt;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t f = i / ldt, b = i - f * ldt;
    Xt[i] = b < B ? Xp[b * dp + f] : (uint16_t)0;
  }
}

/* Row length of c->Xt16: the batch capacity rounded up to the wgmma update's 64-row stages. */
extern "C" int64_t elmo_cuda_cls_xt_cols(int64_t B_cap) { return (B_cap + 63) / 64 * 64; }

/* Which code the device runs: the probe writes 1 where the sm_90a code (wgmma, TMA, programmatic launch)
 * was compiled in and 0 in the code for other targets. A build for Ampere only, run on an H100, has the
 * sm_90a kernels empty, so the compute capability alone cannot decide. */
__device__ int elmo_code_probe_out;
static __global__ void code_probe_kernel() {
#if defined(ELMO_HAVE_WGMMA)
  elmo_code_probe_out = 1;
#else
  elmo_code_probe_out = 0;
#endif
}

/* -1: this binary has no code the current device can run; 0: code without the sm_90a features; 1: the
 * sm_90a code. Asked once (a launch and a synchronisation), then cached. */
extern "C" int elmo_cuda_code_kind(void) {
  static int kind = -2;
  if (kind > -2) return kind;
  int v = 0;
  code_probe_kernel<<<1, 1>>>();
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  if (e == cudaSuccess) e = cudaMemcpyFromSymbol(&v, elmo_code_probe_out, sizeof v);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return kind = -1;
  }
  return kind = v;
}

/* 1 when the device runs the sm_90a code (compute capability 9.0 and that code in the binary, asked once)
 * and the environment variable `var` is not "0" (read on every call: tests switch it). */
static int wgmma_enabled(const char *var) {
  static int sm90 = -1;
  if (sm90 < 0) {
    int dev = 0, major = 0, minor = 0;
    ELMO_CUDA_CHECK(cudaGetDevice(&dev));
    ELMO_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    ELMO_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    sm90 = major == 9 && minor == 0 && elmo_cuda_code_kind() == 1;
  }
  return sm90 && env_on(var);
}

extern "C" int elmo_cuda_cls_update_wgmma(void) { return wgmma_enabled("ELMO_UPDATE_WGMMA"); }

/* ==== fused update ============================================================================ */

/* Batches above 128 rows. Persistent blocks (two per SM) walk the 128 x 128 tiles; while a block
 * rounds one tile, the weights and first batch stages of its next tile are already on their way
 * (two weight buffers). */
#define U_TL 128                 /* labels per tile */
#define U_TD 128                 /* features per tile */
#define U_BK 32                  /* batch rows per stage */
#define U_THREADS 256
#define U_LDG (U_TL + 8)         /* bf16 per row of a G^T stage [b][label] */
#define U_LDX (U_TD + 8)         /* bf16 per row of an Xq stage [b][feature] */
#define U_STAGE_BYTES (U_BK * (U_LDG + U_LDX) * 2)
/* Bytes per row of a weight tile: 8-byte reads of 8 e4m3 weights by lanes (row g, column 8t) hit
 * distinct banks in each phase at 160; wider weights keep 16 bytes of padding. */
#define U_LDW(es) ((es) == 1 ? 160 : U_TD * (es) + 16)

/* Stages in flight: three for e4m3, two for the wider weights (two blocks per SM still fit). */
static constexpr __host__ __device__ int u_nst(int dt) { return dt == ELMO_FP8 ? 3 : 2; }
static constexpr __host__ __device__ size_t u_w_off(int dt) { return (size_t)u_nst(dt) * U_STAGE_BYTES; }
static constexpr __host__ __device__ size_t u_w_bytes(int es) { return (size_t)U_TL * U_LDW(es); }
static constexpr size_t update_smem_bytes(int dt, int es) { return u_w_off(dt) + 2 * u_w_bytes(es) + 2 * 4 * U_TL; }

struct update_args {
  void *W;                 /* [L_pad, d] */
  int64_t d, L, l0, n, B;
  int64_t lbase;           /* global label of W's row 0 (label-sharded models): keys the SR bits */
  uint16_t *kahan;         /* [n_head, d] or NULL */
  const int32_t *head_slot;
  const void *G;           /* [round16(B), n]: bf16 codes, or FP32 (fp32 weights) */
  const uint16_t *Xq16;    /* [B_cap, dp] bf16 codes of Xq, columns permuted (c->Xp16, see xperm) */
  const uint16_t *Xt;      /* [dp, ldt] its transpose, zeros past B (c->Xt16; the wgmma kernel) */
  int64_t ldt;
  int64_t dp;              /* its row length: d rounded up to 32 */
  float nlr, decay, ndecay; /* elmo_cls_coefs */
  uint32_t step_lo;        /* counter word 2 of the SR bits */
  uint32_t rk[20];         /* Philox round keys of (seed, step) */
  int64_t tiles;           /* label tiles x feature tiles */
  int d_tiles;
  int bench;               /* ELMO_CLS_BENCH_* (benchmarks only; 0 in training) */
  int dyn;                 /* update_wg_kernel's TMA form: tiles taken at run time (elmo_tile_ctr) */
  int pdl;                 /* host: that form may launch early (the step, Xt16 made before) */
};

/* Eight labels (j..j+7) of G row b into shared memory as bf16 codes. */
static __device__ __forceinline__ void g_chunk(const update_args &a, const uint16_t *G, int64_t b, int64_t j,
                                               uint16_t *dst) {
  const bool v = b < a.B && j < a.n;
  cp_async16(dst, v ? G + b * a.n + j : G, v);
}
static __device__ __forceinline__ void g_chunk(const update_args &a, const float *G, int64_t b, int64_t j,
                                               uint16_t *dst) {
  uint4 r = make_uint4(0, 0, 0, 0);
  if (b < a.B && j < a.n) { /* FP32 G holds bf16 values: their top halves are the codes */
    const float4 p = *(const float4 *)(G + b * a.n + j), q = *(const float4 *)(G + b * a.n + j + 4);
    r.x = (elmo_f32_bits(p.x) >> 16) | (elmo_f32_bits(p.y) & 0xFFFF0000u);
    r.y = (elmo_f32_bits(p.z) >> 16) | (elmo_f32_bits(p.w) & 0xFFFF0000u);
    r.z = (elmo_f32_bits(q.x) >> 16) | (elmo_f32_bits(q.y) & 0xFFFF0000u);
    r.w = (elmo_f32_bits(q.z) >> 16) | (elmo_f32_bits(q.w) & 0xFFFF0000u);
  }
  *(uint4 *)dst = r;
}

/* Batch rows b0..b0+U_BK of G^T (labels j0..) and Xq (features k0..) into one stage. */
template <typename GT>
static __device__ __forceinline__ void u_load_stage(const update_args &a, int64_t b0, int64_t j0, int64_t k0,
                                                    uint16_t *sg, uint16_t *sx) {
#pragma unroll
  for (int q = 0; q < U_BK * (U_TL / 8) / U_THREADS; q++) {
    const int i = threadIdx.x + q * U_THREADS, r = i / (U_TL / 8), c = (i % (U_TL / 8)) * 8;
    g_chunk(a, (const GT *)a.G, b0 + r, j0 + c, sg + r * U_LDG + c);
  }
#pragma unroll
  for (int q = 0; q < U_BK * (U_TD / 8) / U_THREADS; q++) {
    const int i = threadIdx.x + q * U_THREADS, r = i / (U_TD / 8), c = (i % (U_TD / 8)) * 8;
    const int64_t b = b0 + r, k = k0 + c;
    const bool v = b < a.B && k < a.dp;
    cp_async16(sx + r * U_LDX + c, v ? a.Xq16 + b * a.dp + k : a.Xq16, v);
  }
}

/* The same for bf16 G from per-tile base pointers: this thread's pieces are batch rows r0 and
 * r0 + 16 of the stage, columns c..c+7 of both G^T (labels) and Xq (features), so a stage costs
 * two pointer offsets instead of 64-bit index arithmetic per piece (the stage loop of a B = 512
 * tile is otherwise mostly address work). */
struct u_cursor {
  const uint16_t *g, *x; /* G at (row r0, label j0 + c), Xq at (row r0, feature k0 + c) */
  int r0, c;
  bool jv, kv;           /* label / feature piece inside the chunk / the row */
};
static_assert(U_TL == 128 && U_TD == 128 && U_BK * 16 == 2 * U_THREADS, "u_load_stage16's piece map");
static __device__ __forceinline__ u_cursor u_cursor_at(const update_args &a, int64_t j0, int64_t k0) {
  u_cursor u;
  u.r0 = threadIdx.x / 16;
  u.c = (threadIdx.x % 16) * 8;
  u.jv = j0 + u.c < a.n;
  u.kv = k0 + u.c < a.dp;
  u.g = (const uint16_t *)a.G + u.r0 * a.n + j0 + u.c;
  u.x = a.Xq16 + u.r0 * a.dp + k0 + u.c;
  return u;
}
/* The stage whose first piece row is brow (= b0 + r0), from G and Xq pointers at that row. */
static __device__ __forceinline__ void u_load_stage16(const update_args &a, const u_cursor &u, const uint16_t *g,
                                                      const uint16_t *x, int brow, uint16_t *sg, uint16_t *sx) {
#pragma unroll
  for (int q = 0; q < 2; q++) {
    const int r = u.r0 + 16 * q;
    const bool b = brow + 16 * q < (int)a.B, vg = b && u.jv, vx = b && u.kv;
    cp_async16(sg + r * U_LDG + u.c, vg ? g + 16 * q * a.n : (const uint16_t *)a.G, vg);
    cp_async16(sx + r * U_LDX + u.c, vx ? x + 16 * q * a.dp : a.Xq16, vx);
  }
}
template <typename GT>
static __device__ __forceinline__ void u_stage(const update_args &a, const u_cursor &u, int64_t b0, int64_t j0,
                                               int64_t k0, uint16_t *sg, uint16_t *sx) {
  if (sizeof(GT) == 2) u_load_stage16(a, u, u.g + b0 * a.n, u.x + b0 * a.dp, (int)b0 + u.r0, sg, sx);
  else u_load_stage<GT>(a, b0, j0, k0, sg, sx);
}

/* The head slots of the TL rows of label tile j0 (-1: not a head row). */
template <int TL>
static __device__ __forceinline__ void tile_slots(const update_args &a, int64_t j0, int32_t *sslot) {
  if (threadIdx.x < TL) {
    const int64_t j = j0 + threadIdx.x, l = a.l0 + j;
    sslot[threadIdx.x] = a.head_slot && a.kahan && j < a.n && l < a.L ? a.head_slot[l] : -1;
  }
}

/* The weight tile (TL labels from j0, features k0..k0+U_TD; rows of LDW bytes) and the head slots
 * of its rows (no commit). */
template <int ES, int TL, int LDW = U_LDW(ES)>
static __device__ __forceinline__ void load_w_tile(const update_args &a, int64_t j0, int64_t k0, uint8_t *sw,
                                                   int32_t *sslot) {
  constexpr int CPR = U_TD * ES / 16; /* 16-byte pieces per row */
#pragma unroll
  for (int q = 0; q < TL * CPR / U_THREADS; q++) {
    const int i = threadIdx.x + q * U_THREADS, r = i / CPR, c = i % CPR;
    const int64_t j = j0 + r, k = k0 + c * (16 / ES);
    const bool v = j < a.n && k < a.d;
    cp_async16(sw + r * LDW + c * 16, v ? (const uint8_t *)a.W + ((a.l0 + j) * a.d + k) * ES : a.W, v);
  }
  tile_slots<TL>(a, j0, sslot);
}

/* acc = 0 for MI m16 tiles by 4 n8 tiles. */
template <int MI> static __device__ __forceinline__ void zero_acc(float acc[MI][4][4]) {
#pragma unroll
  for (int i = 0; i < MI; i++)
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;
}

/* Tile t's first label (t / d_tiles) and first feature (t % d_tiles), divided in 32 bits: a chunk has fewer
 * than 2^32 tiles (elmo_cuda_cls_update checks), and 64-bit division is a long integer subroutine. */
static __device__ __forceinline__ void tile_at(const update_args &a, int64_t t, int64_t &j0, int64_t &k0) {
  const uint32_t tt = (uint32_t)t, dt = (uint32_t)a.d_tiles, lt = tt / dt;
  j0 = (int64_t)lt * U_TL;
  k0 = (int64_t)(tt - lt * dt) * U_TD;
}

/* Starts a tile: its weights, head slots and first NST-1 stages (NST-1 cp.async groups). */
template <typename GT, int DT>
static __device__ __forceinline__ void u_start_tile(const update_args &a, int64_t tile, int nk, uint8_t *smem,
                                                    uint8_t *sw, int32_t *sslot) {
  int64_t j0, k0;
  tile_at(a, tile, j0, k0);
  load_w_tile<wcodec<DT>::es, U_TL>(a, j0, k0, sw, sslot);
  const u_cursor u = u_cursor_at(a, j0, k0);
#pragma unroll
  for (int s = 0; s < u_nst(DT) - 1; s++) {
    uint16_t *sg = (uint16_t *)(smem + s * U_STAGE_BYTES);
    if (s < nk) u_stage<GT>(a, u, (int64_t)s * U_BK, j0, k0, sg, sg + U_BK * U_LDG);
    cp_async_commit();
  }
}

/* acc += G^T Xq over one stage (U_BK batch rows). */
static __device__ __forceinline__ void u_mma_stage(float acc[4][4][4], const uint16_t *sg, const uint16_t *sx) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, m0 = WARP_M0(warp), n0 = WARP_N0(warp);
#pragma unroll
  for (int kk = 0; kk < U_BK; kk += 16) {
    uint32_t af[4][4], bf[4][2];
#pragma unroll
    for (int i = 0; i < 4; i++) /* A = G^T stored [k = b][m = label]: transposed loads */
      ldsm_x4_t(af[i], sg + (kk + (lane & 7) + ((lane >> 4) & 1) * 8) * U_LDG + m0 + 16 * i + ((lane >> 3) & 1) * 8);
    load_b_frags(bf, sx, U_LDX, kk, n0, lane);
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
      for (int j = 0; j < 4; j++) mma_bf16(acc[i][j], af[i], bf[j][0], bf[j][1]);
  }
}

/* The four random words of elements 4 * block .. 4 * block + 3; CONST_BITS: a cheap stand-in
 * for timing the rest of the epilogue (benchmarks only, wrong numerics). */
template <bool CONST_BITS>
static __device__ __forceinline__ void u_bits(const update_args &a, uint64_t block, uint32_t w[4]) {
  if (CONST_BITS) {
    const uint32_t x = (uint32_t)block * 0x9E3779B9u;
    w[0] = x;
    w[1] = x ^ 0x5555u;
    w[2] = x ^ 0xAAAAu;
    w[3] = ~x;
  } else {
    philox_rk<ELMO_CLS_SR_ROUNDS>((uint32_t)block, (uint32_t)(block >> 32), a.step_lo, ELMO_RNG_CLS_SR, a.rk, w);
  }
}

/* The CPU's update of one weight before rounding (non-contracted operations, in its order). */
/* DECAY false: a.decay is 1, whose product with p is p itself (the same bits, one instruction less;
 * no weight decay is the classifier's default). */
template <bool DECAY = true>
static __device__ __forceinline__ float u_new(const update_args &a, float g, float p) { /* SR rows */
  return __fmaf_rn(a.nlr, g, DECAY ? __fmul_rn(a.decay, p) : p);
}
static __device__ __forceinline__ float u_delta(const update_args &a, float g, float p) { /* head rows */
  return __fmaf_rn(a.nlr, g, __fmul_rn(a.ndecay, p));
}

/* LDW of a weight tile that TMA wrote with its 128-byte swizzle (update_tma_kernel): rows of 128 bytes,
 * the 16-byte chunk c of row r at chunk c ^ (r % 8). */
#define W_SWZ 0
/* Byte `col` of row r of a weight tile with rows LDW bytes apart (or swizzled, W_SWZ). */
template <int LDW> static __device__ __forceinline__ uint8_t *w_at(uint8_t *sw, int r, int col) {
  if (LDW == W_SWZ) return sw + r * 128 + ((((col >> 4) ^ r) & 7) << 4) + (col & 15);
  return sw + r * LDW + col;
}

/* Head row: round to nearest with the bf16 Kahan compensation, p' = RN(p + u), c' = bf16(u - (p' - p)),
 * u = delta + c (the CPU's update_kahan_row). */
template <int DT, int LDW = U_LDW(wcodec<DT>::es)>
static __device__ __forceinline__ void u_kahan(const update_args &a, int64_t k0, int r, int cc, int32_t slot, float g0,
                                            float g1, uint8_t *sw) {
  using C = wcodec<DT>;
  const int64_t k = k0 + cc;
  if (slot < 0 || k >= a.d) return;
  uint8_t *pw = w_at<LDW>(sw, r, (int)(cc * C::es));
  float p[2];
  C::get2(pw, p);
  uint32_t *pc = (uint32_t *)(a.kahan + (int64_t)slot * a.d + k);
  const uint32_t cw = *pc;
  const float u0 = __fadd_rn(u_delta(a, g0, p[0]), elmo_bits_f32(cw << 16));
  const float u1 = __fadd_rn(u_delta(a, g1, p[1]), elmo_bits_f32(cw & 0xFFFF0000u));
  const uint32_t c0 = C::rn(__fadd_rn(p[0], u0)), c1 = C::rn(__fadd_rn(p[1], u1));
  const float q0 = C::dec(c0), q1 = C::dec(c1);
  *pc = (uint32_t)elmo_f32_to_bf16(__fsub_rn(u0, __fsub_rn(q0, p[0]))) |
        ((uint32_t)elmo_f32_to_bf16(__fsub_rn(u1, __fsub_rn(q1, p[1]))) << 16);
  C::put2(pw, c0, c1);
}

/* Eight weights of a tile row in shared memory <-> FP32, and their SR back (the codecs of 8). */
template <int DT> struct wcodec8;
template <> struct wcodec8<ELMO_FP8> {
  static __device__ __forceinline__ void get(const uint8_t *p, float v[8]) {
    const uint2 q = *(const uint2 *)p;
    const uint32_t w[2] = {q.x, q.y};
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const float2 a = fp8x2_to_f32(w[h] & 0xFFFFu), b = fp8x2_to_f32(w[h] >> 16);
      v[4 * h] = a.x;
      v[4 * h + 1] = a.y;
      v[4 * h + 2] = b.x;
      v[4 * h + 3] = b.y;
    }
  }
  static __device__ __forceinline__ void put_sr(uint8_t *p, const float v[8], const uint32_t r[8], bool st) {
    float q[8];
#pragma unroll
    for (int e = 0; e < 8; e++) q[e] = sr8_value(v[e], r[e]);
    const uint2 c = make_uint2(cvt_e4m3x4(q[0], q[1], q[2], q[3]), cvt_e4m3x4(q[4], q[5], q[6], q[7]));
    if (st) *(uint2 *)p = c;
  }
};
template <> struct wcodec8<ELMO_BF16> {
  static __device__ __forceinline__ void get(const uint8_t *p, float v[8]) { elmo_bf16x8_to_f32(p, v); }
  static __device__ __forceinline__ void put_sr(uint8_t *p, const float v[8], const uint32_t r[8], bool st) {
    if (!st) return; /* sr16 has a rare branch of its own */
    uint32_t c[4];
#pragma unroll
    for (int q = 0; q < 4; q++) c[q] = __byte_perm(sr16(v[2 * q], r[2 * q]), sr16(v[2 * q + 1], r[2 * q + 1]), 0x5410);
    *(uint4 *)p = make_uint4(c[0], c[1], c[2], c[3]);
  }
};
template <> struct wcodec8<ELMO_F32> {
  static __device__ __forceinline__ void get(const uint8_t *p, float v[8]) {
    const float4 a = *(const float4 *)p, b = *(const float4 *)(p + 16);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
  }
  static __device__ __forceinline__ void put_sr(uint8_t *p, const float v[8], const uint32_t *, bool st) {
    if (!st) return;
    *(float4 *)p = make_float4(v[0], v[1], v[2], v[3]);
    *(float4 *)(p + 16) = make_float4(v[4], v[5], v[6], v[7]);
  }
};

/* A lane's 8 adjacent weights of a tile row at pw: read, SGD with their gradient sums gs (u_new), SR
 * with bits r, stored when st (e4m3 rounds every row and stores the SR rows only, so that no branch
 * splits the rows and the scheduler can interleave one row's Philox chains with another's rounding). */
template <int DT, bool DECAY>
static __device__ __forceinline__ void sgd_sr8(const update_args &a, uint8_t *pw, const float (&gs)[8],
                                               const uint32_t (&r)[8], bool st) {
  float p[8], v[8];
  wcodec8<DT>::get(pw, p);
#pragma unroll
  for (int e = 0; e < 8; e++) v[e] = u_new<DECAY>(a, gs[e], p[e]);
  wcodec8<DT>::put_sr(pw, v, r, st);
}

/* The 20-bit SR fields of one e4m3 quarter (positions 8q .. 8q + 7 of its group, features cb .. cb + 7)
 * from the group's words 5q .. 5q + 4 (elmo_cls_sr8_pick; sr8_value masks what lies above bit 20). */
static __device__ __forceinline__ void sr8_fields(const uint32_t u[5], uint32_t r[8]) {
  r[0] = u[0];
  r[1] = __funnelshift_r(u[0], u[1], 20);
  r[2] = u[1] >> 8;
  r[3] = __funnelshift_r(u[1], u[2], 28);
  r[4] = __funnelshift_r(u[2], u[3], 16);
  r[5] = u[3] >> 4;
  r[6] = __funnelshift_r(u[3], u[4], 24);
  r[7] = u[4] >> 12;
}

static_assert(U_TD == 128, "a.d_tiles = ceil(d / U_TD) stands for the SR numbering's ceil(d / 128) spans");
/* The first e4m3 SR block of a lane's quarter in a tile (labels j0.., features k0.., k0 a multiple of
 * 128): quarter t = lane & 3 of the 32-feature group at cb, row r adds r * 20 ceil(d / 128) (classifier.h:
 * block 5 grp + q holds the quarter's words 5q ..). */
static __device__ __forceinline__ uint64_t sr8_tile_block(const update_args &a, int64_t j0, int64_t k0, int cb) {
  const uint64_t grp = ((uint64_t)(a.lbase + a.l0 + j0) * (uint64_t)a.d_tiles + (uint64_t)(k0 >> 7)) * 4u + (uint64_t)((cb >> 3) & 3);
  return 5u * grp + (uint64_t)((cb >> 5) & 3);
}

/* The quarter's eight fields from its two blocks (words q .. q + 4 of their eight). */
template <bool CONST_BITS>
static __device__ __forceinline__ void sr8_quarter_bits(const update_args &a, uint64_t blk, int q, uint32_t r[8]) {
  uint32_t w[8], u[5];
  u_bits<CONST_BITS>(a, blk, w);
  u_bits<CONST_BITS>(a, blk + 1, w + 4);
  switch (q) { /* warp-uniform: the warp's 32-feature group in the tile */
    case 0: for (int i = 0; i < 5; i++) u[i] = w[i]; break;
    case 1: for (int i = 0; i < 5; i++) u[i] = w[i + 1]; break;
    case 2: for (int i = 0; i < 5; i++) u[i] = w[i + 2]; break;
    default: for (int i = 0; i < 5; i++) u[i] = w[i + 3]; break;
  }
  sr8_fields(u, r);
}

/* The SGD + SR epilogue of a warp's MI x 16 rows by 32 features (warps 2 x 4 over the tile; the
 * Xq columns were permuted by xperm). Lane (g, t) holds rows m0 + 16 i + g + 8 h (i < MI, h = 0, 1),
 * features cb = n0 + 8t .. cb + 7 of each: per row it draws the two Philox blocks that hold those 8
 * weights' bits (e4m3: words 5q .. 5q + 4 of their group, sr8_quarter_bits; bf16: one block, 16 bits
 * a weight), reads the 8 weights at once, rounds them and writes them back (head rows, slot >= 0,
 * are left for u_kahan). LDW: bytes per row of the weight tile. epilogue8_at takes the warp's first
 * row m0 and the 32-feature group n0 from the caller (the wgmma kernel's warp layout). */
template <int DT, bool CONST_BITS, int MI, int LDW, bool DECAY>
static __device__ __forceinline__ void epilogue8_rows(const update_args &a, int64_t j0, int64_t k0, float acc[MI][4][4],
                                                      uint8_t *sw, const int32_t *sslot, int m0, int n0) {
  constexpr int ES = wcodec<DT>::es;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int cb = n0 + 8 * t;
  /* e4m3: the quarter's first block sb + 20 ceil(d / 128) r; bf16: the Philox block of (row r, feature
   * cb) = tb8 + r d / 8 (d is a multiple of 16, cb of 8) */
  const uint64_t sb = sr8_tile_block(a, j0, k0, cb);
  const uint32_t s20 = 20u * (uint32_t)a.d_tiles;
  const uint64_t tb8 = (uint64_t)((a.lbase + a.l0 + j0) * a.d + k0 + cb) >> 3;
  const uint32_t d8 = (uint32_t)(a.d >> 3);
#pragma unroll
  for (int i = 0; i < MI; i++) {
    int32_t slot[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int r = m0 + 16 * i + g + 8 * h;
      slot[h] = sslot[r];
      uint32_t w[8];
      if (DT == ELMO_FP8) {
        sr8_quarter_bits<CONST_BITS>(a, sb + (uint64_t)((uint32_t)r * s20), (cb >> 5) & 3, w);
      } else if (DT == ELMO_BF16) { /* one block for the 8 weights, 16 bits each (fp32 weights use none) */
        u_bits<CONST_BITS>(a, tb8 + (uint64_t)((uint32_t)r * d8), w);
#pragma unroll
        for (int e = 7; e >= 0; e--) w[e] = w[e >> 1] >> (16 * (e & 1)); /* sr16 keeps the low 16 */
      }
      float gs[8];
#pragma unroll
      for (int e = 0; e < 8; e++) gs[e] = acc[i][e >> 1][2 * h + (e & 1)];
      sgd_sr8<DT, DECAY>(a, w_at<LDW>(sw, r, cb * ES), gs, w, slot[h] < 0);
    }
    if (__any_sync(0xFFFFFFFFu, slot[0] >= 0 || slot[1] >= 0)) /* rare: head rows */
#pragma unroll
      for (int h = 0; h < 2; h++)
#pragma unroll
        for (int j = 0; j < 4; j++)
          u_kahan<DT, LDW>(a, k0, m0 + 16 * i + g + 8 * h, cb + 2 * j, slot[h], acc[i][j][2 * h], acc[i][j][2 * h + 1],
                           sw);
  }
}

/* Without weight decay (a.decay 1, training's default) the decay product is left out: the same bits,
 * one instruction a weight less. */
template <int DT, bool CONST_BITS, int MI, int LDW>
static __device__ __forceinline__ void epilogue8_at(const update_args &a, int64_t j0, int64_t k0, float acc[MI][4][4],
                                                    uint8_t *sw, const int32_t *sslot, int m0, int n0) {
  if (a.decay == 1.0f) epilogue8_rows<DT, CONST_BITS, MI, LDW, false>(a, j0, k0, acc, sw, sslot, m0, n0);
  else epilogue8_rows<DT, CONST_BITS, MI, LDW, true>(a, j0, k0, acc, sw, sslot, m0, n0);
}

template <int DT, bool CONST_BITS, int MI, int LDW>
static __device__ __forceinline__ void epilogue8(const update_args &a, int64_t j0, int64_t k0, float acc[MI][4][4],
                                                 uint8_t *sw, const int32_t *sslot) {
  const int warp = threadIdx.x >> 5;
  epilogue8_at<DT, CONST_BITS, MI, LDW>(a, j0, k0, acc, sw, sslot, (warp >> 2) * 16 * MI, (warp & 3) * 32);
}

/* update_wg_kernel's epilogue: lane (g, t) holds rows mw + g + 8h (h = 0, 1) and features 32q + 8t .. + 7
 * (q = 0..3) of the tile, i.e. all four quarters of each row's e4m3 SR group, so it draws the group's five
 * blocks once (epilogue8_rows, which sees one quarter, draws two per quarter): blocks q and q + 1 for
 * quarter q, kept as a ring of two. The same bits and stores as epilogue8_at over q = 0..3. */
template <bool CONST_BITS, int LDW, bool DECAY>
static __device__ __forceinline__ void epilogue_wg_rows(const update_args &a, int64_t j0, int64_t k0, const float (&acc)[64],
                                                        uint8_t *sw, const int32_t *sslot, int mw) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const uint64_t sb = sr8_tile_block(a, j0, k0, 8 * t); /* quarter 0's first block, row 0 */
  const uint32_t s20 = 20u * (uint32_t)a.d_tiles;
  int32_t slot[2];
#pragma unroll
  for (int h = 0; h < 2; h++) {
    const int r = mw + g + 8 * h;
    slot[h] = sslot[r];
    const uint64_t blk = sb + (uint64_t)((uint32_t)r * s20);
    uint32_t w[8]; /* block b's words at w[4 (b & 1)] */
    u_bits<CONST_BITS>(a, blk, w);
#pragma unroll
    for (int q = 0; q < 4; q++) {
      u_bits<CONST_BITS>(a, blk + q + 1, w + 4 * ((q + 1) & 1));
      uint32_t u[5], rr[8];
#pragma unroll
      for (int i = 0; i < 5; i++) u[i] = w[4 * (((5 * q + i) >> 2) & 1) + ((5 * q + i) & 3)];
      sr8_fields(u, rr);
      float gs[8];
#pragma unroll
      for (int e = 0; e < 8; e++) gs[e] = acc[16 * q + 4 * (e >> 1) + 2 * h + (e & 1)];
      sgd_sr8<ELMO_FP8, DECAY>(a, w_at<LDW>(sw, r, 32 * q + 8 * t), gs, rr, slot[h] < 0);
    }
  }
  if (__any_sync(0xFFFFFFFFu, slot[0] >= 0 || slot[1] >= 0)) /* rare: head rows */
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
      for (int q = 0; q < 4; q++)
#pragma unroll
        for (int j = 0; j < 4; j++)
          u_kahan<ELMO_FP8, LDW>(a, k0, mw + g + 8 * h, 32 * q + 8 * t + 2 * j, slot[h], acc[16 * q + 4 * j + 2 * h],
                                 acc[16 * q + 4 * j + 2 * h + 1], sw);
}

/* The rounded tile (TL labels x U_TD features) back to W, 16 bytes per thread and row piece;
 * padded labels stay zero. */
template <int ES, int TL, int LDW = U_LDW(ES)>
static __device__ __forceinline__ void store_w_tile(const update_args &a, int64_t j0, int64_t k0, const uint8_t *sw) {
  constexpr int CPR = U_TD * ES / 16;
#pragma unroll
  for (int q = 0; q < TL * CPR / U_THREADS; q++) {
    const int i = threadIdx.x + q * U_THREADS, r = i / CPR, c = i % CPR;
    const int64_t j = j0 + r, l = a.l0 + j, k = k0 + c * (16 / ES);
    if (j < a.n && l < a.L && k < a.d)
      *(uint4 *)((uint8_t *)a.W + (l * a.d + k) * ES) = *(const uint4 *)(sw + r * LDW + c * 16);
  }
}

/* Tile t: label tile t / d_tiles, feature tile t % d_tiles, so the blocks that share a tile of G
 * run together and find it in L2. Block i takes tiles i, i + gridDim.x, ... */
template <typename GT, int DT, bool CONST_BITS>
static __global__ void __launch_bounds__(U_THREADS, DT == ELMO_F32 ? 1 : 2) update_mma_kernel(update_args a) {
  constexpr int ES = wcodec<DT>::es, NST = u_nst(DT);
  extern __shared__ __align__(16) uint8_t smem[];
  uint8_t *wbuf = smem + u_w_off(DT);
  int32_t *slots = (int32_t *)(wbuf + 2 * u_w_bytes(ES));
  const int nk = (int)((a.B + U_BK - 1) / U_BK);
  int64_t tile = blockIdx.x;
  if (tile < a.tiles) u_start_tile<GT, DT>(a, tile, nk, smem, wbuf, slots);
  for (int buf = 0; tile < a.tiles; tile += gridDim.x, buf ^= 1) {
    int64_t j0, k0;
    tile_at(a, tile, j0, k0);
    uint8_t *sw = wbuf + buf * u_w_bytes(ES);
    float acc[4][4][4];
    zero_acc<4>(acc);
    /* stage nx's pieces: batch rows brow, brow + 16 from the pointers gp, xp (advanced per stage) */
    const u_cursor u = u_cursor_at(a, j0, k0);
    const int64_t gs = U_BK * a.n, xs = U_BK * a.dp;
    const uint16_t *gp = u.g + (NST - 1) * gs, *xp = u.x + (NST - 1) * xs;
    int brow = (NST - 1) * U_BK + u.r0;
    for (int kt = 0; kt < nk; kt++, gp += gs, xp += xs, brow += U_BK) {
      cp_async_wait<NST - 2>();
      __syncthreads();
      const int nx = kt + NST - 1;
      uint16_t *sg = (uint16_t *)(smem + (nx % NST) * U_STAGE_BYTES);
      if (nx < nk) {
        if (sizeof(GT) == 2) {
          u_load_stage16(a, u, gp, xp, brow, sg, sg + U_BK * U_LDG);
        } else {
          u_load_stage<GT>(a, (int64_t)nx * U_BK, j0, k0, sg, sg + U_BK * U_LDG);
        }
      }
      cp_async_commit();
      sg = (uint16_t *)(smem + (kt % NST) * U_STAGE_BYTES);
      u_mma_stage(acc, sg, sg + U_BK * U_LDG);
    }
    cp_async_wait<0>();
    __syncthreads(); /* stages free, this tile's weights here */
    if (tile + gridDim.x < a.tiles)
      u_start_tile<GT, DT>(a, tile + gridDim.x, nk, smem, wbuf + (buf ^ 1) * u_w_bytes(ES), slots + (buf ^ 1) * U_TL);
    epilogue8<DT, CONST_BITS, 4, U_LDW(ES)>(a, j0, k0, acc, sw, slots + buf * U_TL);
    __syncthreads();
    store_w_tile<ES, U_TL>(a, j0, k0, sw);
  }
}

/* ---- batches above 128 rows on Hopper's warpgroup MMA (e4m3 weights) -------------------------
 * update_mma_kernel's tiles (128 labels x 128 features), weights, slots, epilogue and prefetch of
 * the next tile, but G^T Xq runs as wgmma m64n128k16 with K = 64 batch rows a stage: warpgroup q
 * takes labels 64 q .., each warp's 16 labels x 16 rows of G^T as a register fragment (ldmatrix
 * .trans from the G stage, as before), Xq's stage from shared memory as the K-major B operand: the
 * transposed copy c->Xt16 [features, batch] lands by cp.async in 128-byte swizzled rows (64 batch
 * rows per feature). Two stages: stage k + 1 loads while stage k's wgmma runs. In the epilogue warp
 * w holds labels 64 (w / 4) + 16 (w % 4) .. + 15 by 128 features, four groups of 32. */
#define V_BK 64                                  /* batch rows per stage */
#define V_X_BYTES (U_TD * V_BK * 2)              /* 16 KB: Xq^T stage, swizzled, first (1 KB aligned) */
#define V_G_BYTES (V_BK * U_LDG * 2)             /* G^T stage [b][label], padded rows */
#define V_STAGE (V_X_BYTES + V_G_BYTES)
static constexpr size_t v_smem_bytes() { return 2 * V_STAGE + 2 * u_w_bytes(1) + 2 * 4 * U_TL + 1024; }
static_assert(V_STAGE % 1024 == 0, "swizzle atoms stay 1 KB aligned");

#if defined(ELMO_HAVE_WGMMA)
/* Batch rows 64 kt .. of the tile (labels j0.., features k0..): Xq^T rows and G^T rows. */
static __device__ __forceinline__ void v_load_stage(const update_args &a, int kt, int64_t j0, int64_t k0, uint8_t *st) {
  const uint16_t *Xt = a.Xt;
  const int64_t ldt = a.ldt;
  uint8_t *sx = st;
  uint16_t *sg = (uint16_t *)(st + V_X_BYTES);
#pragma unroll
  for (int q = 0; q < U_TD * 8 / U_THREADS; q++) {   /* 128 feature rows x 8 chunks of 8 rows */
    const int i = threadIdx.x + U_THREADS * q, f = i >> 3, c = i & 7;
    const bool v = k0 + f < a.dp;
    cp_async16(sx + f * 128 + ((c ^ (f & 7)) << 4), v ? Xt + (k0 + f) * ldt + 64 * kt + 8 * c : Xt, v);
  }
  const uint16_t *G = (const uint16_t *)a.G;
#pragma unroll
  for (int q = 0; q < V_BK * (U_TL / 8) / U_THREADS; q++) {
    const int i = threadIdx.x + U_THREADS * q, r = i >> 4, c = (i & 15) * 8;
    const int64_t b = 64 * (int64_t)kt + r;
    const bool v = b < a.B && j0 + c < a.n;
    cp_async16(sg + r * U_LDG + c, v ? G + b * a.n + j0 + c : G, v);
  }
}
#endif

/* TMA (a.Xt etc. as maps, see launch_update): each stage's Xq^T box (64 batch rows x 128 features)
 * and its two G^T boxes (64 rows x 64 labels, one per warpgroup) arrive by TMA from one thread,
 * counted by a barrier per stage slot, and the weight tile (128 x 128 e4m3) by TMA with a barrier per
 * buffer; the rounded tile leaves by a TMA store. Boxes land with the 128-byte swizzle. The G^T box is
 * the wgmma's A operand as it lies (MN-major, read transposed: no ldmatrix), and the next tile's first
 * two stages load while this tile is rounded. The same products in the same order: the weights are bit
 * for bit those of the cp.async form. */
#define V_GT_BYTES (V_BK * 128)                  /* one warpgroup's G^T box: 64 rows of 64 labels */
#define V_TSTAGE (V_X_BYTES + 2 * V_GT_BYTES)
#define V_TW_BYTES (U_TL * 128)
static constexpr size_t v_tma_smem_bytes() {
  return 1024 + 2 * V_TSTAGE + 2 * V_TW_BYTES + 2 * 4 * U_TL + 4 * sizeof(uint64_t);
}
static_assert(V_TSTAGE % 1024 == 0 && V_TW_BYTES % 1024 == 0, "swizzle atoms stay 1 KB aligned");

/* BM: 0, or ELMO_CLS_BENCH_* bits (benchmarks only: 1 constant SR bits, 2 no rounding, 4 no product). */
template <int BM, bool TMA>
static __global__ void __launch_bounds__(U_THREADS, 2) update_wg_kernel(update_args a, const __grid_constant__ CUtensorMap tmX,
                                                                        const __grid_constant__ CUtensorMap tmG,
                                                                        const __grid_constant__ CUtensorMap tmW) {
#if defined(ELMO_HAVE_WGMMA)
  extern __shared__ __align__(16) uint8_t smem_raw[];
  uint8_t *smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  constexpr size_t STAGE = TMA ? V_TSTAGE : V_STAGE, WB = TMA ? V_TW_BYTES : u_w_bytes(1);
  constexpr int LDW = TMA ? W_SWZ : U_LDW(1);
  uint8_t *wbuf = smem + 2 * STAGE;
  int32_t *slots = (int32_t *)(wbuf + 2 * WB);
  uint64_t *sbar = (uint64_t *)(slots + 2 * U_TL), *wbar = sbar + 2; /* TMA: stage slots, weight buffers */
  const int nk = (int)((a.B + V_BK - 1) / V_BK);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wgi = warp >> 2;
  const int mw = 64 * wgi + 16 * (warp & 3);        /* the warp's first label in the tile */
  const unsigned stage_tx = V_X_BYTES + 2 * V_GT_BYTES;
  unsigned sph = 0;                                 /* TMA: parity to wait for, bit s for stage slot s */
  /* TMA: stage kt of the tile (labels j0, features k0) into slot st, issued by thread 0 */
  auto tma_stage = [&](int kt, int64_t j0, int64_t k0, int slot) {
    uint8_t *st = smem + slot * STAGE;
    mbar_expect_tx(&sbar[slot], stage_tx);
    tma_load_2d(st, &tmX, 64 * kt, (int)k0, &sbar[slot]);
    tma_load_2d(st + V_X_BYTES, &tmG, (int)j0, 64 * kt, &sbar[slot]);
    tma_load_2d(st + V_X_BYTES + V_GT_BYTES, &tmG, (int)j0 + 64, 64 * kt, &sbar[slot]);
  };
  auto tma_weights = [&](int64_t j0, int64_t k0, int b) {
    mbar_expect_tx(&wbar[b], V_TW_BYTES);
    tma_load_2d(wbuf + b * WB, &tmW, (int)k0, (int)j0, &wbar[b]);
  };
  int64_t tile = blockIdx.x;
  /* dyn: the block's next tile in ntile[(it + 1) % 2], asked for by thread 0 as tile it starts, stored
   * after its products (the atomic's answer has come by then), read by all after the barrier there */
  __shared__ int64_t ntile[2];
  const bool dyn = TMA && a.dyn;
  bool dry = false, waited = false;
  int64_t traw = 0;
  if (TMA) {
    if (threadIdx.x == 0) {
      for (int i = 0; i < 4; i++) mbar_init(&sbar[i], 1);
      mbar_init_fence();
      if (dyn) { /* the first tile (the later ones are asked for a tile ahead, below) */
        const int64_t t0 = atomicAdd(elmo_tile_ctr, 1u);
        dry = t0 >= a.tiles;
        ntile[0] = dry ? a.tiles : t0;
      }
    }
    __syncthreads();
    if (dyn) tile = ntile[0];
  }
  if (tile < a.tiles) {
    int64_t j0, k0;
    tile_at(a, tile, j0, k0);
    if (TMA) {
      if (threadIdx.x == 0) {
        tma_weights(j0, k0, 0);
        tma_stage(0, j0, k0, 0);
        if (nk > 1) tma_stage(1, j0, k0, 1);
      }
      tile_slots<U_TL>(a, j0, slots);
    } else {
      load_w_tile<1, U_TL>(a, j0, k0, wbuf, slots);
      v_load_stage(a, 0, j0, k0, smem);
    }
  }
  if (!TMA) cp_async_commit();
  for (int buf = 0, it = 0; tile < a.tiles; buf ^= 1, it++) {
    int64_t j0, k0;
    tile_at(a, tile, j0, k0);
    if (dyn && threadIdx.x == 0) traw = dry ? a.tiles : (int64_t)atomicAdd(elmo_tile_ctr, 1u);
    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; i++) acc[i] = 0.0f;
    for (int kt = 0; kt < nk; kt++) {
      wg_wait<0>();                                 /* wgmma kt - 1: its stage slot is free */
      wg_pin<64>(acc);
      if (!TMA) {
        cp_async_wait<0>();                         /* stage kt (and at kt = 0 the tile's weights) */
        wg_fence_proxy();
      }
      __syncthreads();                              /* (TMA: and the tile's slots) */
      if (TMA) {
        if (kt >= 1 && kt + 1 < nk && threadIdx.x == 0) tma_stage(kt + 1, j0, k0, (kt + 1) & 1); /* 0, 1: early */
        mbar_wait(&sbar[kt & 1], (sph >> (kt & 1)) & 1u);
        sph ^= 1u << (kt & 1);
      } else {
        if (kt + 1 < nk) v_load_stage(a, kt + 1, j0, k0, smem + ((kt + 1) & 1) * STAGE);
        cp_async_commit();
      }
      const uint8_t *st = smem + (kt & 1) * STAGE;
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < ((BM & ELMO_CLS_BENCH_NO_PRODUCT) ? 0 : V_BK); kk += 16) {
        if (TMA) { /* A = G^T straight from this warpgroup's box (labels 64 wgi .., rows of 128 bytes), transposed */
          wgmma_m64n128k16<1>(acc, wg_desc(st + V_X_BYTES + wgi * V_GT_BYTES + kk * 128), wg_desc(st + kk * 2));
        } else {                                    /* A = G^T stored [k = b][m = label]: transposed loads */
          uint32_t af[4];
          const int row = kk + (lane & 7) + ((lane >> 4) & 1) * 8, col = mw + ((lane >> 3) & 1) * 8;
          ldsm_x4_t(af, (const uint16_t *)(st + V_X_BYTES) + row * U_LDG + col);
          wgmma_rs_m64n128k16(acc, af, wg_desc(st + kk * 2));
        }
      }
      wg_commit();
    }
    wg_wait<0>();
    wg_pin<64>(acc);
    if (!TMA) cp_async_wait<0>();
    if (dyn && threadIdx.x == 0) {
      dry = traw >= a.tiles;
      ntile[(it + 1) & 1] = dry ? a.tiles : traw;
    }
    __syncthreads();                                /* stages free (TMA: this tile's weights waited below) */
    const int64_t nt = dyn ? ntile[(it + 1) & 1] : tile + gridDim.x;
    if (nt < a.tiles) {
      int64_t nj0, nk0;
      tile_at(a, nt, nj0, nk0);
      if (TMA) {
        if (threadIdx.x == 0) {
          bulk_wait_read0();                        /* the store of the tile before has read buffer buf ^ 1 */
          tma_weights(nj0, nk0, buf ^ 1);
          tma_stage(0, nj0, nk0, 0);
          if (nk > 1) tma_stage(1, nj0, nk0, 1); /* both slots are free here */
        }
        tile_slots<U_TL>(a, nj0, slots + (buf ^ 1) * U_TL);
      } else {
        load_w_tile<1, U_TL>(a, nj0, nk0, wbuf + (buf ^ 1) * WB, slots + (buf ^ 1) * U_TL);
        v_load_stage(a, 0, nj0, nk0, smem);
      }
    }
    if (TMA) mbar_wait(&wbar[buf], (unsigned)(it >> 1) & 1u);
    else cp_async_commit();
    uint8_t *sw = wbuf + buf * WB;
    if (TMA) pdl_sync(waited); /* the weights: the kernel ahead (dX) reads them */
    if (!(BM & ELMO_CLS_BENCH_NO_ROUND)) {
      constexpr bool CB = (BM & ELMO_CLS_BENCH_CONST_BITS) != 0;
      if (a.decay == 1.0f) epilogue_wg_rows<CB, LDW, false>(a, j0, k0, acc, sw, slots + buf * U_TL, mw);
      else epilogue_wg_rows<CB, LDW, true>(a, j0, k0, acc, sw, slots + buf * U_TL, mw);
    }
    if (TMA) wg_fence_proxy();                      /* this thread's weights, visible to the TMA store */
    __syncthreads();
    if (!TMA) store_w_tile<1, U_TL>(a, j0, k0, sw);
    else if (threadIdx.x == 0) {
      tma_store_2d(&tmW, (int)k0, (int)j0, sw);
      bulk_commit();
    }
    tile = nt;
  }
  if (TMA && threadIdx.x == 0) bulk_wait0();
  if (TMA) pdl_sync(waited);
  if (dyn && threadIdx.x == 0) tile_done(elmo_tile_ctr, gridDim.x);
#endif
}

/* ---- batches of up to 128 rows: Xq resident, 64-label tiles, three blocks per SM ------------ */

/* Block (feature tile f, q) keeps Xq[:, f] in shared memory and walks label tiles q, q + Q, ...
 * (Q blocks per feature tile), so Xq is read once per block and G^T once per label tile and
 * feature tile. Per tile the whole batch (K <= 128) is one cp.async group; the next tile's G^T and
 * weights load while this tile is rounded. 8 warps as 2 (labels) x 4 (features) of 32 x 32. */
#define R_TL 64                  /* labels per tile */
#define R_BMAX 128               /* largest batch (rows of Xq kept in shared memory) */
#define R_LDG (R_TL + 8)         /* bf16 per row of the G^T tile [b][label] */
#define R_X_BYTES (R_BMAX * U_LDX * 2)
#define R_G_BYTES (R_BMAX * R_LDG * 2)

/* Bytes per row of the weight tile: as U_LDW, and 320 for bf16 (16-byte reads conflict-free; one
 * buffer here, so it fits). */
#define R_LDW(es) ((es) == 2 ? 320 : U_LDW(es))
static constexpr __host__ __device__ size_t r_w_bytes(int es) { return (size_t)R_TL * R_LDW(es); }
/* Weight tile buffers: two for e4m3 (the next tile's weights load during this tile's rounding);
 * one for bf16 (loaded after this tile's store, during the next tile's mma), so that three
 * blocks fit an SM. */
static constexpr __host__ __device__ int r_w_bufs(int es) { return es == 1 ? 2 : 1; }
static constexpr size_t r_smem_bytes(int es) {
  return R_X_BYTES + R_G_BYTES + r_w_bufs(es) * (r_w_bytes(es) + 4 * R_TL);
}
static constexpr __host__ __device__ int r_blocks_per_sm(int dt) { return dt == ELMO_FP8 || dt == ELMO_BF16 ? 3 : 1; }

/* Xq[0:bp, k0:k0+128] into sx (the permuted copy, see xperm; rows >= B and features >= d as zeros). */
static __device__ __forceinline__ void r_load_x(const update_args &a, int bp, int64_t k0, uint16_t *sx) {
  for (int i = threadIdx.x; i < bp * (U_TD / 8); i += U_THREADS) {
    const int r = i / (U_TD / 8), c = (i % (U_TD / 8)) * 8;
    const bool v = r < a.B && k0 + c < a.dp;
    cp_async16(sx + r * U_LDX + c, v ? a.Xq16 + r * a.dp + k0 + c : a.Xq16, v);
  }
}

/* Label tile j0..j0+64: G^T rows 0..bp into sg (no commit). */
template <typename GT>
static __device__ __forceinline__ void r_load_g(const update_args &a, int64_t j0, int bp, uint16_t *sg) {
  for (int i = threadIdx.x; i < bp * (R_TL / 8); i += U_THREADS) {
    const int r = i / (R_TL / 8), c = (i % (R_TL / 8)) * 8;
    g_chunk(a, (const GT *)a.G, r, j0 + c, sg + r * R_LDG + c);
  }
}

/* This thread's share of a label tile's copies, fixed for the block's feature tile: only the
 * label offset j0 changes from tile to tile, so the per-copy 64-bit index arithmetic (some 28
 * instructions per 16 bytes, ~4 a weight) becomes a pointer step. Weight pieces: rows r0 + RPS q
 * of the tile, bytes 16 c of the row; G^T pieces: batch rows g_r0 + 32 q, labels g_c.. + 7. */
template <int ES> struct r_cursor {
  static constexpr int CPR = U_TD * ES / 16, RPS = U_THREADS / CPR, NQ = R_TL / RPS;
  const uint8_t *w;   /* W byte address of piece q = 0 at j0 = 0 */
  int64_t wstep;      /* bytes between pieces q and q + 1 (RPS rows) */
  int64_t nl;         /* rows j < nl exist in W (j < n and l0 + j < L) */
  int r0, soff;       /* first row; shared-memory byte offset of piece q = 0 (rows of LDW bytes) */
  bool kv;            /* the piece's features lie inside d */
  const uint16_t *g;  /* G (bf16 codes) at batch row g_r0, label g_c, j0 = 0 */
  int g_r0, g_c;
  __device__ __forceinline__ void init(const update_args &a, int64_t k0, int ldw) {
    const int c = threadIdx.x % CPR;
    r0 = threadIdx.x / CPR;
    kv = k0 + c * (16 / ES) < a.d;
    w = (const uint8_t *)a.W + ((a.l0 + r0) * a.d + k0 + (kv ? c * (16 / ES) : 0)) * ES;
    wstep = (int64_t)RPS * a.d * ES;
    nl = a.L - a.l0 < a.n ? a.L - a.l0 : a.n;
    soff = r0 * ldw + c * 16;
    g_r0 = threadIdx.x / (R_TL / 8);
    g_c = (threadIdx.x % (R_TL / 8)) * 8;
    g = (const uint16_t *)a.G + (int64_t)g_r0 * a.n + g_c;
  }
};

/* Label tile j0 (weights, head slots, G^T rows < bp) into shared memory (no commit). */
template <int ES, int LDW>
static __device__ __forceinline__ void r_load_tile_w(const update_args &a, const r_cursor<ES> &cu, int64_t j0, uint8_t *sw,
                                                     int32_t *sslot) {
  const uint8_t *p = cu.w + j0 * a.d * ES;
#pragma unroll
  for (int q = 0; q < r_cursor<ES>::NQ; q++, p += cu.wstep) {
    const bool v = cu.kv && j0 + cu.r0 + r_cursor<ES>::RPS * q < a.n;
    cp_async16(sw + cu.soff + q * r_cursor<ES>::RPS * LDW, v ? p : (const uint8_t *)a.W, v);
  }
  tile_slots<R_TL>(a, j0, sslot);
}
template <int ES>
static __device__ __forceinline__ void r_load_tile_g(const update_args &a, const r_cursor<ES> &cu, int64_t j0, int bp,
                                                     uint16_t *sg) {
  const uint16_t *p = cu.g + j0;
  const int64_t step = 32 * a.n;
  const bool jv = j0 + cu.g_c < a.n;
#pragma unroll
  for (int q = 0; q < R_BMAX / 32; q++, p += step) {
    const int r = cu.g_r0 + 32 * q;
    if (r >= bp) break;
    const bool v = jv && r < (int)a.B;
    cp_async16(sg + r * R_LDG + cu.g_c, v ? p : (const uint16_t *)a.G, v);
  }
}
/* The rounded tile back to W (rows that exist only). */
template <int ES, int LDW>
static __device__ __forceinline__ void r_store_tile_w(const update_args &a, const r_cursor<ES> &cu, int64_t j0,
                                                      const uint8_t *sw) {
  uint8_t *p = (uint8_t *)cu.w + j0 * a.d * ES;
#pragma unroll
  for (int q = 0; q < r_cursor<ES>::NQ; q++, p += cu.wstep)
    if (cu.kv && j0 + cu.r0 + r_cursor<ES>::RPS * q < cu.nl)
      *(uint4 *)p = *(const uint4 *)(sw + cu.soff + q * r_cursor<ES>::RPS * LDW);
}

/* acc = G^T Xq for the tile, K = bp batch rows; G^T in sg as padded rows of R_LDG bf16 or, SWZ, as
 * update_tma_kernel's swizzled box (rows of 64 labels in 128 bytes, chunk c of row b at c ^ (b % 8)). */
template <bool SWZ = false>
static __device__ __forceinline__ void r_mma(float acc[2][4][4], const void *sg, const uint16_t *sx, int bp) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, m0 = (warp >> 2) * 32, n0 = (warp & 3) * 32;
  zero_acc<2>(acc);
#pragma unroll 2
  for (int kk = 0; kk < bp; kk += 16) {
    uint32_t af[2][4], bf[4][2];
    const int row = kk + (lane & 7) + ((lane >> 4) & 1) * 8;
#pragma unroll
    for (int i = 0; i < 2; i++) {
      const int col = m0 + 16 * i + ((lane >> 3) & 1) * 8;
      ldsm_x4_t(af[i], SWZ ? (const uint8_t *)sg + row * 128 + ((((col >> 3) ^ row) & 7) << 4)
                           : (const uint8_t *)sg + (row * R_LDG + col) * 2);
    }
    load_b_frags(bf, sx, U_LDX, kk, n0, lane);
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
      for (int j = 0; j < 4; j++) mma_bf16(acc[i][j], af[i], bf[j][0], bf[j][1]);
  }
}

/* grid: d_tiles x Q blocks; block i: feature tile i % d_tiles, label tiles i / d_tiles + Q k. */
template <typename GT, int DT, bool CONST_BITS>
static __global__ void __launch_bounds__(U_THREADS, r_blocks_per_sm(DT)) update_res_kernel(update_args a) {
  constexpr int ES = wcodec<DT>::es, NB = r_w_bufs(ES);
  extern __shared__ __align__(16) uint8_t smem[];
  uint16_t *sx = (uint16_t *)smem, *sg = (uint16_t *)(smem + R_X_BYTES);
  uint8_t *wbuf = smem + R_X_BYTES + R_G_BYTES;
  int32_t *slots = (int32_t *)(wbuf + NB * r_w_bytes(ES));
  const int bp = (int)((a.B + 15) / 16 * 16);
  const int64_t k0 = (int64_t)(blockIdx.x % a.d_tiles) * U_TD, qs = gridDim.x / a.d_tiles;
  const int64_t ltiles = (a.n + R_TL - 1) / R_TL;
  int64_t lt = blockIdx.x / a.d_tiles;
  if (lt >= ltiles) return;
  constexpr bool G16 = sizeof(GT) == 2; /* bf16 G: the cursor's copies; FP32 G (fp32 weights): r_load_g */
  r_cursor<ES> cu;
  cu.init(a, k0, R_LDW(ES));
  r_load_x(a, bp, k0, sx); /* joins the first tile's group */
  if (G16) r_load_tile_g<ES>(a, cu, lt * R_TL, bp, sg);
  else r_load_g<GT>(a, lt * R_TL, bp, sg);
  r_load_tile_w<ES, R_LDW(ES)>(a, cu, lt * R_TL, wbuf, slots);
  cp_async_commit();
  for (int buf = 0; lt < ltiles; lt += qs, buf ^= NB - 1) {
    const bool more = lt + qs < ltiles;
    cp_async_wait<0>();
    __syncthreads(); /* this tile's G^T and weights (and Xq) are here */
    float acc[2][4][4];
    r_mma(acc, sg, sx, bp);
    __syncthreads(); /* G^T read by all warps */
    if (more) {
      if (G16) r_load_tile_g<ES>(a, cu, (lt + qs) * R_TL, bp, sg);
      else r_load_g<GT>(a, (lt + qs) * R_TL, bp, sg);
      if (NB == 2)
        r_load_tile_w<ES, R_LDW(ES)>(a, cu, (lt + qs) * R_TL, wbuf + (buf ^ 1) * r_w_bytes(ES),
                                     slots + (buf ^ 1) * R_TL);
      cp_async_commit();
    }
    uint8_t *sw = wbuf + buf * r_w_bytes(ES);
    epilogue8<DT, CONST_BITS, 2, R_LDW(ES)>(a, lt * R_TL, k0, acc, sw, slots + buf * R_TL);
    __syncthreads();
    r_store_tile_w<ES, R_LDW(ES)>(a, cu, lt * R_TL, sw);
    if (NB == 1 && more) {
      __syncthreads(); /* the tile is stored: its buffer takes the next tile's weights */
      r_load_tile_w<ES, R_LDW(ES)>(a, cu, (lt + qs) * R_TL, wbuf, slots);
      cp_async_commit();
    }
  }
}

/* ---- batches of up to 128 rows on sm_90a: update_res_kernel with its tiles moved by TMA -------- */

/* The same tiles, warps, product and epilogue as update_res_kernel (the same weights bit for bit),
 * but each label tile's G^T (bp rows x 64 labels) and weights (64 labels x 128 features) arrive by two
 * TMA box copies that one thread issues, counted by a shared-memory barrier per weight buffer, and the
 * rounded tile leaves by one TMA store: the per-thread copy loops, their bounds checks and address
 * arithmetic (some 150 instructions a thread and tile, ~5 a weight, SASS of update_res_kernel) go.
 * The boxes land with the 128-byte swizzle (conflict-free ldmatrix and 8-byte epilogue reads without
 * padding); rows past B, labels past the chunk and features past d arrive as zeros and are not stored. */
#define T_G_BYTES (R_BMAX * 128)      /* G^T box: bp rows of 64 bf16 */
#define T_W_BYTES (R_TL * 128)        /* weight box: 64 labels of 128 e4m3 */
static constexpr size_t t_smem_bytes() {
  return 1024 + T_G_BYTES + 2 * T_W_BYTES + R_X_BYTES + 2 * 4 * R_TL + 2 * sizeof(uint64_t);
}

/* grid: d_tiles x Q blocks, as update_res_kernel. tmG: G [B rows, n labels] bf16, box 64 x bp;
 * tmW: the chunk's weights [rows that exist, d] e4m3, box 128 x 64. */
template <bool CONST_BITS>
static __global__ void __launch_bounds__(U_THREADS, 3) update_tma_kernel(update_args a, const __grid_constant__ CUtensorMap tmG,
                                                                         const __grid_constant__ CUtensorMap tmW) {
#if defined(ELMO_HAVE_WGMMA)
  extern __shared__ __align__(16) uint8_t smem_raw[];
  uint8_t *smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  uint8_t *sg = smem, *wbuf = smem + T_G_BYTES;                       /* 1024-byte aligned boxes */
  uint16_t *sx = (uint16_t *)(wbuf + 2 * T_W_BYTES);
  int32_t *slots = (int32_t *)((uint8_t *)sx + R_X_BYTES);            /* [2][R_TL] */
  uint64_t *bar = (uint64_t *)(slots + 2 * R_TL);                     /* [2]: one per weight buffer */
  const int bp = (int)((a.B + 15) / 16 * 16);
  const int64_t k0 = (int64_t)(blockIdx.x % a.d_tiles) * U_TD, qs = gridDim.x / a.d_tiles;
  const int64_t ltiles = (a.n + R_TL - 1) / R_TL;
  int64_t lt = blockIdx.x / a.d_tiles;
  if (lt >= ltiles) return;
  const unsigned tx = (unsigned)(bp * 128 + T_W_BYTES); /* whole boxes, zero-filled parts included */
  if (threadIdx.x == 0) {
    mbar_init(&bar[0], 1);
    mbar_init(&bar[1], 1);
    mbar_init_fence();
  }
  r_load_x(a, bp, k0, sx);
  cp_async_commit();
  tile_slots<R_TL>(a, lt * R_TL, slots);
  __syncthreads(); /* barriers initialised */
  if (threadIdx.x == 0) {
    mbar_expect_tx(&bar[0], tx);
    tma_load_2d(sg, &tmG, (int)(lt * R_TL), 0, &bar[0]);
    tma_load_2d(wbuf, &tmW, (int)k0, (int)(lt * R_TL), &bar[0]);
  }
  cp_async_wait<0>();
  __syncthreads(); /* Xq and the first tile's slots */
  for (int it = 0; lt < ltiles; lt += qs, it++) {
    const int buf = it & 1;
    mbar_wait(&bar[buf], (unsigned)(it >> 1) & 1u); /* this tile's G^T and weights */
    float acc[2][4][4];
    r_mma<true>(acc, sg, sx, bp);
    __syncthreads(); /* G^T read by all warps */
    if (lt + qs < ltiles) {
      const int64_t j1 = (lt + qs) * R_TL;
      if (threadIdx.x == 0) {
        bulk_wait_read0(); /* the store of the tile before has read the other buffer */
        mbar_expect_tx(&bar[buf ^ 1], tx);
        tma_load_2d(sg, &tmG, (int)j1, 0, &bar[buf ^ 1]);
        tma_load_2d(wbuf + (buf ^ 1) * T_W_BYTES, &tmW, (int)k0, (int)j1, &bar[buf ^ 1]);
      }
      tile_slots<R_TL>(a, j1, slots + (buf ^ 1) * R_TL);
    }
    uint8_t *sw = wbuf + buf * T_W_BYTES;
    epilogue8<ELMO_FP8, CONST_BITS, 2, W_SWZ>(a, lt * R_TL, k0, acc, sw, slots + buf * R_TL);
    wg_fence_proxy(); /* this thread's shared-memory writes, visible to the TMA store */
    __syncthreads();
    if (threadIdx.x == 0) {
      tma_store_2d(&tmW, (int)k0, (int)(lt * R_TL), sw);
      bulk_commit();
    }
  }
  if (threadIdx.x == 0) bulk_wait0();
#endif
}

typedef CUresult (*tmap_encode_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                                   const cuuint64_t *, const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave,
                                   CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

/* cuTensorMapEncodeTiled from the driver, through the runtime (no link against libcuda); NULL when the
 * driver has none. Asked once. */
static tmap_encode_fn tmap_encoder(void) {
  static int asked = 0;
  static tmap_encode_fn fn = NULL;
  if (!asked) {
    asked = 1;
    void *p = NULL;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) == cudaSuccess &&
        q == cudaDriverEntryPointSuccess)
      fn = (tmap_encode_fn)p;
    else
      cudaGetLastError();
  }
  return fn;
}

/* A 2-D map of a dense row-major rows x cols matrix (es bytes an element) with box box_c x box_r, 128-byte
 * swizzle, zeros outside; 0 when the driver refuses it. */
static int tmap_2d(CUtensorMap *m, CUtensorMapDataType type, int es, const void *base, int64_t cols, int64_t rows,
                   int box_c, int box_r) {
  tmap_encode_fn enc = tmap_encoder();
  if (!enc || rows < 1 || cols < 1) return 0;
  const cuuint64_t dim[2] = {(cuuint64_t)cols, (cuuint64_t)rows}, stride[1] = {(cuuint64_t)(cols * es)};
  const cuuint32_t box[2] = {(cuuint32_t)box_c, (cuuint32_t)box_r}, estr[2] = {1, 1};
  return enc(m, type, 2, (void *)base, dim, stride, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
             CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

extern "C" int elmo_cuda_cls_update_tma(void) { return wgmma_enabled("ELMO_UPDATE_TMA") && tmap_encoder() != NULL; }

/* update_tma_kernel for a.B <= R_BMAX, e4m3 weights and bf16 G; 0 (nothing launched) when the maps
 * cannot be made. */
template <bool CONST_BITS>
static int launch_update_tma(const update_args &a, int64_t blocks, cudaStream_t s) {
  const int64_t nl = a.L - a.l0 < a.n ? a.L - a.l0 : a.n; /* rows of the chunk that exist */
  const int bp = (int)((a.B + 15) / 16 * 16);
  CUtensorMap mg, mw;
  if (!tmap_2d(&mg, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, a.G, a.n, a.B, R_TL, bp) ||
      !tmap_2d(&mw, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, (const uint8_t *)a.W + a.l0 * a.d, a.d, nl, U_TD, R_TL))
    return 0;
  static unsigned attr = 0;
  if (elmo_cuda_first_on_device(&attr))
    ELMO_CUDA_CHECK(cudaFuncSetAttribute(update_tma_kernel<CONST_BITS>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)t_smem_bytes()));
  update_tma_kernel<CONST_BITS><<<(unsigned)blocks, U_THREADS, t_smem_bytes(), s>>>(a, mg, mw);
  ELMO_LAUNCH_CHECK();
  return 1;
}

static int sm_count(void) {
  static int sms = 0;
  if (!sms) {
    int dev = 0;
    ELMO_CUDA_CHECK(cudaGetDevice(&dev));
    ELMO_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  }
  return sms;
}

/* update_wg_kernel over the chunk: by TMA when the shapes allow, else its cp.async form (BM as the kernel's). */
template <int BM>
static void launch_update_wg(update_args a, cudaStream_t s) {
  static unsigned wg_attr = 0;
  if (elmo_cuda_first_on_device(&wg_attr)) {
    ELMO_CUDA_CHECK(cudaFuncSetAttribute(update_wg_kernel<BM, false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)v_smem_bytes()));
    ELMO_CUDA_CHECK(cudaFuncSetAttribute(update_wg_kernel<BM, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)v_tma_smem_bytes()));
  }
  const int64_t blocks = a.tiles < 2 * sm_count() ? a.tiles : 2 * sm_count();
  const int64_t nl = a.L - a.l0 < a.n ? a.L - a.l0 : a.n; /* rows of the chunk that exist */
  CUtensorMap mx, mg, mw;
  memset(&mx, 0, sizeof mx);
  memset(&mg, 0, sizeof mg);
  memset(&mw, 0, sizeof mw);
  if (a.n % 8 == 0 && elmo_cuda_cls_update_tma() &&
      tmap_2d(&mx, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, a.Xt, a.ldt, a.dp, V_BK, U_TD) &&
      tmap_2d(&mg, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, a.G, a.n, a.B, 64, V_BK) &&
      tmap_2d(&mw, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, (const uint8_t *)a.W + a.l0 * a.d, a.d, nl, U_TD, U_TL)) {
    a.dyn = cls_dyn_on();
    launch_k(a.pdl != 0, update_wg_kernel<BM, true>, dim3((unsigned)blocks), U_THREADS, v_tma_smem_bytes(), s, a, mx,
             mg, mw);
  } else {
    a.dyn = 0;
    update_wg_kernel<BM, false><<<(unsigned)blocks, U_THREADS, v_smem_bytes(), s>>>(a, mx, mg, mw);
  }
}

/* e4m3 weights with bf16 G on compute capability 9.0 (a.Xt set): update_wg_kernel for every batch
 * (H100, 2026-11-27, with TMA: 2.81M x B 128 update 4.11 -> 3.69 / 3.73 ms against update_tma_kernel;
 * 1.31M x B 512 2.72 ms). Otherwise batches up to R_BMAX rows take update_res_kernel / update_tma_kernel
 * (three blocks per SM for e4m3), larger ones update_mma_kernel (K streamed in stages). */
template <typename GT, int DT, bool CONST_BITS>
static void launch_update(const update_args &a, cudaStream_t s) {
  const size_t smem_res = r_smem_bytes(wcodec<DT>::es), smem_mma = update_smem_bytes(DT, wcodec<DT>::es);
  static unsigned attr_set = 0; /* one instantiation per (GT, DT, CONST_BITS) */
  if (elmo_cuda_first_on_device(&attr_set)) {
    ELMO_CUDA_CHECK(cudaFuncSetAttribute(update_res_kernel<GT, DT, CONST_BITS>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_res));
    ELMO_CUDA_CHECK(cudaFuncSetAttribute(update_mma_kernel<GT, DT, CONST_BITS>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_mma));
  }
  if (a.B <= R_BMAX && !(DT == ELMO_FP8 && sizeof(GT) == 2 && a.Xt)) {
    const int64_t ltiles = (a.n + R_TL - 1) / R_TL, per_tile = r_blocks_per_sm(DT) * sm_count() / a.d_tiles;
    const int64_t q = per_tile < 1 ? 1 : per_tile < ltiles ? per_tile : ltiles;
    if (DT == ELMO_FP8 && sizeof(GT) == 2 && a.n % 8 == 0 && elmo_cuda_cls_update_tma() &&
        launch_update_tma<CONST_BITS>(a, q * a.d_tiles, s))
      return;
    update_res_kernel<GT, DT, CONST_BITS><<<(unsigned)(q * a.d_tiles), U_THREADS, smem_res, s>>>(a);
  } else if (DT == ELMO_FP8 && sizeof(GT) == 2 && a.Xt) {
    if (a.bench & ELMO_CLS_BENCH_NO_ROUND) launch_update_wg<ELMO_CLS_BENCH_NO_ROUND>(a, s);
    else if (a.bench & ELMO_CLS_BENCH_NO_PRODUCT) launch_update_wg<ELMO_CLS_BENCH_NO_PRODUCT>(a, s);
    else launch_update_wg<CONST_BITS ? ELMO_CLS_BENCH_CONST_BITS : 0>(a, s);
  } else {
    const int64_t per_sm = DT == ELMO_F32 ? 1 : 2;
    const int64_t blocks = a.tiles < per_sm * sm_count() ? a.tiles : per_sm * sm_count();
    update_mma_kernel<GT, DT, CONST_BITS><<<(unsigned)blocks, U_THREADS, smem_mma, s>>>(a);
  }
  ELMO_LAUNCH_CHECK();
}

extern "C" void elmo_cuda_cls_update_mma(elmo_cuda_cls *c, int64_t B, int64_t l0, int64_t n,
                                         const elmo_cls_hyper *h, cudaStream_t s) {
  if (n <= 0) return;
  update_args a;
  a.W = c->W;
  a.d = c->d;
  a.L = c->L;
  a.l0 = l0;
  a.lbase = c->label_base;
  a.n = n;
  a.B = B;
  a.kahan = c->kahan;
  a.head_slot = c->head_slot;
  a.G = c->z;
  a.Xq16 = c->Xp16;
  a.dp = xperm_ld(c->d);
  /* the permuted copy of Xq's rows < B (a few hundred KB) and its transpose: once per cast, not per chunk */
  const bool prep = c->xp_rows != B;
  if (prep) permute_x(c, B, s);
  a.Xt = NULL;
  a.ldt = 0;
  if (c->dtype == ELMO_FP8 && c->Xt16 && elmo_cuda_cls_update_wgmma()) { /* update_wg_kernel, any batch */
    a.Xt = c->Xt16;
    a.ldt = elmo_cuda_cls_xt_cols(c->B_cap);
    const int64_t n = a.dp * a.ldt, blocks = (n + 255) / 256 < 1024 ? (n + 255) / 256 : 1024;
    if (prep) transpose_x_kernel<<<(unsigned)blocks, 256, 0, s>>>(c->Xp16, c->Xt16, B, a.dp, a.ldt);
    ELMO_LAUNCH_CHECK();
  }
  c->xp_rows = B;
  a.pdl = c->pdl_step && !prep; /* not right behind the transpose, whose output it reads before its wait */
  a.dyn = 0;
  const elmo_cls_coef cf = elmo_cls_coefs(h);
  a.nlr = cf.nlr;
  a.decay = cf.decay;
  a.ndecay = cf.ndecay;
  a.step_lo = (uint32_t)h->step;
  philox_round_keys(h->seed, (uint64_t)h->step, a.rk);
  a.d_tiles = (int)((c->d + U_TD - 1) / U_TD);
  a.tiles = (n + U_TL - 1) / U_TL * a.d_tiles;
  if (a.tiles >= ((int64_t)1 << 32))
    elmo_cuda_die("classifier chunk of more than 2^32 update tiles", "elmo_cuda_cls_update", __FILE__, __LINE__);
  a.bench = c->bench_flags;
  const int cb = (c->bench_flags & ELMO_CLS_BENCH_CONST_BITS) != 0;
  switch (c->dtype) {
    case ELMO_FP8:
      if (cb) launch_update<uint16_t, ELMO_FP8, true>(a, s);
      else launch_update<uint16_t, ELMO_FP8, false>(a, s);
      break;
    case ELMO_BF16:
      if (cb) launch_update<uint16_t, ELMO_BF16, true>(a, s);
      else launch_update<uint16_t, ELMO_BF16, false>(a, s);
      break;
    default: launch_update<float, ELMO_F32, false>(a, s); break;
  }
}

/* ==== dX = G W, split over labels ============================================================ */

#define X_TB 128                 /* batch rows per block */
/* Features per block and threads: bf16 weights take 256 features with 16 warps, so that each G
 * tile is read by d / 256 blocks (the bf16 kernel is bound by L2 traffic); e4m3 keeps 128
 * features with 8 warps, two blocks per SM (its bound is the shared-memory widening, and 256
 * features measured slower: 1.95 vs 1.75 ms at 2.81M labels). */
template <int DT> struct xcfg {
  static constexpr int TD = DT == ELMO_FP8 ? 128 : 256, THREADS = DT == ELMO_FP8 ? 256 : 512, WN = TD / 32;
  static constexpr int CTAS = DT == ELMO_FP8 ? 264 : 132, BLOCKS_PER_SM = DT == ELMO_FP8 ? 2 : 1;
};
#define X_TD (xcfg<DT>::TD)
#define X_BK 64                  /* labels per stage */
#define X_NST 3
#define X_THREADS (xcfg<DT>::THREADS)   /* warps: 2 (batch rows, 64 each) x WN (features, 32 each) */
#define XW_M0(w) (((w) / xcfg<DT>::WN) * 64)
#define XW_N0(w) (((w) % xcfg<DT>::WN) * 32)
#define X_LDG (X_BK + 8)         /* bf16 per row of a G stage [b][label] */
#define X_LDW(DT) (xcfg<DT>::TD + 8) /* bf16 per row of a bf16 W tile [label][feature] */
#define X_G_BYTES (X_TB * X_LDG * 2)
#define X_WB_BYTES(DT) (X_BK * X_LDW(DT) * 2)
#define X_W8_BYTES (X_BK * xcfg<ELMO_FP8>::TD)

template <int DT> static constexpr size_t dx_stage_bytes() { return X_G_BYTES + (DT == ELMO_FP8 ? X_W8_BYTES : X_WB_BYTES(DT)); }
template <int DT> static constexpr size_t dx_smem_bytes() {
  return X_NST * dx_stage_bytes<DT>() + (DT == ELMO_FP8 ? X_WB_BYTES(DT) : 0);
}

struct dx_args {
  const void *W;           /* [L_pad, d] e4m3 | bf16 */
  const uint16_t *G;       /* [round16(B), n] bf16 codes */
  float *part;             /* [slices, B_cap, d] */
  int64_t d, n, l0, B, B_cap;
  int64_t per;             /* labels per slice (a multiple of X_BK) */
  int d_tiles, accumulate;
};

extern "C" int64_t elmo_cuda_cls_dx_slices(elmo_dtype dt, int64_t B_cap, int64_t d) {
  const int td = dt == ELMO_FP8 ? xcfg<ELMO_FP8>::TD : xcfg<ELMO_BF16>::TD;
  const int64_t tiles = (B_cap + X_TB - 1) / X_TB * ((d + td - 1) / td);
  const int64_t s = (dt == ELMO_FP8 ? xcfg<ELMO_FP8>::CTAS : xcfg<ELMO_BF16>::CTAS) / tiles;
  return s < 1 ? 1 : s;
}

/* This thread's pieces of a stage, fixed for the block (batch tile b0, feature tile k0): G rows
 * gr + GRS q (labels gc..gc+7 of the stage), weight rows wr + WRS q (bytes 16 wc of the row); a
 * stage at label offset j only adds j (G) or j d ES (W) to the block's base pointers, instead of
 * 64-bit index arithmetic per 16-byte piece. */
template <int DT> struct dx_cursor {
  static constexpr int ES = DT == ELMO_FP8 ? 1 : 2, CPR = X_TD * ES / 16, LDB = DT == ELMO_FP8 ? X_TD : X_LDW(DT) * 2;
  static constexpr int GPR = X_BK / 8, GRS = X_THREADS / GPR, GQ = X_TB / GRS, WRS = X_THREADS / CPR, WQ = X_BK / WRS;
  const uint16_t *g;      /* G at (row b0 + gr, label gc) of label offset 0 */
  const uint8_t *w;       /* W at (row l0 + wr, feature k0 + 16 wc / ES) of label offset 0 */
  int gr, gc, wr, wc;
  uint32_t gv;            /* bit q: G row gr + GRS q < B */
  bool kv;                /* the weight piece's features lie inside d */
  __device__ __forceinline__ void init(const dx_args &a, int64_t b0, int64_t k0) {
    gr = threadIdx.x / GPR;
    gc = (threadIdx.x % GPR) * 8;
    wr = threadIdx.x / CPR;
    wc = threadIdx.x % CPR;
    gv = 0;
#pragma unroll
    for (int q = 0; q < GQ; q++) gv |= b0 + gr + GRS * q < a.B ? 1u << q : 0u;
    kv = k0 + wc * (16 / ES) < a.d;
    g = a.G + (b0 + gr) * a.n + gc;
    w = (const uint8_t *)a.W + ((a.l0 + wr) * a.d + k0 + (kv ? wc * (16 / ES) : 0)) * ES;
  }
};

/* Labels j..j+X_BK (below jend) of G rows b0.. and W rows l0+j.. (features k0..) into a stage. */
template <int DT>
static __device__ __forceinline__ void x_load_stage(const dx_args &a, const dx_cursor<DT> &cu, int64_t j, int64_t jend,
                                                    uint16_t *sg, uint8_t *sw) {
  using CU = dx_cursor<DT>;
  const uint16_t *g = cu.g + j;
  const bool jg = j + cu.gc < jend;
#pragma unroll
  for (int q = 0; q < CU::GQ; q++) {
    const bool v = jg && ((cu.gv >> q) & 1u);
    cp_async16(sg + (cu.gr + CU::GRS * q) * X_LDG + cu.gc, v ? g + (int64_t)CU::GRS * q * a.n : a.G, v);
  }
  const uint8_t *w = cu.w + j * a.d * CU::ES;
  const int64_t wstep = (int64_t)CU::WRS * a.d * CU::ES;
#pragma unroll
  for (int q = 0; q < CU::WQ; q++) {
    const bool v = cu.kv && j + cu.wr + CU::WRS * q < jend;
    cp_async16(sw + (cu.wr + CU::WRS * q) * CU::LDB + cu.wc * 16, v ? w + q * wstep : (const uint8_t *)a.W, v);
  }
}

/* The e4m3 tile [X_BK][X_TD] widened to bf16 [X_BK][X_LDW]. */
template <int DT>
static __device__ __forceinline__ void x_widen(const uint8_t *sw8, uint16_t *swb) {
#pragma unroll
  for (int q = 0; q < X_BK * X_TD / 16 / X_THREADS; q++) {
    const int i = threadIdx.x + q * X_THREADS, r = i / (X_TD / 16), c = (i % (X_TD / 16)) * 16;
    const uint4 v = *(const uint4 *)(sw8 + r * X_TD + c);
    uint4 lo, hi;
    lo.x = fp8x2_to_bf16x2(v.x & 0xFFFFu);
    lo.y = fp8x2_to_bf16x2(v.x >> 16);
    lo.z = fp8x2_to_bf16x2(v.y & 0xFFFFu);
    lo.w = fp8x2_to_bf16x2(v.y >> 16);
    hi.x = fp8x2_to_bf16x2(v.z & 0xFFFFu);
    hi.y = fp8x2_to_bf16x2(v.z >> 16);
    hi.z = fp8x2_to_bf16x2(v.w & 0xFFFFu);
    hi.w = fp8x2_to_bf16x2(v.w >> 16);
    *(uint4 *)(swb + r * X_LDW(DT) + c) = lo;
    *(uint4 *)(swb + r * X_LDW(DT) + c + 8) = hi;
  }
}

/* acc += G W over one stage (X_BK labels). */
template <int DT>
static __device__ __forceinline__ void x_mma_stage(float acc[4][4][4], const uint16_t *sg, const uint16_t *swb) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, m0 = XW_M0(warp), n0 = XW_N0(warp);
#pragma unroll
  for (int kk = 0; kk < X_BK; kk += 16) {
    uint32_t af[4][4], bf[4][2];
#pragma unroll
    for (int i = 0; i < 4; i++) /* A = G stored [m = b][k = label] */
      ldsm_x4(af[i], sg + (m0 + 16 * i + (lane & 15)) * X_LDG + kk + (lane >> 4) * 8);
    load_b_frags(bf, swb, X_LDW(DT), kk, n0, lane);
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
      for (int j = 0; j < 4; j++) mma_bf16(acc[i][j], af[i], bf[j][0], bf[j][1]);
  }
}

/* grid (batch tiles x feature tiles, slices). */
template <int DT>
static __global__ void __launch_bounds__(xcfg<DT>::THREADS, xcfg<DT>::BLOCKS_PER_SM) dx_part_kernel(dx_args a) {
  extern __shared__ __align__(16) uint8_t smem[];
  const int64_t b0 = (int64_t)(blockIdx.x / a.d_tiles) * X_TB, k0 = (int64_t)(blockIdx.x % a.d_tiles) * X_TD;
  const int64_t jb = (int64_t)blockIdx.y * a.per, je = min64d(a.n, jb + a.per);
  const int nk = je > jb ? (int)((je - jb + X_BK - 1) / X_BK) : 0;
  uint16_t *swb = (uint16_t *)(smem + X_NST * dx_stage_bytes<DT>()); /* e4m3 only */
#define X_SG(s) ((uint16_t *)(smem + (s) * dx_stage_bytes<DT>()))
#define X_SW(s) (smem + (s) * dx_stage_bytes<DT>() + X_G_BYTES)
  dx_cursor<DT> cu;
  cu.init(a, b0, k0);
#pragma unroll
  for (int s = 0; s < X_NST - 1; s++) {
    if (s < nk) x_load_stage<DT>(a, cu, jb + (int64_t)s * X_BK, je, X_SG(s), X_SW(s));
    cp_async_commit();
  }
  float acc[4][4][4];
  zero_acc<4>(acc);
  for (int kt = 0; kt < nk; kt++) {
    cp_async_wait<X_NST - 2>();
    __syncthreads();
    const int nx = kt + X_NST - 1;
    if (nx < nk) x_load_stage<DT>(a, cu, jb + (int64_t)nx * X_BK, je, X_SG(nx % X_NST), X_SW(nx % X_NST));
    cp_async_commit();
    const uint16_t *wt = (const uint16_t *)X_SW(kt % X_NST);
    if (DT == ELMO_FP8) {
      x_widen<DT>(X_SW(kt % X_NST), swb);
      __syncthreads();
      wt = swb;
    }
    x_mma_stage<DT>(acc, X_SG(kt % X_NST), wt);
  }
#undef X_SG
#undef X_SW
  cp_async_wait<0>();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  float *part = a.part + (int64_t)blockIdx.y * a.B_cap * a.d;
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int64_t b = b0 + XW_M0(warp) + 16 * i + g + 8 * h;
      if (b >= a.B) continue;
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const int64_t k = k0 + XW_N0(warp) + 8 * j + 2 * t;
        if (k >= a.d) continue;
        float2 *p = (float2 *)(part + b * a.d + k), v = make_float2(acc[i][j][2 * h], acc[i][j][2 * h + 1]);
        if (a.accumulate) {
          const float2 o = *p;
          v.x = o.x + v.x;
          v.y = o.y + v.y;
        }
        *p = v;
      }
    }
}

/* ---- dX on Hopper's warpgroup MMA (e4m3 weights) ----------------------------------------------
 * The same slices and dx_part layout as dx_part_kernel<ELMO_FP8> (128 batch rows a block, X_BK
 * labels a stage), but the products run as wgmma m64nTDk16 (BF16 operands from shared memory, FP32
 * accumulators, asynchronous; TD = 128 features a block, two blocks per SM, or 256, one block per
 * SM and half the reads of each G stage): warpgroup q takes batch rows 64 q .. 64 q + 63. Both operands K-major (K = labels) with the 128-byte swizzle: a
 * stage of 64 labels is one 128-byte row per batch row (A = G) or feature (B = W^T), 16-byte chunk
 * c of row r at chunk c ^ (r % 8), 8-row atoms of 1 KB (the unswizzled core-matrix layout worked
 * but ran at 2.7 ms, bank conflicts). G's stage lands so straight from cp.async (a 16-byte piece
 * is 8 labels of one batch row); the e4m3 weight stage [labels][features] is widened by
 * stmatrix.trans, which writes each 8 x 8 block transposed (one feature's 8 labels as a chunk,
 * one instruction for four blocks). While the warpgroups run stage k's wgmma,
 * the block widens stage k + 1 into the other buffer and loads stage k + 2. sm_90a only (the
 * host takes dx_part_kernel elsewhere); the numerics are those of the mma.sync kernel up to the
 * order of the FP32 additions inside a stage. H100, 2026-11-27: 2.81M x B 128 1.64 -> 1.38 ms,
 * 1.31M x B 512 3.03 -> 2.51 ms (docs/PERFORMANCE.md, fourth round). */
/* TD features a block: 128 (two blocks per SM) or 256 (m64n256, one block per SM, each G stage read
 * by half as many blocks). */
#define XG_G_BYTES (X_TB * X_BK * 2)            /* 16 KB, swizzled rows */
#define XG_NST 3
static constexpr __host__ __device__ int xg_ldw8(int td) { return td + 16; } /* raw e4m3 row: conflict-free 2-byte reads */
static constexpr __host__ __device__ size_t xg_stage(int td) { return XG_G_BYTES + (size_t)X_BK * xg_ldw8(td); }
static constexpr __host__ __device__ size_t xg_wb_bytes(int td) { return (size_t)td * X_BK * 2; } /* widened, swizzled */
static constexpr size_t dxg_smem_bytes(int td) { return XG_NST * xg_stage(td) + 2 * xg_wb_bytes(td) + 1024; }
/* TMA form: the raw e4m3 stage as TD / 128 boxes of 64 labels x 128 bytes (128-byte swizzle), no padding. */
static constexpr __host__ __device__ size_t xg_stage_tma(int td) { return XG_G_BYTES + (size_t)X_BK * td; }
static constexpr size_t dxg_tma_smem_bytes(int td) {
  return XG_NST * xg_stage_tma(td) + 2 * xg_wb_bytes(td) + XG_NST * sizeof(uint64_t) + 1024;
}
static_assert(xg_stage(128) % 1024 == 0 && xg_stage(256) % 1024 == 0 && XG_G_BYTES % 1024 == 0,
              "swizzle atoms stay 1 KB aligned");


/* The raw e4m3 stage [X_BK labels][TD features] (rows xg_ldw8 bytes) into wb as the K-major B
 * operand (a 128-byte row of labels per feature, swizzled): warp w writes feature blocks
 * (TD / 64) w .. of 8 features. */
#if defined(ELMO_HAVE_WGMMA)
template <int TD, bool SWZ = false>
static __device__ __forceinline__ void xg_widen(const uint8_t *sw8, uint8_t *wb) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int q = 0; q < TD / 32; q++) {
    const int fb = (TD / 64) * warp + (q >> 1), lb0 = 4 * (q & 1);
    uint32_t r[4];
#pragma unroll
    for (int m = 0; m < 4; m++) { /* fragment row = label, columns = features 2 (lane % 4), + 1 */
      const int label = 8 * (lb0 + m) + (lane >> 2), f = 8 * fb + 2 * (lane & 3);
      const uint8_t *p = SWZ ? sw8 + (f >> 7) * (X_BK * 128) + label * 128 + (((((f & 127) >> 4) ^ label) & 7) << 4) + (f & 15)
                             : sw8 + label * xg_ldw8(TD) + f;
      r[m] = fp8x2_to_bf16x2(*(const uint16_t *)p);
    }
    /* matrix m = labels 8 (lb0 + m) .., features 8 fb ..: its stored row j is feature f = 8 fb + j, chunk
     * lb0 + m of that 128-byte row, swizzled */
    const int j = lane & 7, f = 8 * fb + j;
    stsm_x4_t(wb + f * 128 + (((lb0 + (lane >> 3)) ^ j) << 4), r[0], r[1], r[2], r[3]);
  }
}

/* Stage of labels j.. (below jend): G rows b0.. as the K-major A operand (row r: 128 bytes, labels
 * 8 c .. 8 c + 7 in chunk c ^ (r % 8)), weights raw. */
template <int TD>
static __device__ __forceinline__ void xg_load_stage(const dx_args &a, int64_t b0, int64_t k0, int64_t j, int64_t jend,
                                                     uint8_t *sg, uint8_t *sw) {
#pragma unroll
  for (int q = 0; q < X_TB * (X_BK / 8) / 256; q++) {
    const int i = threadIdx.x + 256 * q, r = i >> 3, c = i & 7;
    const bool v = b0 + r < a.B && j + 8 * c < jend;
    cp_async16(sg + r * 128 + ((c ^ (r & 7)) << 4), v ? a.G + (b0 + r) * a.n + j + 8 * c : a.G, v);
  }
#pragma unroll
  for (int q = 0; q < X_BK * (TD / 16) / 256; q++) {
    const int i = threadIdx.x + 256 * q, r = i / (TD / 16), c = i % (TD / 16);
    const bool v = j + r < jend && k0 + 16 * c < a.d;
    cp_async16(sw + r * xg_ldw8(TD) + 16 * c, v ? (const uint8_t *)a.W + (a.l0 + j + r) * a.d + k0 + 16 * c : a.W, v);
  }
}
#endif

/* TMA (sm_90a, maps as launch_dx_wgmma_td makes them): each stage's G box (128 rows x 64 labels, the
 * swizzled A layout above) and raw weight boxes arrive by TMA from one thread, counted by a barrier per
 * slot, instead of every thread's cp.async pieces; the same products in the same order (the same bits). */
template <int TD, bool TMA>
static __global__ void __launch_bounds__(256, TD == 128 ? 2 : 1) dx_wgmma_kernel(dx_args a, const __grid_constant__ CUtensorMap tmG,
                                                                                const __grid_constant__ CUtensorMap tmW) {
#if defined(ELMO_HAVE_WGMMA)
  extern __shared__ __align__(16) uint8_t smem_raw[];
  uint8_t *smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);   /* swizzle atoms: 1 KB aligned */
  const int64_t b0 = (int64_t)(blockIdx.x / a.d_tiles) * X_TB, k0 = (int64_t)(blockIdx.x % a.d_tiles) * TD;
  const int64_t jb = (int64_t)blockIdx.y * a.per, je = min64d(a.n, jb + a.per);
  const int nk = je > jb ? (int)((je - jb + X_BK - 1) / X_BK) : 0;
  constexpr size_t STAGE = TMA ? xg_stage_tma(TD) : xg_stage(TD);
  uint8_t *wbuf = smem + XG_NST * STAGE;
  uint64_t *bar = (uint64_t *)(wbuf + 2 * xg_wb_bytes(TD));   /* TMA: one per stage slot */
#define XG_SG(s) (smem + (s) * STAGE)
#define XG_SW(s) (smem + (s) * STAGE + XG_G_BYTES)
  const int wgi = threadIdx.x >> 7;                 /* warpgroup: batch rows 64 wgi .. */
  constexpr int NACC = TD / 2;
  float acc[NACC];
#pragma unroll
  for (int i = 0; i < NACC; i++) acc[i] = 0.0f;
  /* TMA: stage kt into its slot (thread 0); part 1: the barrier's bytes and the weights, 2: G */
  auto issue = [&](int kt, int part) {
    const int sl = kt % XG_NST;
    const int64_t j = jb + (int64_t)kt * X_BK;
    if (part & 1) {
      mbar_expect_tx(&bar[sl], (unsigned)(XG_G_BYTES + X_BK * TD));
#pragma unroll
      for (int h = 0; h < TD / 128; h++) tma_load_2d(XG_SW(sl) + h * X_BK * 128, &tmW, (int)(k0 + 128 * h), (int)j, &bar[sl]);
    }
    if (part & 2) tma_load_2d(XG_SG(sl), &tmG, (int)j, (int)b0, &bar[sl]);
  };
  bool waited = false;
  auto wait_stage = [&](int kt) { mbar_wait(&bar[kt % XG_NST], (unsigned)(kt / XG_NST) & 1u); };
  if (TMA) {
    if (threadIdx.x == 0) {
      for (int i = 0; i < XG_NST; i++) mbar_init(&bar[i], 1);
      mbar_init_fence();
    }
    __syncthreads();
    if (threadIdx.x == 0) { /* the weights before the kernel ahead (which writes G) has ended */
      if (nk > 0) issue(0, 1);
      if (nk > 1) issue(1, 1);
    }
    pdl_sync(waited);
    if (threadIdx.x == 0) {
      if (nk > 0) issue(0, 2);
      if (nk > 1) issue(1, 2);
    }
    if (nk > 0) {
      wait_stage(0);
      xg_widen<TD, true>(XG_SW(0), wbuf);
    }
  } else {
    if (nk > 0) xg_load_stage<TD>(a, b0, k0, jb, je, XG_SG(0), XG_SW(0));
    cp_async_commit();
    if (nk > 1) xg_load_stage<TD>(a, b0, k0, jb + X_BK, je, XG_SG(1), XG_SW(1));
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    if (nk > 0) xg_widen<TD>(XG_SW(0), wbuf);
  }
  for (int kt = 0; kt < nk; kt++) {
    /* stage kt: G in slot kt % 3 (landed), weights widened in wbuf[kt & 1] by every thread */
    wg_fence_proxy();
    __syncthreads();
    wg_fence();
    wg_pin<NACC>(acc);
    const uint8_t *ga = XG_SG(kt % XG_NST) + wgi * 64 * 128, *wb = wbuf + (kt & 1) * xg_wb_bytes(TD);
#pragma unroll
    for (int kk = 0; kk < X_BK / 16; kk++) wgmma_k16<TD>(acc, wg_desc(ga + kk * 32), wg_desc(wb + kk * 32));
    wg_commit();
    /* meanwhile: stage kt + 2 into the slot of stage kt - 1 (its wgmma finished before the barrier
     * above), and stage kt + 1 widened into the other buffer (read by wgmma kt - 1) */
    const int nx = kt + 2;
    if (TMA) {
      if (nx < nk && threadIdx.x == 0) issue(nx, 3);
      if (kt + 1 < nk) {
        wait_stage(kt + 1);
        xg_widen<TD, true>(XG_SW((kt + 1) % XG_NST), wbuf + ((kt + 1) & 1) * xg_wb_bytes(TD));
      }
    } else {
      if (nx < nk) xg_load_stage<TD>(a, b0, k0, jb + (int64_t)nx * X_BK, je, XG_SG(nx % XG_NST), XG_SW(nx % XG_NST));
      cp_async_commit();
      if (kt + 1 < nk) {
        cp_async_wait<1>();
        __syncthreads();
        xg_widen<TD>(XG_SW((kt + 1) % XG_NST), wbuf + ((kt + 1) & 1) * xg_wb_bytes(TD));
      }
    }
    wg_wait<0>();
    wg_pin<NACC>(acc);
  }
#undef XG_SG
#undef XG_SW
  if (!TMA) cp_async_wait<0>();
  const int lane = threadIdx.x & 31, w4 = (threadIdx.x >> 5) & 3, g = lane >> 2, t = lane & 3;
  float *part = a.part + (int64_t)blockIdx.y * a.B_cap * a.d;
#pragma unroll
  for (int h = 0; h < 2; h++) {
    const int64_t b = b0 + 64 * wgi + 16 * w4 + g + 8 * h;
    if (b >= a.B) continue;
#pragma unroll
    for (int j = 0; j < TD / 8; j++) {
      const int64_t k = k0 + 8 * j + 2 * t;
      if (k >= a.d) continue;
      float2 *p = (float2 *)(part + b * a.d + k), v = make_float2(acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
      if (a.accumulate) {
        const float2 o = *p;
        v.x = o.x + v.x;
        v.y = o.y + v.y;
      }
      *p = v;
    }
  }
#endif
}

/* dX^T = W^T G^T (sm_90a, TMA, e4m3 weights): the same blocks, slices and stages as
 * dx_wgmma_kernel<128, true> (a G box of 128 rows x 64 labels and a raw e4m3 box of 64 labels x 128 features a
 * stage, three slots), but the weights are the register operand: each thread reads its A fragments' bytes from the
 * raw stage (2-byte loads of two adjacent features, one per label), pairs them by label and converts them to
 * BF16 in registers, and G is the K-major B operand as its box lies. Warpgroup q forms features 64 q .. 64 q + 63
 * of the tile for all 128 batch rows (m64n128k16, RS form); fragment rows g and g + 8 of warp w are features
 * 16 w + 2 g and 16 w + 2 g + 1, so one load gives both. Nothing is widened into shared memory: per multiply-add
 * the block moves ~2/3 of the bytes dx_wgmma_kernel moves there (PERFORMANCE.md, fifteenth round). The same
 * products summed in the same label order. */
#define XR_STAGE xg_stage_tma(128) /* dx_wgmma_kernel<128, true>'s stage: the G box, then the raw e4m3 box */
static constexpr size_t dxr_smem_bytes() { return 1024 + XG_NST * (size_t)XR_STAGE + XG_NST * sizeof(uint64_t); }
static_assert(XR_STAGE % 1024 == 0, "swizzle atoms stay 1 KB aligned");

static __global__ void __launch_bounds__(256, 2) dx_rs_kernel(dx_args a, const __grid_constant__ CUtensorMap tmG,
                                                              const __grid_constant__ CUtensorMap tmW) {
#if defined(ELMO_HAVE_WGMMA)
  extern __shared__ __align__(16) uint8_t smem_raw[];
  uint8_t *smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  const int64_t b0 = (int64_t)(blockIdx.x / a.d_tiles) * X_TB, k0 = (int64_t)(blockIdx.x % a.d_tiles) * 128;
  const int64_t jb = (int64_t)blockIdx.y * a.per, je = min64d(a.n, jb + a.per);
  const int nk = je > jb ? (int)((je - jb + X_BK - 1) / X_BK) : 0;
  uint64_t *bar = (uint64_t *)(smem + XG_NST * XR_STAGE);
#define XR_SG(s) (smem + (s) * XR_STAGE)
#define XR_SW(s) (smem + (s) * XR_STAGE + XG_G_BYTES)
  const int wgi = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int c = 64 * wgi + 16 * warp + 2 * g; /* this thread's features c, c + 1 of the tile: fragment rows g, g + 8 */
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; i++) acc[i] = 0.0f;
  /* stage kt into its slot (thread 0); part 1: the barrier's bytes and the weights, 2: G */
  auto issue = [&](int kt, int part) {
    const int sl = kt % XG_NST;
    const int64_t j = jb + (int64_t)kt * X_BK;
    if (part & 1) {
      mbar_expect_tx(&bar[sl], (unsigned)XR_STAGE);
      tma_load_2d(XR_SW(sl), &tmW, (int)k0, (int)j, &bar[sl]);
    }
    if (part & 2) tma_load_2d(XR_SG(sl), &tmG, (int)j, (int)b0, &bar[sl]);
  };
  if (threadIdx.x == 0) {
    for (int i = 0; i < XG_NST; i++) mbar_init(&bar[i], 1);
    mbar_init_fence();
  }
  __syncthreads();
  bool waited = false;
  if (threadIdx.x == 0) /* the weights before the kernel ahead (which writes G) has ended */
    for (int kt = 0; kt < XG_NST && kt < nk; kt++) issue(kt, 1);
  pdl_sync(waited);
  if (threadIdx.x == 0)
    for (int kt = 0; kt < XG_NST && kt < nk; kt++) issue(kt, 2);
  for (int kt = 0; kt < nk; kt++) {
    const int sl = kt % XG_NST;
    mbar_wait(&bar[sl], (unsigned)(kt / XG_NST) & 1u);
    /* A fragments of the four k16 steps: labels l = 16 kk + 2 t (+1, +8, +9), features c and c + 1 */
    const uint8_t *sw = XR_SW(sl);
    uint32_t af[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
      uint32_t v[4];
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const int l = 16 * kk + 2 * t + (i & 1) + 8 * (i >> 1);
        v[i] = *(const uint16_t *)(sw + l * 128 + ((((c >> 4) ^ l) & 7) << 4) + (c & 15));
      }
      af[kk][0] = fp8x2_to_bf16x2(__byte_perm(v[0], v[1], 0x0040)); /* row g: labels l, l + 1 */
      af[kk][1] = fp8x2_to_bf16x2(__byte_perm(v[0], v[1], 0x0051)); /* row g + 8 */
      af[kk][2] = fp8x2_to_bf16x2(__byte_perm(v[2], v[3], 0x0040)); /* row g: labels l + 8, l + 9 */
      af[kk][3] = fp8x2_to_bf16x2(__byte_perm(v[2], v[3], 0x0051));
    }
    wg_fence();
    wg_pin<64>(acc);
#pragma unroll
    for (int kk = 0; kk < 4; kk++) wgmma_rs_m64n128k16(acc, af[kk], wg_desc(XR_SG(sl) + kk * 32));
    wg_commit();
    wg_wait<0>();
    wg_pin<64>(acc);
    __syncthreads(); /* every warpgroup is done with the slot */
    if (kt + XG_NST < nk && threadIdx.x == 0) issue(kt + XG_NST, 3);
  }
#undef XR_SG
#undef XR_SW
  /* acc[4 j + 2 h + e]: feature k0 + c + h, batch row b0 + 8 j + 2 t + e */
  float *part = a.part + (int64_t)blockIdx.y * a.B_cap * a.d;
#pragma unroll
  for (int h = 0; h < 2; h++) {
    const int64_t k = k0 + c + h;
    if (k >= a.d) continue;
#pragma unroll
    for (int j = 0; j < 16; j++)
#pragma unroll
      for (int e = 0; e < 2; e++) {
        const int64_t b = b0 + 8 * j + 2 * t + e;
        if (b >= a.B) continue;
        float *p = part + b * a.d + k, v = acc[4 * j + 2 * h + e];
        if (a.accumulate) v = *p + v;
        *p = v;
      }
  }
#endif
}

/* dX[i] += part[0][i] + part[1][i] + ... (in this order), four floats per thread. */
static __global__ void __launch_bounds__(256) dx_reduce_kernel(const float4 *part, int64_t n4, int64_t stride4,
                                                               int64_t slices, float4 *dX) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n4; i += (int64_t)gridDim.x * blockDim.x) {
    float4 s = part[i];
    for (int64_t q = 1; q < slices; q++) {
      const float4 v = part[q * stride4 + i];
      s.x += v.x;
      s.y += v.y;
      s.z += v.z;
      s.w += v.w;
    }
    float4 o = dX[i];
    o.x += s.x;
    o.y += s.y;
    o.z += s.z;
    o.w += s.w;
    dX[i] = o;
  }
}

template <int DT>
static void launch_dx(const dx_args &a, dim3 grid, cudaStream_t s) {
  const size_t smem = dx_smem_bytes<DT>();
  static unsigned attr_set = 0;
  if (elmo_cuda_first_on_device(&attr_set)) {
    ELMO_CUDA_CHECK(cudaFuncSetAttribute(dx_part_kernel<DT>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  }
  dx_part_kernel<DT><<<grid, X_THREADS, smem, s>>>(a);
  ELMO_LAUNCH_CHECK();
}

extern "C" size_t elmo_cuda_cls_smem_need(elmo_dtype dt, int64_t B_cap) {
  const size_t dx = dt == ELMO_FP8 ? dx_smem_bytes<ELMO_FP8>() : dt == ELMO_BF16 ? dx_smem_bytes<ELMO_BF16>() : 0;
  const int es = dt == ELMO_FP8 ? 1 : dt == ELMO_BF16 ? 2 : 4;
  const size_t up = B_cap <= R_BMAX ? r_smem_bytes(es) : update_smem_bytes(dt, es);
  return dx > up ? dx : up;
}

/* 0: the mma.sync kernel; 1: dx_wgmma_kernel (a device of compute capability 9.0, the sm_90a code).
 * ELMO_DX_WGMMA=0 in the environment selects the first. */
extern "C" int elmo_cuda_cls_dx_wgmma(void) { return wgmma_enabled("ELMO_DX_WGMMA"); }

/* 1 when the wgmma dX moves its stages by TMA (compute capability 9.0 and the driver's map encoder,
 * unless ELMO_DX_TMA=0); the same bits either way. */
extern "C" int elmo_cuda_cls_dx_tma(void) { return wgmma_enabled("ELMO_DX_TMA") && tmap_encoder() != NULL; }
extern "C" int elmo_cuda_cls_dx_rs(void) { return env_on("ELMO_DX_RS"); }

template <int TD> static void launch_dx_wgmma_td(const dx_args &a, dim3 grid, bool pdl, cudaStream_t s) {
  static unsigned attr_set = 0;
  if (elmo_cuda_first_on_device(&attr_set)) {
    ELMO_CUDA_CHECK(cudaFuncSetAttribute(dx_wgmma_kernel<TD, false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)dxg_smem_bytes(TD)));
    ELMO_CUDA_CHECK(cudaFuncSetAttribute(dx_wgmma_kernel<TD, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)dxg_tma_smem_bytes(TD)));
  }
  CUtensorMap mg, mw; /* the chunk's n weight rows (padded labels' rows included, as the cp.async form reads) */
  memset(&mg, 0, sizeof mg);
  memset(&mw, 0, sizeof mw);
  if (a.n % 8 == 0 && elmo_cuda_cls_dx_tma() &&
      tmap_2d(&mg, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, a.G, a.n, a.B, X_BK, X_TB) &&
      tmap_2d(&mw, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, (const uint8_t *)a.W + a.l0 * a.d, a.d, a.n, 128, X_BK)) {
    if (TD == 128 && elmo_cuda_cls_dx_rs()) { /* weights as the register operand (dx_rs_kernel) */
      static unsigned rs_attr = 0;
      if (elmo_cuda_first_on_device(&rs_attr))
        ELMO_CUDA_CHECK(cudaFuncSetAttribute(dx_rs_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             (int)dxr_smem_bytes()));
      launch_k(pdl, dx_rs_kernel, grid, 256, dxr_smem_bytes(), s, a, mg, mw);
    } else {
      launch_k(pdl, dx_wgmma_kernel<TD, true>, grid, 256, dxg_tma_smem_bytes(TD), s, a, mg, mw);
    }
  } else
    dx_wgmma_kernel<TD, false><<<grid, 256, dxg_smem_bytes(TD), s>>>(a, mg, mw);
  ELMO_LAUNCH_CHECK();
}

/* Feature tile of the wgmma kernel: 128, where the TMA form runs dx_rs_kernel (the weights in registers); with
 * ELMO_DX_RS=0 (widened weights) 256 for one batch tile (B <= 128), else 128; ELMO_DX_WGMMA=128 or 256 in the
 * environment forces one. The slice count stays the mma.sync kernel's (dx_part's shape): 256-feature tiles
 * make half the blocks. H100, 2026-11-27 (dX ms of the widening form, 128 / 256 features): 2.81M x B 128
 * whole chunk 1.40 / 1.43, in 8 chunks 1.80 / 1.69; 1.31M x B 512 2.53 / 2.60. 2026-11-28, 8 chunks at
 * B 128: widened 256 features 1.37 / 1.35, registers 1.34 / 1.33; B 64 1.20 / 1.45 against 1.10 / 1.12. */
static void launch_dx_wgmma(dx_args a, int64_t B, int slices, bool pdl, cudaStream_t s) {
  const char *e = getenv("ELMO_DX_WGMMA");
  int td = B <= X_TB && !(elmo_cuda_cls_dx_tma() && elmo_cuda_cls_dx_rs()) ? 256 : 128;
  if (e && strcmp(e, "128") == 0) td = 128;
  if (e && strcmp(e, "256") == 0) td = 256;
  a.d_tiles = (int)((a.d + td - 1) / td);
  const dim3 grid((unsigned)((B + X_TB - 1) / X_TB * a.d_tiles), (unsigned)slices);
  if (td == 128) launch_dx_wgmma_td<128>(a, grid, pdl, s);
  else launch_dx_wgmma_td<256>(a, grid, pdl, s);
}

extern "C" void elmo_cuda_cls_dx_part(const elmo_cuda_cls *c, int64_t B, int64_t l0, int64_t n, int accumulate,
                                      cudaStream_t s) {
  if (B <= 0) return;
  dx_args a;
  a.W = c->W;
  a.G = (const uint16_t *)c->z;
  a.part = c->dx_part;
  a.d = c->d;
  a.n = n;
  a.l0 = l0;
  a.B = B;
  a.B_cap = c->B_cap;
  const int td = c->dtype == ELMO_FP8 ? xcfg<ELMO_FP8>::TD : xcfg<ELMO_BF16>::TD;
  a.d_tiles = (int)((c->d + td - 1) / td);
  a.accumulate = accumulate;
  const int64_t steps = (n + X_BK - 1) / X_BK;
  a.per = (steps + c->dx_slices - 1) / c->dx_slices * X_BK;
  if (a.per < X_BK) a.per = X_BK;
  dim3 grid((unsigned)((B + X_TB - 1) / X_TB * a.d_tiles), (unsigned)c->dx_slices);
  const int wg = c->dtype == ELMO_FP8 ? elmo_cuda_cls_dx_wgmma() : 0;
  if (wg) launch_dx_wgmma(a, B, (int)c->dx_slices, c->pdl_step != 0, s);
  else if (c->dtype == ELMO_FP8) launch_dx<ELMO_FP8>(a, grid, s);
  else launch_dx<ELMO_BF16>(a, grid, s);
}

extern "C" void elmo_cuda_cls_dx_reduce(const elmo_cuda_cls *c, int64_t B, float *dX, cudaStream_t s) {
  const int64_t n4 = B * c->d / 4;
  if (n4 <= 0) return;
  int64_t blocks = (n4 + 255) / 256;
  if (blocks > 4096) blocks = 4096;
  dx_reduce_kernel<<<(unsigned)blocks, 256, 0, s>>>((const float4 *)c->dx_part, n4, c->B_cap * c->d / 4,
                                                    c->dx_slices, (float4 *)dX);
  ELMO_LAUNCH_CHECK();
}

/* ==== logits and gradient in one pass (e4m3 weights and input, batches up to 512 rows) ==========
 * Batches above 128 rows run as slices of 128 (the grid's y), each block with its slice's Xq resident.
 * G = grad_tab[y][bf16(Xq W^T)] per 128-label tile without storing the logits. The FP8 product runs
 * on wgmma m64n128k32 (e4m3 x e4m3, FP32 accumulators): A = Xq, resident in shared memory for the
 * whole kernel (128 rows x d bytes in 128-byte K-blocks with the 128-byte swizzle), B = the weight
 * tile, streamed in 128-feature stages by cp.async (same swizzle; a stage is 128 labels x 128
 * bytes). Persistent blocks, one per SM, of two warpgroups that work independently ("ping-pong"):
 * warpgroup q takes the block's label tiles q, q + 2, ... (tiles blockIdx.x + i gridDim.x), all
 * batch rows of each (two m64 halves, 128 accumulators a thread), with its own ring of stages and
 * its own named barrier; so while one rounds its tile's accumulators to bf16 (RN, as cuBLASLt stores
 * the logits), looks up G in the CPU's table and stores it, the other runs its wgmma and loads.
 * (One shared pipeline with both warpgroups in lockstep ran at 1.45 TB/s, latency-bound: H100,
 * 2026-11-27, docs/PERFORMANCE.md.) The positives of each row come from a per-row cursor into y
 * (sorted) per warpgroup that only moves forward, since a warpgroup's tiles ascend: a row with no
 * positive in the tile costs one shared-memory compare. */
#define LG_TL 128
#define LG_STAGE (LG_TL * 128)
#define LG_NST 3     /* ring slots per warpgroup: two stages in flight while one is multiplied */
#define LG_MAX_KB 6  /* d <= 768: Xq (kb x 16 KB) + two rings (96 KB) within 227 KB */

struct lg_args {
  const uint8_t *W;      /* [L_pad, d] e4m3 */
  const uint8_t *Xq8;    /* [B_cap, d] e4m3 */
  uint16_t *G;           /* [round16(B), n] bf16 codes (rows < B written) */
  const uint16_t *tab;   /* elmo_cls_grad_table: [2][65536] */
  const int64_t *y_indptr;
  const int32_t *y_indices;
  int64_t d, n, l0, L, B, tiles;
  int kb;                /* 128-byte K-blocks: ceil(d / 128) */
};

static constexpr size_t lg_smem_bytes(int kb) {
  return (size_t)(kb + 2 * LG_NST) * LG_STAGE + 2 * 128 * 20 + 2 * LG_NST * sizeof(uint64_t) + 1024;
}

#if defined(ELMO_HAVE_WGMMA)
/* d[64] = (acc ? d : 0) + A (64 x 32 e4m3, desc a) B^T (128 x 32 e4m3, desc b), both K-major. */
static __device__ __forceinline__ void wgmma_e4m3_m64n128k32(float d[64], uint64_t a, uint64_t b, int acc = 1) {
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %66, 0;\n wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1;\n}\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
               : "l"(a), "l"(b), "r"(acc));
}

/* The 128 threads of warpgroup q meet (named barrier 1 + q; barrier 0 is __syncthreads). */
static __device__ __forceinline__ void wg_bar(int q) { asm volatile("bar.sync %0, 128;\n" ::"r"(1 + q) : "memory"); }

/* Label tile of warpgroup q's local tile t (the block's tile q + 2 t), and of its local stage s. */
static __device__ __forceinline__ int64_t lg_tile_t(int q, int64_t t) {
  return blockIdx.x + (q + 2 * t) * (int64_t)gridDim.x;
}
static __device__ __forceinline__ int64_t lg_tile(const lg_args &a, int q, int64_t s) { return lg_tile_t(q, s / a.kb); }

/* Warpgroup q's stage s into its ring slot s % LG_NST (thread i of the warpgroup: 8 pieces). */
static __device__ __forceinline__ void lg_load_stage(const lg_args &a, int q, int64_t s, uint8_t *ring) {
  const int64_t j0 = lg_tile(a, q, s) * LG_TL, k0 = (s % a.kb) * 128;
  uint8_t *slot = ring + (s % LG_NST) * LG_STAGE;
  const int ti = threadIdx.x & 127;
#pragma unroll
  for (int p = 0; p < LG_TL * 8 / 128; p++) {
    const int i = ti + 128 * p, r = i >> 3, c = i & 7;
    const bool v = j0 + r < a.n && k0 + 16 * c < a.d;
    cp_async16(slot + r * 128 + ((c ^ (r & 7)) << 4), v ? a.W + (a.l0 + j0 + r) * a.d + k0 + 16 * c : a.W, v);
  }
}

/* First position in y[lo, hi) with y >= v. */
static __device__ __forceinline__ int64_t lg_lower_bound(const int32_t *y, int64_t lo, int64_t hi, int64_t v) {
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    if (y[mid] < v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/* G of tile j0 (labels L0 = l0 + j0 ..) from one m64 half's accumulators: rows b = 64 half + 16 w4
 * + g + 8 h, labels 8 j + 2 t + e; cursors of this warpgroup's rows. */
static __device__ __forceinline__ void lg_epilogue(const lg_args &a, const float acc[64], int half, int64_t j0,
                                                   int64_t *cur, const int64_t *cend, int32_t *ny, int64_t r0, int64_t Bs) {
  const int lane = threadIdx.x & 31, w4 = (threadIdx.x >> 5) & 3, g = lane >> 2, t = lane & 3;
  const int64_t L0 = a.l0 + j0;
  uint32_t pm[2] = {0u, 0u};
  int64_t adv[2] = {-1, -1};
#pragma unroll
  for (int h = 0; h < 2; h++) {
    const int b = 64 * half + 16 * w4 + g + 8 * h;
    if (b >= Bs || ny[b] >= L0 + LG_TL) continue; /* the usual case: no positive here or before */
    int64_t p = cur[b];
    const int64_t e = cend[b];
    for (; p < e && a.y_indices[p] < L0 + LG_TL; p++) {
      const int64_t col = a.y_indices[p] - L0;
      if (col >= 0 && ((col >> 1) & 3) == t) pm[h] |= 1u << ((col >> 3) * 2 + (col & 1));
    }
    adv[h] = p;
  }
  __syncwarp(); /* the quad has read the cursors of its rows before lane t = 0 moves them */
  const bool inner = j0 + LG_TL <= a.n && L0 + LG_TL <= a.L;
#pragma unroll
  for (int h = 0; h < 2; h++) {
    const int b = 64 * half + 16 * w4 + g + 8 * h;
    if (t == 0 && adv[h] >= 0) {
      cur[b] = adv[h];
      ny[b] = adv[h] < cend[b] ? a.y_indices[adv[h]] : INT32_MAX;
    }
    if (b >= Bs) continue;
    uint16_t *grow = a.G + (r0 + b) * a.n + j0;
    if (pm[h] == 0 && inner) { /* the usual tile: no positive, no edge */
#pragma unroll
      for (int j = 0; j < 16; j++) {
        const __nv_bfloat162 zz = __floats2bfloat162_rn(acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
        const uint32_t zc = *(const uint32_t *)&zz;
        *(uint32_t *)(grow + 8 * j + 2 * t) = (uint32_t)__ldg(a.tab + (zc & 0xFFFFu)) | ((uint32_t)__ldg(a.tab + (zc >> 16)) << 16);
      }
      continue;
    }
#pragma unroll
    for (int j = 0; j < 16; j++) {
      const int col = 8 * j + 2 * t;
      if (j0 + col >= a.n) break; /* n is a multiple of 16: both labels of the pair in or out */
      const __nv_bfloat162 zz = __floats2bfloat162_rn(acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
      const uint32_t zc = *(const uint32_t *)&zz;
      uint32_t g0 = __ldg(a.tab + (((pm[h] >> (2 * j)) & 1u) << 16) + (zc & 0xFFFFu));
      uint32_t g1 = __ldg(a.tab + (((pm[h] >> (2 * j + 1)) & 1u) << 16) + (zc >> 16));
      if (L0 + col >= a.L) g0 = 0;
      if (L0 + col + 1 >= a.L) g1 = 0;
      *(uint32_t *)(grow + col) = g0 | (g1 << 16);
    }
  }
}
#endif

/* TMA (sm_90a): each ring stage (128 labels x 128 features e4m3) arrives as one TMA box that thread 0
 * of the warpgroup issues, counted by a barrier per ring slot, instead of the warpgroup's cp.async
 * pieces; the same products in the same order (the same G). */
template <bool TMA, bool CH, bool ONE = false>
static __global__ void __launch_bounds__(256, 1) lg_wgmma_kernel(lg_args a, const __grid_constant__ CUtensorMap tmW) {
#if defined(ELMO_HAVE_WGMMA)
  extern __shared__ __align__(16) uint8_t smem_raw[];
  uint8_t *smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  const int tid = threadIdx.x, q = tid >> 7, ti = tid & 127;
  uint8_t *xs = smem, *ring = smem + (size_t)(a.kb + q * LG_NST) * LG_STAGE;
  int64_t *cur = (int64_t *)(smem + (size_t)(a.kb + 2 * LG_NST) * LG_STAGE) + q * 256, *cend = cur + 128;
  int32_t *ny = (int32_t *)(smem + (size_t)(a.kb + 2 * LG_NST) * LG_STAGE + 2 * 128 * 16) + q * 128;
  uint64_t *bar = (uint64_t *)(smem + (size_t)(a.kb + 2 * LG_NST) * LG_STAGE + 2 * 128 * 20) + q * LG_NST;
  bool waited = false;
  /* TMA: the warpgroup's next stage into its slot, by thread 0; stages are issued in order, so slot, K-block and
   * tile are counters (64-bit divisions by LG_NST and kb here cost thread 0, and its warpgroup waiting at the
   * next barrier, ~6% of the kernel: PERFORMANCE.md, version 63) */
  int i_slot = 0, i_ks = 0;
  int64_t i_t = 0;
  auto issue_next = [&]() {
    mbar_expect_tx(&bar[i_slot], LG_STAGE);
    tma_load_2d(ring + i_slot * LG_STAGE, &tmW, i_ks * 128,
                (int)(lg_tile_t(q, i_t) * LG_TL), &bar[i_slot]);
    i_slot = i_slot == LG_NST - 1 ? 0 : i_slot + 1;
    if (++i_ks == a.kb) {
      i_ks = 0;
      i_t++;
    }
  };
  if (TMA) {
    if (ti == 0) {
      for (int i = 0; i < LG_NST; i++) mbar_init(&bar[i], 1);
      mbar_init_fence();
    }
    __syncthreads();
  }
  /* batch rows r0 .. r0 + Bs of this block's slice (blockIdx.y; one slice up to 128 rows) */
  const int64_t r0 = (int64_t)blockIdx.y * 128, Bs = a.B - r0 < 128 ? a.B - r0 : 128;
  const int64_t blk_tiles = (a.tiles - blockIdx.x + gridDim.x - 1) / gridDim.x; /* this block's */
  const int64_t my_tiles = (blk_tiles - q + 1) / 2, ns = my_tiles * a.kb;       /* this warpgroup's */
  /* Xq: 128 rows (zeros from B on) x kb K-blocks, every thread a share, joining the first group */
  for (int i = tid; i < 128 * 8 * a.kb; i += 256) {
    const int r = i / (8 * a.kb), rem = i % (8 * a.kb), kbi = rem >> 3, c = rem & 7;
    const int64_t k = (int64_t)kbi * 128 + 16 * c;
    const bool v = r < Bs && k < a.d;
    cp_async16(xs + kbi * LG_STAGE + r * 128 + ((c ^ (r & 7)) << 4), v ? a.Xq8 + (r0 + r) * a.d + k : a.Xq8, v);
  }
#pragma unroll
  for (int s = 0; s < LG_NST - 1; s++) {
    if (TMA) {
      if (s < ns && ti == 0) issue_next();
    } else {
      if (s < ns) lg_load_stage(a, q, s, ring);
      cp_async_commit();
    }
  }
  if (TMA) cp_async_commit(); /* the Xq group */
  { /* this warpgroup's row cursors, from its first tile */
    int32_t first = INT32_MAX;
    if (ti < Bs) {
      const int64_t e = a.y_indptr[r0 + ti + 1];
      const int64_t p = lg_lower_bound(a.y_indices, a.y_indptr[r0 + ti], e, a.l0 + lg_tile(a, q, 0) * LG_TL);
      cur[ti] = p;
      cend[ti] = e;
      if (p < e) first = a.y_indices[p];
    }
    ny[ti] = first;
  }
  cp_async_wait<0>();
  __syncthreads(); /* Xq (loaded by both warpgroups) is here for both */
  const bool two = Bs > 64; /* the second m64 half has rows */
  float acc[2][64];
#pragma unroll
  for (int i = 0; i < 64; i++) acc[0][i] = acc[1][i] = 0.0f;
  if (CH) { /* one FP8 sum over all of d on the tensor cores (their fast accumulation, as cuBLASLt's
             * CUBLASLT_MATMUL_DESC_FAST_ACCUM): stage s's products are issued before stage s - 1's are
             * waited for, so the warpgroup's tensor work runs back to back through a tile */
    int c_slot = 0;      /* stage s's ring slot, s % LG_NST */
    unsigned phase = 0u; /* bit i: the parity slot i waits for next */
    for (int64_t t = 0, s = 0; t < my_tiles; t++) {
      for (int ks = 0; ks < a.kb; ks++, s++) {
        if (TMA) {
          mbar_wait(&bar[c_slot], (phase >> c_slot) & 1u); /* stage s landed */
          phase ^= 1u << c_slot;
        } else {
          cp_async_wait<LG_NST - 2>();
          wg_fence_proxy();
          wg_bar(q); /* stage s landed for the warpgroup; its wgmma of stage s - 1 is done (waited below) */
          if (s + LG_NST - 1 < ns) lg_load_stage(a, q, s + LG_NST - 1, ring);
          cp_async_commit();
        }
        const uint8_t *xa = xs + ks * LG_STAGE, *wb = ring + c_slot * LG_STAGE;
        c_slot = c_slot == LG_NST - 1 ? 0 : c_slot + 1;
        wg_fence();
        wg_pin<64>(acc[0]);
        wg_pin<64>(acc[1]);
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
          wgmma_e4m3_m64n128k32(acc[0], wg_desc(xa + 32 * kk), wg_desc(wb + 32 * kk), ks | kk);
        if (!ONE) { /* both halves (zero rows of Xq when !two) unless the whole batch has 64 rows or fewer (ONE):
                     * a run-time branch here serialises the chain */
#pragma unroll
          for (int kk = 0; kk < 4; kk++)
            wgmma_e4m3_m64n128k32(acc[1], wg_desc(xa + 64 * 128 + 32 * kk), wg_desc(wb + 32 * kk), ks | kk);
        }
        wg_commit();
        if (TMA) {
          wg_wait<1>(); /* stage s - 1's products are done: its slot takes stage s + 2 */
          wg_pin<64>(acc[0]);
          wg_pin<64>(acc[1]);
          wg_bar(q);
          if (s + LG_NST - 1 < ns && ti == 0) issue_next(); /* stage s + 2 */
        } else {
          wg_wait<0>();
          wg_pin<64>(acc[0]);
          wg_pin<64>(acc[1]);
        }
      }
      wg_wait<0>();
      wg_pin<64>(acc[0]);
      wg_pin<64>(acc[1]);
      const int64_t j0 = lg_tile_t(q, t) * LG_TL;
      if (TMA) pdl_sync(waited);
      lg_epilogue(a, acc[0], 0, j0, cur, cend, ny, r0, Bs);
      if (two) lg_epilogue(a, acc[1], 1, j0, cur, cend, ny, r0, Bs);
    }
  } else {
    for (int64_t s = 0; s < ns; s++) {
      if (TMA) {
        wg_bar(q); /* the warpgroup's wgmma of stage s - 1 is done: its slot takes stage s + 2 */
        if (s + LG_NST - 1 < ns && ti == 0) issue_next(); /* stage s + 2 */
        mbar_wait(&bar[s % LG_NST], (unsigned)(s / LG_NST) & 1u); /* stage s landed */
      } else {
        cp_async_wait<LG_NST - 2>();
        wg_fence_proxy();
        wg_bar(q); /* stage s landed for the warpgroup; its wgmma of stage s - 1 is done */
        if (s + LG_NST - 1 < ns) lg_load_stage(a, q, s + LG_NST - 1, ring);
        cp_async_commit();
      }
      const int ks = (int)(s % a.kb);
      const uint8_t *xa = xs + ks * LG_STAGE, *wb = ring + (s % LG_NST) * LG_STAGE;
      /* ELMO_FP8_FAST_ACCUM=0: each stage's 128 products summed apart on the tensor cores, then added
       * in FP32, as cuBLASLt's FP8 GEMM without fast accumulation (the same G bit for bit). The FP8
       * wgmma accumulates with less than FP32 precision: the chain above gives 2.4x as many G one
       * bf16 step from the CPU's (3% of them at d 768, B 512) with no effect on Bibtex's P@k, and is
       * 17-20% faster (PERFORMANCE.md, fourteenth round) */
#pragma unroll
      for (int half = 0; half < 2; half++) {
        if (half && !two) break;
        float part[64];
        wg_fence();
        wg_pin<64>(part);
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
          wgmma_e4m3_m64n128k32(part, wg_desc(xa + half * 64 * 128 + 32 * kk), wg_desc(wb + 32 * kk), kk);
        wg_commit();
        wg_wait<0>();
        wg_pin<64>(part);
#pragma unroll
        for (int i = 0; i < 64; i++) acc[half][i] += part[i];
      }
      if (ks != a.kb - 1) continue;
      const int64_t j0 = lg_tile(a, q, s) * LG_TL;
      if (TMA) pdl_sync(waited); /* G: the kernel ahead (the last update) reads the buffer */
      lg_epilogue(a, acc[0], 0, j0, cur, cend, ny, r0, Bs);
      if (two) lg_epilogue(a, acc[1], 1, j0, cur, cend, ny, r0, Bs);
#pragma unroll
      for (int i = 0; i < 64; i++) acc[0][i] = acc[1][i] = 0.0f;
    }
  }
  cp_async_wait<0>();
  if (TMA) pdl_sync(waited);
#endif
}

/* lg_wgmma_kernel's form: TMA stages or cp.async, fast accumulation (CH) or promoted, one m64 half (ONE: CH and
 * batches of 64 rows or fewer). */
typedef void (*lg_fn)(lg_args, CUtensorMap);
static lg_fn lg_kernel(bool tma, bool ch, bool one) {
  if (!ch) return tma ? lg_wgmma_kernel<true, false> : lg_wgmma_kernel<false, false>;
  if (one) return tma ? lg_wgmma_kernel<true, true, true> : lg_wgmma_kernel<false, true, true>;
  return tma ? lg_wgmma_kernel<true, true> : lg_wgmma_kernel<false, true>;
}

/* 1 when the e4m3 logits and gradient (batches up to ELMO_LG_MAX_B rows) run fused on Hopper's warpgroup MMA
 * (compute capability 9.0, unless ELMO_LG_WGMMA=0 is set in the environment). */
extern "C" int elmo_cuda_cls_lg_wgmma(void) { return wgmma_enabled("ELMO_LG_WGMMA"); }
/* 1 when that kernel's weight stages arrive by TMA (and the driver encodes maps), unless ELMO_LG_TMA=0. */
extern "C" int elmo_cuda_cls_lg_tma(void) { return wgmma_enabled("ELMO_LG_TMA") && tmap_encoder() != NULL; }

/* Largest batch the fused kernel takes, in slices of 128 rows (ELMO_LG_MAX_B, default 512). */
static int64_t lg_max_batch(void) {
  static int64_t m = -1;
  if (m < 0) {
    const char *e = getenv("ELMO_LG_MAX_B");
    m = e ? atoll(e) : 512;
  }
  return m;
}

extern "C" int elmo_cuda_cls_lg_ok(const elmo_cuda_cls *c, int64_t B) {
  return c->dtype == ELMO_FP8 && c->fp8_input && c->Xq8 && B <= lg_max_batch() && (c->d + 127) / 128 <= LG_MAX_KB &&
         elmo_cuda_cls_lg_wgmma();
}

extern "C" int elmo_cuda_cls_lg_fused(const elmo_cuda_cls *c, int64_t B, int64_t l0, int64_t n, const int64_t *y_indptr,
                                      const int32_t *y_indices, cudaStream_t s) {
  const int kb = (int)((c->d + 127) / 128);
  if (!elmo_cuda_cls_lg_ok(c, B)) return 0;
  if (B <= 0 || n <= 0) return 1;
  lg_args a;
  a.W = (const uint8_t *)c->W;
  a.Xq8 = c->Xq8;
  a.G = (uint16_t *)c->z;
  a.tab = c->grad_tab;
  a.y_indptr = y_indptr;
  a.y_indices = y_indices;
  a.d = c->d;
  a.n = n;
  a.l0 = l0;
  a.L = c->L;
  a.B = B;
  a.tiles = (n + LG_TL - 1) / LG_TL;
  a.kb = kb;
  const size_t smem = lg_smem_bytes(kb);
  static size_t attr[32]; /* per device */
  int dev = 0;
  ELMO_CUDA_CHECK(cudaGetDevice(&dev));
  if (attr[dev & 31] < smem) {
    for (int v = 0; v < 6; v++)
      ELMO_CUDA_CHECK(cudaFuncSetAttribute(lg_kernel(v & 1, v >> 1 != 0, v >> 1 == 2),
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    attr[dev & 31] = smem;
  }
  /* one slice of up to 128 rows per grid row; the slices' blocks with the same x walk the same tiles at
   * about the same pace, so each weight tile comes from DRAM about once and from L2 for the others */
  const int64_t slices = (B + 127) / 128, per = sm_count() / slices > 1 ? sm_count() / slices : 1;
  const dim3 blocks((unsigned)(a.tiles < per ? a.tiles : per), (unsigned)slices);
  const int ch = elmo_cuda_fp8_fast_accum();
  CUtensorMap mw; /* the chunk's n weight rows, as the cp.async form reads them */
  memset(&mw, 0, sizeof mw);
  if (n % 8 == 0 && elmo_cuda_cls_lg_tma() &&
      tmap_2d(&mw, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, a.W + l0 * c->d, c->d, n, 128, LG_TL))
    /* inside the step, chunks after the first launch early: Xq, the weights and the first tile's products
     * before the first G store waits for the update ahead */
    launch_k(c->pdl_step && l0 > 0, lg_kernel(true, ch, ch && B <= 64), blocks, 256, smem, s, a, mw);
  else
    lg_kernel(false, ch, ch && B <= 64)<<<blocks, 256, smem, s>>>(a, mw);
  ELMO_LAUNCH_CHECK();
  return 1;
}
