// Hopper (sm_90a) building blocks in PTX: mbarriers, cp.async with zero fill, named barriers,
// register reallocation, and warpgroup MMA (wgmma) with shared-memory matrix descriptors.
// Tiles in shared memory use the 128-byte swizzle: a tile is [rows][64 bf16], 128 B per row, in
// 1024-byte atoms of 8 rows; 16-byte unit u of row r sits at unit u ^ (r % 8).
#pragma once
#include <cstdint>

namespace lcattn {
namespace sm90 {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Shared-memory loads and stores by 32-bit shared address (a generic pointer the compiler cannot
// place in shared memory would give generic LD / ST).
__device__ __forceinline__ uint8_t lds_u8(uint32_t addr) {
  uint16_t v;
  asm volatile("ld.shared.u8 %0, [%1];\n" : "=h"(v) : "r"(addr));
  return static_cast<uint8_t>(v);
}
__device__ __forceinline__ uint2 lds_v2(uint32_t addr) {
  uint2 v;
  asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "r"(addr));
  return v;
}
__device__ __forceinline__ void sts_v4(uint32_t addr, uint4 v) {
  asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}

// Byte offset of 16-byte unit `unit` (0..7) of row `row` in a 128B-swizzled tile.
__device__ __forceinline__ uint32_t swizzled(int row, int unit) { return row * 128 + ((unit ^ (row & 7)) << 4); }

// ---- mbarriers ----------------------------------------------------------------------------------
__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count));
}
__device__ __forceinline__ void fence_barrier_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::); }
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(smem_addr(bar)) : "memory");
}
// Arrives once every cp.async this thread issued before has landed (counts against the init count).
__device__ __forceinline__ void mbar_arrive_cp_async(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// A loop on mbarrier.try_wait.parity with the given semantics and scope (operands: the barrier's
// shared address, the parity of the phase waited for).
#define LCATTN_MBAR_WAIT_LOOP(SEMANTICS)                              \
  "{\n.reg .pred done;\nwait_%=:\nmbarrier.try_wait.parity" SEMANTICS \
  ".shared::cta.b64 done, [%0], %1;\n@!done bra wait_%=;\n}\n"
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(LCATTN_MBAR_WAIT_LOOP("")::"r"(smem_addr(bar)), "r"(parity) : "memory");
}

// ---- clusters ----------------------------------------------------------------------------------
// Every thread of every CTA of the cluster: arrive (releasing its writes) and wait (acquiring theirs);
// a thread that leaves after arriving, without waiting, uses cluster_arrive.
__device__ __forceinline__ void cluster_arrive() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void cluster_sync() {
  cluster_arrive();
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
// The address of this CTA's shared `addr` in the CTA of cluster rank `rank` (shared::cluster).
__device__ __forceinline__ uint32_t cluster_map(uint32_t addr, uint32_t rank) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(addr), "r"(rank));
  return remote;
}
__device__ __forceinline__ void st_cluster_v4(uint32_t remote, float4 v) {
  asm volatile("st.shared::cluster.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"r"(remote), "f"(v.x), "f"(v.y), "f"(v.z),
               "f"(v.w)
               : "memory");
}
// Arrives on an mbarrier of another CTA of the cluster (`remote` from cluster_map), releasing this
// thread's earlier writes to the cluster.
__device__ __forceinline__ void mbar_arrive_cluster(uint32_t remote) {
  asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];\n" ::"r"(remote) : "memory");
}
// Waits for a phase of this CTA's mbarrier that other CTAs of the cluster arrive on, acquiring their writes.
__device__ __forceinline__ void mbar_wait_cluster(uint64_t* bar, uint32_t parity) {
  asm volatile(LCATTN_MBAR_WAIT_LOOP(".acquire.cluster")::"r"(smem_addr(bar)), "r"(parity) : "memory");
}

// ---- copies and fences --------------------------------------------------------------------------
// Arrives on `bar` and adds `bytes` to the bytes its phase waits for (the TMA copies' complete_tx).
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}
// The box of the 2-D tensor map `map` at (x, y) into shared `dst` (TMA), its bytes completing on `bar`.
__device__ __forceinline__ void tma_load_2d(void* dst, const void* map, uint64_t* bar, int x, int y) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
      "[%4];\n" ::"r"(smem_addr(dst)),
      "l"(map), "r"(x), "r"(y), "r"(smem_addr(bar))
      : "memory");
}
// 16 bytes global -> shared; src_bytes = 0 writes zeros and reads nothing.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes)
               : "memory");
}
// 8 bytes global -> shared (through L1), for sources only 8-byte aligned.
__device__ __forceinline__ void cp_async_8(void* dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(smem_addr(dst)), "l"(src) : "memory");
}
// 4 bytes global -> shared (through L1); src_bytes = 0 writes zeros and reads nothing.
__device__ __forceinline__ void cp_async_4(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes)
               : "memory");
}
// Asks L2 for the 128-byte line holding `addr` (global), without waiting for it.
__device__ __forceinline__ void prefetch_l2(const void* addr) {
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(addr));
}
// Waits until every cp.async this thread issued has landed.
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
// Orders this thread's ordinary shared-memory stores before later wgmma reads of them.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Arrives on a named barrier without waiting (its other `threads` - this warp's arrive with bar.sync).
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

template <int kRegs>
__device__ __forceinline__ void reg_alloc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void reg_dealloc() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// ---- wgmma --------------------------------------------------------------------------------------
// Shared-memory matrix descriptor, 128B swizzle: start address, leading and stride byte offsets.
// K-major operand: rows 128 B apart, 8-row groups `stride` apart (lead unused). MN-major operand:
// 64-element column blocks `lead` apart, 8-row (K) groups `stride` apart.
__device__ __forceinline__ uint64_t smem_desc(const void* p, uint32_t lead, uint32_t stride) {
  return uint64_t((smem_addr(p) & 0x3FFFF) >> 4) | uint64_t((lead >> 4) & 0x3FFF) << 16 |
         uint64_t((stride >> 4) & 0x3FFF) << 32 | uint64_t(1) << 62;
}

// The descriptor of the operand `bytes` (a multiple of 16) further on in shared memory. Only the start
// address field (bits 0-13, address / 16) moves, and it cannot carry into the next field (shared
// addresses stay below 256 KB): one 32-bit add a k-step where rebuilding the descriptor takes about
// seven instructions and a move to a uniform register.
__device__ __forceinline__ uint64_t desc_advance(uint64_t desc, uint32_t bytes) {
  return (desc & ~uint64_t(0xFFFFFFFFu)) | uint32_t(uint32_t(desc) + (bytes >> 4));
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// Keeps the compiler from moving accumulator reads or writes across an asynchronous wgmma.
template <int N>
__device__ __forceinline__ void fence_registers(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// The accumulator operands of a wgmma with M = 64, in blocks of 32: their names in the instruction
// and their "+f" constraints on the float array d.
#define LCATTN_ACC_NAMES_0_31                                                                                      \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, " \
  "%24, %25, %26, %27, %28, %29, %30, %31"
#define LCATTN_ACC_NAMES_32_63                                                                                     \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, " \
  "%54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define LCATTN_ACC_NAMES_64_127                                                                                        \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, "     \
  "%86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, "   \
  "%107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, " \
  "%126, %127"
#define LCATTN_ACC_0_31(d)                                                                                        \
  "+f"((d)[0]), "+f"((d)[1]), "+f"((d)[2]), "+f"((d)[3]), "+f"((d)[4]), "+f"((d)[5]), "+f"((d)[6]), "+f"((d)[7]), \
      "+f"((d)[8]), "+f"((d)[9]), "+f"((d)[10]), "+f"((d)[11]), "+f"((d)[12]), "+f"((d)[13]), "+f"((d)[14]),      \
      "+f"((d)[15]), "+f"((d)[16]), "+f"((d)[17]), "+f"((d)[18]), "+f"((d)[19]), "+f"((d)[20]), "+f"((d)[21]),    \
      "+f"((d)[22]), "+f"((d)[23]), "+f"((d)[24]), "+f"((d)[25]), "+f"((d)[26]), "+f"((d)[27]), "+f"((d)[28]),    \
      "+f"((d)[29]), "+f"((d)[30]), "+f"((d)[31])
#define LCATTN_ACC_32_63(d)                                                                                    \
  "+f"((d)[32]), "+f"((d)[33]), "+f"((d)[34]), "+f"((d)[35]), "+f"((d)[36]), "+f"((d)[37]), "+f"((d)[38]),     \
      "+f"((d)[39]), "+f"((d)[40]), "+f"((d)[41]), "+f"((d)[42]), "+f"((d)[43]), "+f"((d)[44]), "+f"((d)[45]), \
      "+f"((d)[46]), "+f"((d)[47]), "+f"((d)[48]), "+f"((d)[49]), "+f"((d)[50]), "+f"((d)[51]), "+f"((d)[52]), \
      "+f"((d)[53]), "+f"((d)[54]), "+f"((d)[55]), "+f"((d)[56]), "+f"((d)[57]), "+f"((d)[58]), "+f"((d)[59]), \
      "+f"((d)[60]), "+f"((d)[61]), "+f"((d)[62]), "+f"((d)[63])
#define LCATTN_ACC_64_127(d)                                                                                          \
  "+f"((d)[64]), "+f"((d)[65]), "+f"((d)[66]), "+f"((d)[67]), "+f"((d)[68]), "+f"((d)[69]), "+f"((d)[70]),            \
      "+f"((d)[71]), "+f"((d)[72]), "+f"((d)[73]), "+f"((d)[74]), "+f"((d)[75]), "+f"((d)[76]), "+f"((d)[77]),        \
      "+f"((d)[78]), "+f"((d)[79]), "+f"((d)[80]), "+f"((d)[81]), "+f"((d)[82]), "+f"((d)[83]), "+f"((d)[84]),        \
      "+f"((d)[85]), "+f"((d)[86]), "+f"((d)[87]), "+f"((d)[88]), "+f"((d)[89]), "+f"((d)[90]), "+f"((d)[91]),        \
      "+f"((d)[92]), "+f"((d)[93]), "+f"((d)[94]), "+f"((d)[95]), "+f"((d)[96]), "+f"((d)[97]), "+f"((d)[98]),        \
      "+f"((d)[99]), "+f"((d)[100]), "+f"((d)[101]), "+f"((d)[102]), "+f"((d)[103]), "+f"((d)[104]), "+f"((d)[105]),  \
      "+f"((d)[106]), "+f"((d)[107]), "+f"((d)[108]), "+f"((d)[109]), "+f"((d)[110]), "+f"((d)[111]), "+f"((d)[112]), \
      "+f"((d)[113]), "+f"((d)[114]), "+f"((d)[115]), "+f"((d)[116]), "+f"((d)[117]), "+f"((d)[118]), "+f"((d)[119]), \
      "+f"((d)[120]), "+f"((d)[121]), "+f"((d)[122]), "+f"((d)[123]), "+f"((d)[124]), "+f"((d)[125]), "+f"((d)[126]), \
      "+f"((d)[127])

// D[64x64] (+)= A[64x16] B[64x16]^T, A and B K-major in shared memory.
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" LCATTN_ACC_NAMES_0_31
      "}, "
      "%32, %33, p, 1, 1, 0, 0;\n}\n"
      : LCATTN_ACC_0_31(d)
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// D[64x32] (+)= A[64x16] B[32x16]^T, A and B K-major in shared memory.
__device__ __forceinline__ void wgmma_m64n32k16_ss(float (&d)[16], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// A D[64x128] wgmma with A and B K-major in shared memory: the 64 accumulators %0-%63, the two
// descriptors %64, %65 and the accumulate flag %66; `shape_types` and `tail` (the transpose
// immediates that 16-bit types take) complete the instruction.
#define LCATTN_WGMMA_M64N128_SS(shape_types, tail)                                                       \
  asm volatile(                                                                                          \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                                       \
      "wgmma.mma_async.sync.aligned." shape_types " {" LCATTN_ACC_NAMES_0_31 ", " LCATTN_ACC_NAMES_32_63 \
      "}, %64, %65, p, 1, 1" tail ";\n}\n"                                                               \
      : LCATTN_ACC_0_31(d), LCATTN_ACC_32_63(d)                                                          \
      : "l"(desc_a), "l"(desc_b), "r"(accumulate))

// D[64x128] (+)= A[64x16] B[128x16]^T in bf16.
__device__ __forceinline__ void wgmma_m64n128k16_ss(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  LCATTN_WGMMA_M64N128_SS("m64n128k16.f32.bf16.bf16", ", 0, 0");
}

// D[64x128] (+)= A[64x32] B[128x32]^T in e4m3 (fp8 takes only K-major operands: no transpose).
__device__ __forceinline__ void wgmma_m64n128k32_e4m3_ss(float (&d)[64], uint64_t desc_a, uint64_t desc_b,
                                                         int accumulate) {
  LCATTN_WGMMA_M64N128_SS("m64n128k32.f32.e4m3.e4m3", "");
}
#undef LCATTN_WGMMA_M64N128_SS

// A bf16 wgmma with B MN-major in shared memory, of `shape` (m64n256k16 or m64n128k16): its
// accumulators (`acc_names`, %0 on; `acc(d)` their constraints), then the A operand (`a_operand`), the
// B descriptor and the accumulate flag (`tail` names them and the immediates); the arguments after
// `tail` are the operands after the accumulators. The m64n128 form takes half the registers, for
// kernels whose launch leaves fewer than the 154 the m64n256 form's operands take (ptxas sizes one
// instruction by the launch's register count, not by setmaxnreg).
#define LCATTN_ACC_0_63(d) LCATTN_ACC_0_31(d), LCATTN_ACC_32_63(d)
#define LCATTN_ACC_0_127(d) LCATTN_ACC_0_31(d), LCATTN_ACC_32_63(d), LCATTN_ACC_64_127(d)
#define LCATTN_WGMMA_BMN(shape, acc_names, acc, a_operand, flag, tail, ...)                                          \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " flag                                                              \
               ", 0;\n"                                                                                              \
               "wgmma.mma_async.sync.aligned." shape ".f32.bf16.bf16 {" acc_names "}, " a_operand ", " tail ";\n}\n" \
               : acc(d)                                                                                              \
               : __VA_ARGS__)

// D[64x256] (+)= A[64x16] (registers) B[16x256], B MN-major in shared memory.
__device__ __forceinline__ void wgmma_m64n256k16_rs_bmn(float (&d)[128], const uint32_t (&a)[4], uint64_t desc_b,
                                                        int accumulate) {
  LCATTN_WGMMA_BMN("m64n256k16", LCATTN_ACC_NAMES_0_31 ", " LCATTN_ACC_NAMES_32_63 ", " LCATTN_ACC_NAMES_64_127,
                   LCATTN_ACC_0_127, "{%128, %129, %130, %131}", "%133", "%132, p, 1, 1, 1", "r"(a[0]), "r"(a[1]),
                   "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
}

// D[64x256] (+)= A[64x16] B[16x256], A K-major and B MN-major in shared memory.
__device__ __forceinline__ void wgmma_m64n256k16_ss_bmn(float (&d)[128], uint64_t desc_a, uint64_t desc_b,
                                                        int accumulate) {
  LCATTN_WGMMA_BMN("m64n256k16", LCATTN_ACC_NAMES_0_31 ", " LCATTN_ACC_NAMES_32_63 ", " LCATTN_ACC_NAMES_64_127,
                   LCATTN_ACC_0_127, "%128", "%130", "%129, p, 1, 1, 0, 1", "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// D[64x128] (+)= A[64x16] (registers) B[16x128], B MN-major in shared memory.
__device__ __forceinline__ void wgmma_m64n128k16_rs_bmn(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b,
                                                        int accumulate) {
  LCATTN_WGMMA_BMN("m64n128k16", LCATTN_ACC_NAMES_0_31 ", " LCATTN_ACC_NAMES_32_63, LCATTN_ACC_0_63,
                   "{%64, %65, %66, %67}", "%69", "%68, p, 1, 1, 1", "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]),
                   "l"(desc_b), "r"(accumulate));
}

// D[64x128] (+)= A[64x16] B[16x128], A K-major and B MN-major in shared memory.
__device__ __forceinline__ void wgmma_m64n128k16_ss_bmn(float (&d)[64], uint64_t desc_a, uint64_t desc_b,
                                                        int accumulate) {
  LCATTN_WGMMA_BMN("m64n128k16", LCATTN_ACC_NAMES_0_31 ", " LCATTN_ACC_NAMES_32_63, LCATTN_ACC_0_63, "%64", "%66",
                   "%65, p, 1, 1, 0, 1", "l"(desc_a), "l"(desc_b), "r"(accumulate));
}
#undef LCATTN_WGMMA_BMN
#undef LCATTN_ACC_0_63
#undef LCATTN_ACC_0_127
#undef LCATTN_ACC_NAMES_0_31
#undef LCATTN_ACC_NAMES_32_63
#undef LCATTN_ACC_NAMES_64_127
#undef LCATTN_ACC_0_31
#undef LCATTN_ACC_32_63
#undef LCATTN_ACC_64_127

}  // namespace sm90
}  // namespace lcattn
