// Version 6 of the Hopper attention kernel (SPEC 5; kernel notes): blocks of 64 keys taken in pairs,
// the schedule of FlashMLA's sparse prefill. The default for bf16 entries at 4 key blocks or more
// outside the decode's clusters (pair_schedule_applies in attention_sm90.cu; LCATTN_ATTN_PAIR=0 or 1
// overrides); kv_fp8 entries run version 4, or this kernel's kPairFp8 form with LCATTN_ATTN_FP8_PAIR=1.
//
// One CTA = one query token x 64 heads (x one split of its keys, written as a partial result that
// attention_sm90 combines, as version 4's), three warpgroups. For the pair of blocks (2i, 2i + 1):
//   WG w computes the logits of block 2i + w over all 512 dims (Q K^T, 32 k-steps) and their softmax,
//   then accumulates its half of O (dims 256w .. 256w + 255) from both blocks: its own P from
//   registers, the other warpgroup's from shared memory. The two keep one running maximum: WG0
//   publishes its block's new maximum, WG1 folds its own in and publishes the pair's, WG0 rescales
//   its P and its half of O to it. WG0 issues the next pair's logits while its second product runs.
//   Against version 4, where both warpgroups add each other's partial logits and run the same
//   softmax on every block: no partial-logit exchange, each softmax once, a 64-key P exchanged in
//   bf16, and one warpgroup's products overlap the other's softmax.
//   WG2, producer: key buffer 0 holds the even blocks, buffer 1 the odd ones, each filled in halves
//   (dims 0-255, 256-511) with their own full and free barriers. A half is free once the last
//   product that reads it is done: buffer 0's first half after WG0's own product, its second after
//   WG1's product with P0; buffer 1's first after WG0's product with P1, its second after WG1's own
//   (each block's logits end before its P exists). All 128 producer threads fill every half in the
//   order the halves are freed, (0, 0), (1, 1), (0, 1), (1, 0) as (buffer, half), from row addresses
//   looked up a pair ahead (load_half).
// Shared memory: Q 64 KB, 2 key buffers of 64 KB, 2 P tiles of 8 KB, all 128B-swizzled.
// kPairFp8 (kv_fp8 entries): a fourth warpgroup, the widener, so that the math warpgroups read bf16
// tiles exactly as for bf16 entries. The producer (the copier here) copies an entry's bytes of a half
// as they are, in 8-byte cp.async pieces, to staging places inside that half (HalfStaging) and arrives
// on the half's `staged` barrier; the widener waits for it, widens the half's entries to bf16 in place
// (exact), fences and arrives on the half's `full` barrier, which the math warpgroups wait for. The
// math warpgroups never touch fp8, and the producer never waits for its copies.
#include "attention_sm90.h"
#include "attention_sm90_common.cuh"
#include "common/device.h"
#include "common/fp8.cuh"

#include <utility>

namespace lcattn {
namespace {

// Three warpgroups, four with kPairFp8 (the widener).
constexpr int pair_threads(int form) { return form & kPairFp8 ? 512 : 384; }

struct PairStorage {
  alignas(1024) uint8_t q[kChunks * kChunkBytes];     // Q [8 chunks][64 heads][128 B]
  alignas(1024) uint8_t k[2][kChunks * kChunkBytes];  // block 2i + w in buffer w: [8 chunks][64 keys][128 B]
  alignas(1024) uint8_t p[2][kChunkBytes];            // WG w's P [64 heads][64 keys] bf16 (K-major A operand)
  float key_bias[2][kKeys];                           // 0, or -inf for an absent key
  float row_max[2][kHeads];        // the running maximum as WG0 publishes it ([0]), then the pair's from WG1 ([1])
  float row_sum[2][kHeads];        // each warpgroup's sums, at the end
  float2 unrotate[kMaxRopePairs];  // (cos, -sin) of the query position per RoPE pair
  uint64_t q_full, full[2][2], empty[2][2];  // [buffer][half]
  int last_split;                            // fused combine: the last split of its query
  // kPairFp8 only, after the fields of the bf16 forms (whose places stay as they are):
  uint64_t staged[2][2];        // [buffer][half]: the copier's pieces have landed
  uint8_t entry_row[2][kKeys];  // 1 for a row copied as a kv_fp8 entry (the widener widens it): marks_with_half
};
constexpr int kSmemBytes = sizeof(PairStorage) + 1024;  // + room to align the base to 1024
static_assert(kSmemBytes <= 232448, "more shared memory than an H100 block may have");

// Registers of a thread of each warpgroup; kPairFp8's four warpgroups share the SM's 64K as the three
// of the bf16 forms do.
constexpr int kMathRegs = 216, kProducerRegs = 72;
constexpr int kFp8MathRegs = 208, kCopierRegs = 64, kWidenerRegs = 32;
static_assert(2 * kMathRegs + kProducerRegs == 504 && 2 * kFp8MathRegs + kCopierRegs + kWidenerRegs == 512,
              "the register file of one CTA an SM");
// What a form's warpgroups hold after their setmaxnreg, 128 threads each: the launch must give at least
// that (ptxas gives 168 a thread to 384 threads, 128 to 512), else the math's setmaxnreg.inc never returns.
constexpr int pair_registers(int form) {
  return 128 * (form & kPairFp8 ? 2 * kFp8MathRegs + kCopierRegs + kWidenerRegs : 2 * kMathRegs + kProducerRegs);
}
// The most a launch of one CTA an SM can give: 64K / threads, in steps of 8 a thread.
constexpr int launch_registers(int form) { return 65536 / pair_threads(form) / 8 * 8 * pair_threads(form); }
static_assert(launch_registers(0) >= pair_registers(0) && launch_registers(kPairFp8) >= pair_registers(kPairFp8),
              "more registers asked by setmaxnreg than a launch can give");

// Named barriers (0 is __syncthreads) between the two math warpgroups (256 threads): one arrives,
// the other waits.
// kBarStaged + w: math warpgroup w's own 128 threads (the staged output).
enum : int { kBarMax0 = 1, kBarMax1 = 2, kBarP0 = 3, kBarP1 = 4, kBarSums = 5, kBarCombine = 6, kBarStaged = 7 };

// Producer: 16-byte unit `unit` of each of the 4 chunks of half h of bf16 row `row` of a key buffer,
// from `src_row` (null: zeros, reading nothing, from `any`).
__device__ __forceinline__ void copy_half_row(uint8_t* tile, int unit, int h, int row, const bf16* src_row,
                                              const bf16* any) {
  const uint8_t* src = reinterpret_cast<const uint8_t*>(src_row ? src_row : any) + (4 * h * 8 + unit) * 16;
  uint8_t* dst = tile + 4 * h * kChunkBytes + swizzled(row, unit);
#pragma unroll
  for (int c = 0; c < 4; ++c) cp_async_16(dst + c * kChunkBytes, src + c * 128, src_row ? 16 : 0);
}

// Producer: half h (dims 256h .. 256h + 255, chunks 4h .. 4h + 3) of a key buffer's 64 rows, by the
// 128 producer threads: thread t copies 16-byte unit t % 8 of each 128-byte chunk row of its rows
// 4 (t / 8) .. + 3, whose sources (null: absent, zero-filled from `any`) it looked up itself, so
// that a warp's copy is 4 rows x 128 contiguous bytes and no address crosses lanes; 16 copies a
// thread. A row's source and size are chosen once (an absent row reads nothing, from `any`), so that
// each copy is one LDGSTS with immediate offsets (a choice per copy took an IMAD.WIDE and two SEL
// more, and prefill 2-13% longer: kernel notes). With h = 0 the threads of unit 0 set their rows' bias.
__device__ __forceinline__ void load_half(uint8_t* tile, int t, int h, const bf16* const (&rows)[4], const bf16* any,
                                          float* bias) {
  const int unit = t % 8, row0 = 4 * (t / 8);
#pragma unroll
  for (int r = 0; r < 4; ++r) copy_half_row(tile, unit, h, row0 + r, rows[r], any);
  if (h == 0 && unit == 0)
#pragma unroll
    for (int r = 0; r < 4; ++r) bias[row0 + r] = rows[r] ? 0.f : -INFINITY;
}

// kPairFp8: where half h (bf16 dims 256 h .., linear bytes [512 h, 512 h + 512) as in linear_offset) of
// a kv_fp8 entry waits in its own half-row for the widener: its `units` e4m3 units of 8 channels (32,
// or (nope - 256) / 8 for h = 1) at half-row bytes [8 units, 16 units), the upper half of what they
// widen to; a copy of the entry's 8 scale bytes just before them; for h = 1 its RoPE channels (bf16)
// straight at their place [16 units, 512). Widened unit i, at [16 i, 16 i + 16), overwrites staged
// units 2 i - units and 2 i - units + 1 at most, never one past i.
struct HalfStaging {
  KvFp8Layout l;
  int h, units, pieces;  // pieces of 8 bytes: the e4m3 units, the RoPE channels (h = 1), the scales
  __device__ HalfStaging(const KvFp8Layout& layout, int half)
      : l(layout),
        h(half),
        units(half == 0 ? 32 : (layout.nope() - 256) / 8),
        pieces(units + (half == 0 ? 0 : layout.rope_dim / 4) + 1) {}
  __device__ int scales_at() const { return 512 * h + 8 * units - 8; }         // linear
  __device__ int unit_at(int i) const { return 512 * h + 8 * units + 8 * i; }  // linear, staged unit i
  // Piece i: (its byte in the entry, its linear destination).
  __device__ int2 piece(int i) const {
    if (i < units) return make_int2(256 * h + 8 * i, unit_at(i));
    if (i < pieces - 1) return make_int2(l.nope() + 8 * (i - units), 512 * h + 16 * units + 8 * (i - units));
    return make_int2(l.scale_offset(), scales_at());
  }
};

// kPairFp8, the copier: half st.h of key buffer w's 64 rows as load_half, but a row that is a kv_fp8
// entry (entry[r]) goes in 8-byte pieces (entries are 8-byte aligned) to its staging places, the row's
// 8 threads taking pieces t % 8, t % 8 + 8, ...; the threads of unit 0 also set their rows' bias with
// h = 0 and mark the rows the widener widens with the buffer's first half in the copier's order
// (h = w), before the widener reads the marks for either half (marks_with_half).
__device__ __forceinline__ bool marks_with_half(int w, int h) { return h == w; }
__device__ __forceinline__ void load_half_kv_fp8(uint8_t* tile, int t, int w, const HalfStaging& st,
                                                 const bf16* const (&rows)[4], const bool (&entry)[4], const bf16* any,
                                                 float* bias, uint8_t* entry_row) {
  const int unit = t % 8, row0 = 4 * (t / 8);
#pragma unroll
  for (int k = 0; k < 6; ++k) {  // at most 41 pieces (h = 1 with 64 RoPE channels)
    const int i = unit + 8 * k;
    if (i < st.pieces) {
      const int2 at = st.piece(i);
#pragma unroll
      for (int r = 0; r < 4; ++r)
        if (entry[r])
          cp_async_8(tile + linear_offset(row0 + r, at.y), reinterpret_cast<const uint8_t*>(rows[r]) + at.x);
    }
  }
#pragma unroll
  for (int r = 0; r < 4; ++r)
    if (!entry[r]) copy_half_row(tile, unit, st.h, row0 + r, rows[r], any);
  if (unit == 0)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      if (st.h == 0) bias[row0 + r] = rows[r] ? 0.f : -INFINITY;
      if (marks_with_half(w, st.h)) entry_row[row0 + r] = entry[r];
    }
}

// kPairFp8, the widener warpgroup: half h of a key buffer (shared address `tile`) widened to bf16 in
// place for the rows marked in `entry_row`; `units` as HalfStaging's. Row 16 warp + lane / 2 is its two
// lanes' (q = lane % 2), in groups of 8 units (a chunk, one scale tile): each lane reads its 4 staged
// units, the warp syncs, each writes them widened (lane q = 1 in the order k ^ 1, so that the two lanes
// of a row meet other banks). A group's stores overwrite only staged units of its own group or earlier
// ones (HalfStaging), all read before its sync; the scales are read before the first.
__device__ __forceinline__ void widen_half(uint32_t tile, uint32_t entry_row, int h, int units, int warp, int lane) {
  const int r = 16 * warp + lane / 2, q = lane % 2;
  const bool mine = lds_u8(entry_row + r) != 0;
  // Byte `at` (0 .. 511) of this row's half, swizzled: linear_offset(r, 512 h + at) from the row's base
  // (through linear_offset and HalfStaging's places the widener spilled at its 32 registers).
  const uint32_t row = tile + 4 * h * kChunkBytes + r * 128;
  auto place = [&](int at) { return row + (at >> 7) * kChunkBytes + ((((at >> 4) & 7) ^ (r & 7)) << 4) + (at & 15); };
  uint32_t scales = 0;  // the scale bytes of tiles 4 h .. 4 h + 3
  if (mine) {
    const uint2 both = lds_v2(place(8 * units - 8));
    scales = h == 0 ? both.x : both.y;
  }
  for (int g = 0; 8 * g < units; ++g) {
    const int first = 8 * g + 4 * q;  // this lane's units first .. first + 3
    uint2 raw[4];
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (mine && first + (k ^ q) < units) raw[k] = lds_v2(place(8 * units + 8 * (first + (k ^ q))));
    __syncwarp();
    const float scale = kv_fp8_scale(uint8_t(scales >> (8 * g)));
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (mine && first + (k ^ q) < units) sts_v4(place(16 * (first + (k ^ q))), widen8_e4m3(raw[k], scale));
  }
}

// kPairRowsToL2: the producer thread t asks L2 for line t % 8 of each of its 8 rows (1 KB each; the 8
// threads of a row ask for all of it), a pair's time before the copies that read them.
__device__ __forceinline__ void rows_to_l2(int t, const bf16* const (&rows)[2][4]) {
#pragma unroll
  for (int w = 0; w < 2; ++w)
#pragma unroll
    for (int r = 0; r < 4; ++r)
      if (rows[w][r]) prefetch_l2(rows[w][r] + (t % 8) * 64);
}

// S[64 heads x 64 keys] += Q K^T over the dims of half h of key buffer w (first: S = instead), once
// that half has landed; issued and committed as its own group, not waited.
// kKeyFence: a proxy fence between the cp.async writes (generic proxy) and the wgmma reads (async
// proxy); CUTLASS's cp.async + wgmma mainloops and FlashMLA's sparse prefill issue none there.
template <bool kKeyFence>
__device__ __forceinline__ void issue_logits_half(float (&s)[32], PairStorage& sm, int w, int h, uint32_t phase,
                                                  bool first) {
  mbar_wait(&sm.full[w][h], phase);
  if constexpr (kKeyFence) fence_proxy_async();
  const uint64_t q_desc = smem_desc(sm.q + 4 * h * kChunkBytes, 16, 1024);
  const uint64_t k_desc = smem_desc(sm.k[w] + 4 * h * kChunkBytes, 16, 1024);
  wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < 16; ++ks) {
    const int at = (ks / 4) * kChunkBytes + (ks % 4) * 32;
    wgmma_m64n64k16_ss(s, desc_advance(q_desc, at), desc_advance(k_desc, at), !first || ks > 0);
  }
  wgmma_commit();
}

// O and the sums rescaled from the old to the new maximum of each row (0 while nothing was seen).
__device__ __forceinline__ void rescale(float (&o)[128], float (&l)[2], const float (&factor)[2]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] *= factor[h];
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      o[j * 4 + 2 * h] *= factor[h];
      o[j * 4 + 2 * h + 1] *= factor[h];
    }
  }
}

// s := exp2(s - max_ref(m)) per row, added to the sums l.
__device__ __forceinline__ void exponentiate(float (&s)[32], const float (&m)[2], float (&l)[2]) {
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    s[i] = exp2_ftz(s[i] - max_ref(m[(i % 4) / 2]));
    l[(i % 4) / 2] += s[i];
  }
}

// P (bf16) as the A operand of the 4 k-steps of 16 keys of an RS wgmma.
__device__ __forceinline__ void pack_p(const float (&s)[32], uint32_t (&pa)[4][4]) {
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    pa[j / 2][(j % 2) * 2] = pack_bf16(s[j * 4], s[j * 4 + 1]);
    pa[j / 2][(j % 2) * 2 + 1] = pack_bf16(s[j * 4 + 2], s[j * 4 + 3]);
  }
}

// P (bf16) into a swizzled [64 heads][64 keys] tile: the thread's accumulator rows r0 (+ 8), keys
// 8j + c0, + 1; then the fence that lets the other warpgroup's wgmma read it.
__device__ __forceinline__ void store_p(uint8_t* tile, const float (&s)[32], int warp, int lane) {
  const int r0 = warp * 16 + lane / 4, c0 = (lane % 4) * 2;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    *reinterpret_cast<uint32_t*>(tile + swizzled(r0, j) + c0 * 2) = pack_bf16(s[j * 4], s[j * 4 + 1]);
    *reinterpret_cast<uint32_t*>(tile + swizzled(r0 + 8, j) + c0 * 2) = pack_bf16(s[j * 4 + 2], s[j * 4 + 3]);
  }
  fence_proxy_async();
}

// The dims 128 n .. 128 n + 127 of a math thread's O (its accumulators 64 n ..), for the m64n128 products.
__device__ __forceinline__ float (&o_half(float (&o)[128], int n))[64] {
  return *reinterpret_cast<float (*)[64]>(o + 64 * n);
}

// O[:, dims of half h] += P V[:, dims of half h] for key buffer w, P from registers. kNarrow (the 512
// threads of kPairFp8): as two m64n128 products a k-step (the dims 0-127, then 128-255 of the half).
template <bool kNarrow>
__device__ __forceinline__ void issue_pv_own(float (&o)[128], const uint32_t (&pa)[4][4], const PairStorage& sm, int w,
                                             int h) {
  const uint64_t v_desc = smem_desc(sm.k[w] + 4 * h * kChunkBytes, kChunkBytes, 1024);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    if constexpr (kNarrow) {
#pragma unroll
      for (int n = 0; n < 2; ++n)
        wgmma_m64n128k16_rs_bmn(o_half(o, n), pa[kk], desc_advance(v_desc, kk * 2048 + n * 2 * kChunkBytes), 1);
    } else {
      wgmma_m64n256k16_rs_bmn(o, pa[kk], desc_advance(v_desc, kk * 2048), 1);
    }
  }
  wgmma_commit();
}

// O[:, dims of half h] += P V[:, dims of half h] for key buffer w, P from the other warpgroup's tile;
// kNarrow as in issue_pv_own.
template <bool kNarrow>
__device__ __forceinline__ void issue_pv_other(float (&o)[128], const PairStorage& sm, int w, int h) {
  const uint64_t p_desc = smem_desc(sm.p[w], 16, 1024);
  const uint64_t v_desc = smem_desc(sm.k[w] + 4 * h * kChunkBytes, kChunkBytes, 1024);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    if constexpr (kNarrow) {
#pragma unroll
      for (int n = 0; n < 2; ++n)
        wgmma_m64n128k16_ss_bmn(o_half(o, n), desc_advance(p_desc, kk * 32),
                                desc_advance(v_desc, kk * 2048 + n * 2 * kChunkBytes), 1);
    } else {
      wgmma_m64n256k16_ss_bmn(o, desc_advance(p_desc, kk * 32), desc_advance(v_desc, kk * 2048), 1);
    }
  }
  wgmma_commit();
}

// kForm: the PairForm flags (attention_sm90.h); the dispatch's default (pair_form in attention_sm90.cu)
// is the staged output, with the key fence.
template <int kForm>
__global__ void __launch_bounds__(pair_threads(kForm), 1) attention_sm90_pair_kernel(const AttentionParams p) {
  constexpr bool kStagedOut = kForm & kPairStagedOut;
  constexpr bool kKeyFence = !(kForm & kPairNoKeyFence);
  constexpr bool kFp8 = kForm & kPairFp8;
  extern __shared__ uint8_t smem_raw[];
  // Aligned by pointer arithmetic on the shared array, so accesses stay LDS/STS (kernel notes).
  PairStorage& sm = *reinterpret_cast<PairStorage*>(smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023));
  const CtaWork work(p);
  const QueryKeys keys(p, work.row, work.b, work.pos);
  const SplitRange range(keys.n_keys, p.splits, work.split, 2);  // whole pairs but in the last split
  const int pairs = (range.last - range.first + 1) / 2;          // an odd last block pairs with an absent one
  const int wg = threadIdx.x / 128, tid = threadIdx.x % 128, warp = tid / 32, lane = threadIdx.x % 32;

  if (threadIdx.x == 0) {
    mbar_init(&sm.q_full, 128);
    for (int w = 0; w < 2; ++w) {
      mbar_init(&sm.full[w][0], kFp8 ? 128 : 128 + 16);  // 128 cp.async arrivals + the 16 bias writers' stores
      mbar_init(&sm.full[w][1], 128);                    // kFp8: the widener's 128 threads, after their fence
      mbar_init(&sm.empty[w][0], 128);                   // one math warpgroup, after its product that reads it last
      mbar_init(&sm.empty[w][1], 128);
      if constexpr (kFp8)  // + the 16 bias writers' or row markers' stores, in the halves that have them
        for (int h = 0; h < 2; ++h) mbar_init(&sm.staged[w][h], h == 0 || marks_with_half(w, h) ? 128 + 16 : 128);
    }
    fence_barrier_init();
  }
  __syncthreads();

  if (wg == 2) {  // ---------------------------------------------------------------- producer
    if constexpr (kFp8)
      reg_dealloc<kCopierRegs>();
    else
      reg_dealloc<kProducerRegs>();
    const bf16* q = p.q + (work.row * p.H + work.group * kHeads) * kDim;
    load_tile(sm.q, warp, lane, q + (warp * 16 + lane % 16) * kDim, q, nullptr);  // q: any valid address
    mbar_arrive_cp_async(&sm.q_full);
    // This thread's 4 rows of the pair's two blocks (block first + 2 it + w in buffer w; absent past
    // the split's last); the next pair's looked up once this pair's copies are issued.
    const int t = threadIdx.x - 256;
    auto look_up = [&](int it, const bf16*(&rows)[2][4]) {
      int u[2][4], entry[2][4];  // the 8 index loads first (in flight together), then the 8 rows
#pragma unroll
      for (int w = 0; w < 2; ++w)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int blk = range.first + 2 * it + w;
          u[w][r] = blk < range.last ? blk * kKeys + 4 * (t / 8) + r : keys.n_keys;  // n_keys: absent
          entry[w][r] = keys.entry(u[w][r]);
        }
#pragma unroll
      for (int w = 0; w < 2; ++w)
#pragma unroll
        for (int r = 0; r < 4; ++r) rows[w][r] = static_cast<const bf16*>(keys.row(u[w][r], entry[w][r]));
    };
    const bf16* rows[2][4];
    if (pairs > 0) look_up(0, rows);
    for (int it = 0; it < pairs; ++it) {
      // kFp8: not unrolled, else the pieces' places of all four steps are hoisted out of the pairs' loop
      // and spill at the copier's registers.
#pragma unroll(kFp8 ? 1 : 4)
      for (int step = 0; step < 4; ++step) {  // in the order the halves are freed: (0, 0), (1, 1), (0, 1), (1, 0)
        const int w = step % 2, h = (step + step / 2) % 2;
        if (it > 0) mbar_wait(&sm.empty[w][h], (it - 1) & 1);
        if constexpr (kFp8) {
          const int u0 = (range.first + 2 * it + w) * kKeys + 4 * (t / 8);  // the key of this thread's first row
          const bf16* mine[4];  // rows[w], chosen by value (w is not known at compile time here)
          bool entry[4];
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            mine[r] = w == 0 ? rows[0][r] : rows[1][r];
            entry[r] = mine[r] && u0 + r >= keys.n_window;
          }
          load_half_kv_fp8(sm.k[w], t, w, HalfStaging(KvFp8Layout{kDim, p.rope_dim}, h), mine, entry, q, sm.key_bias[w],
                           sm.entry_row[w]);
          mbar_arrive_cp_async(&sm.staged[w][h]);
          if ((h == 0 || marks_with_half(w, h)) && t % 8 == 0) mbar_arrive(&sm.staged[w][h]);
        } else {
          load_half(sm.k[w], t, h, rows[w], q, sm.key_bias[w]);
          mbar_arrive_cp_async(&sm.full[w][h]);
          if (h == 0 && t % 8 == 0) mbar_arrive(&sm.full[w][0]);
        }
      }
      if (it + 1 < pairs) {
        look_up(it + 1, rows);  // the copies above already hold their addresses
        if constexpr (kForm & kPairRowsToL2) rows_to_l2(t, rows);
      }
    }
    return;
  }

  if constexpr (kFp8) {
    if (wg == 3) {  // -------------------------------------------------------------- widener
      reg_dealloc<kWidenerRegs>();
      for (int it = 0; it < pairs; ++it) {
#pragma unroll 1
        for (int step = 0; step < 4; ++step) {  // the halves in the copier's order (not unrolled: as there)
          const int w = step % 2, h = (step + step / 2) % 2;
          mbar_wait(&sm.staged[w][h], it & 1);
          widen_half(smem_addr(sm.k[w]), smem_addr(sm.entry_row[w]), h,
                     HalfStaging(KvFp8Layout{kDim, p.rope_dim}, h).units, warp, lane);
          fence_proxy_async();  // the widened units (ordinary stores) before the math's wgmma reads them
          mbar_arrive(&sm.full[w][h]);
        }
      }
      return;
    }
  }

  // ------------------------------------------------------------------------------------ math
  if constexpr (kFp8)
    reg_alloc<kFp8MathRegs>();
  else
    reg_alloc<kMathRegs>();
  // The RoPE table, by threads 0 .. rope_dim / 2 - 1 (math warp 0) while Q loads; the row sums' barrier
  // after the pairs, which every CTA meets, orders it before the epilogue's and the fused combine's reads.
  fill_unrotate(sm.unrotate, p, work.pos);
  const int r0 = warp * 16 + lane / 4;  // this thread's rows r0 and r0 + 8 of every accumulator
  const int c0 = (lane % 4) * 2;        // and columns c0, c0 + 1 of every 8-column block
  const float scale = p.scale * kLog2e;
  float o[128];  // O[64 heads, dims 256 wg .. 256 wg + 255], unnormalised
#pragma unroll
  for (int i = 0; i < 128; ++i) o[i] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};  // base-2 max and this WG's sums
  float sacc[32];
  uint32_t pa[4][4];

  mbar_wait(&sm.q_full, 0);
  if (wg == 0) {
    if (pairs > 0) {
      issue_logits_half<kKeyFence>(sacc, sm, 0, 0, 0, true);
      issue_logits_half<kKeyFence>(sacc, sm, 0, 1, 0, false);
      wgmma_wait<0>();
      fence_registers(sacc);
    }
    for (int it = 0; it < pairs; ++it) {
      // Block 2i's softmax against the running maximum; publish the new maximum to WG1.
      float m_new[2] = {m_run[0], m_run[1]}, factor[2];
      scale_logits(sacc, sm.key_bias[0], scale, c0, m_new);
      for (int h = 0; h < 2; ++h) factor[h] = exp2_ftz(m_run[h] - max_ref(m_new[h]));
      rescale(o, l_run, factor);
      exponentiate(sacc, m_new, l_run);
      if (lane % 4 == 0) sm.row_max[0][r0] = m_new[0], sm.row_max[0][r0 + 8] = m_new[1];
      named_barrier_arrive(kBarMax0, 256);
      // O += P0 V0 (first half of the dims); buffer 0's first half free once it is done, so that its
      // refill for the next pair starts while WG1 runs its softmax.
      pack_p(sacc, pa);
      issue_pv_own<kFp8>(o, pa, sm, 0, 0);
      wgmma_wait<0>();
      fence_registers(o);
      mbar_arrive(&sm.empty[0][0]);
      // The pair's maximum from WG1: P0 rescaled to it and handed to WG1 (0 when block 2i had no key,
      // even if the pair's maximum is far below 0); then O and the sums.
      named_barrier_sync(kBarMax1, 256);
      for (int h = 0; h < 2; ++h) {
        const float m_pair = sm.row_max[1][r0 + 8 * h];
        factor[h] = exp2_ftz(m_new[h] - max_ref(m_pair));
        m_run[h] = m_pair;
      }
#pragma unroll
      for (int i = 0; i < 32; ++i) sacc[i] *= factor[(i % 4) / 2];
      store_p(sm.p[0], sacc, warp, lane);
      named_barrier_arrive(kBarP0, 256);
      rescale(o, l_run, factor);
      // O += P1 V1 (first half of the dims) with WG1's P1; the next pair's logits meanwhile: buffer 1's
      // first half is free as soon as the product is done, before buffer 0's second half has landed.
      named_barrier_sync(kBarP1, 256);
      issue_pv_other<kFp8>(o, sm, 1, 0);
      if (it + 1 < pairs) {
        issue_logits_half<kKeyFence>(sacc, sm, 0, 0, (it + 1) & 1, true);
        wgmma_wait<1>();
        fence_registers(o);
        mbar_arrive(&sm.empty[1][0]);
        issue_logits_half<kKeyFence>(sacc, sm, 0, 1, (it + 1) & 1, false);
        wgmma_wait<0>();
        fence_registers(sacc);
      } else {
        wgmma_wait<0>();
        fence_registers(o);
        mbar_arrive(&sm.empty[1][0]);
      }
    }
  } else {
    for (int it = 0; it < pairs; ++it) {
      issue_logits_half<kKeyFence>(sacc, sm, 1, 1, it & 1, true);  // the half its producer loads first
      issue_logits_half<kKeyFence>(sacc, sm, 1, 0, it & 1, false);
      wgmma_wait<0>();
      fence_registers(sacc);
      // Block 2i + 1's softmax against WG0's new maximum (its own maximum taken before it waits for
      // WG0's: max is exact in any order); publish the pair's maximum.
      float m_new[2] = {-INFINITY, -INFINITY}, factor[2];
      scale_logits(sacc, sm.key_bias[1], scale, c0, m_new);
      named_barrier_sync(kBarMax0, 256);
      for (int h = 0; h < 2; ++h) {
        m_new[h] = fmaxf(sm.row_max[0][r0 + 8 * h], m_new[h]);
        factor[h] = exp2_ftz(m_run[h] - max_ref(m_new[h]));
      }
      rescale(o, l_run, factor);
      exponentiate(sacc, m_new, l_run);
      m_run[0] = m_new[0], m_run[1] = m_new[1];
      if (lane % 4 == 0) sm.row_max[1][r0] = m_new[0], sm.row_max[1][r0 + 8] = m_new[1];
      named_barrier_arrive(kBarMax1, 256);
      // O += P1 V1 and O += P0 V0 (second half of the dims, P0 rescaled by WG0), issued back to back;
      // P1 to WG0; each of buffer 1's and buffer 0's second halves free once its product is done.
      pack_p(sacc, pa);
      issue_pv_own<kFp8>(o, pa, sm, 1, 1);
      store_p(sm.p[1], sacc, warp, lane);
      named_barrier_arrive(kBarP1, 256);
      named_barrier_sync(kBarP0, 256);
      issue_pv_other<kFp8>(o, sm, 0, 1);
      wgmma_wait<1>();
      mbar_arrive(&sm.empty[1][1]);
      wgmma_wait<0>();
      fence_registers(o);
      mbar_arrive(&sm.empty[0][1]);
    }
  }

  // The row sums: over the quad, then both warpgroups' added in one order (both hold the same).
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l_run[h] += __shfl_xor_sync(0xffffffff, l_run[h], 1);
    l_run[h] += __shfl_xor_sync(0xffffffff, l_run[h], 2);
    if (lane % 4 == 0) sm.row_sum[wg][r0 + 8 * h] = l_run[h];
  }
  named_barrier_sync(kBarSums, 256);
  const int64_t head0 = work.row * p.H + work.group * kHeads;  // flat (row, head) of accumulator row 0
  const float sums[2] = {sm.row_sum[0][r0] + sm.row_sum[1][r0], sm.row_sum[0][r0 + 8] + sm.row_sum[1][r0 + 8]};
  if constexpr (kStagedOut) {
    if (p.splits == 1) {  // in WG w's 32 KB half of Q: both warpgroups' logits are done (the sums' barrier)
      write_rows_staged(p, o, m_run, sums, head0, p.sink + work.group * kHeads, r0, c0, wg, wg == 0 && lane % 4 == 0,
                        sm.unrotate, sm.q + wg * (kChunks / 2) * kChunkBytes, kBarStaged + wg);
      return;
    }
  }
  write_rows(p, o, m_run, sums, head0, p.sink + work.group * kHeads, work.split, r0, 256 * wg + c0,
             wg == 0 && lane % 4 == 0, sm.unrotate);
  if (p.splits > 1 && p.fused_combine)
    combine_if_last(p, sm.last_split, sm.unrotate, work.cta, head0, kBarSums, kBarCombine);
}

// Launches the kernel of form kForms[index], once its compiled registers are checked (pair_registers).
template <int... kForms>
cudaError_t launch_pair(int index, const AttentionParams& p, cudaStream_t stream,
                        std::integer_sequence<int, kForms...>) {
  static PerDevice<cudaError_t> allowed[sizeof...(kForms)], registers_checked[sizeof...(kForms)];
  using Kernel = void (*)(AttentionParams);
  static constexpr Kernel kernels[] = {attention_sm90_pair_kernel<kForms>...};
  static constexpr int threads[] = {pair_threads(kForms)...}, registers[] = {pair_registers(kForms)...};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  err = registers_checked[index].get(device, [&](int) {
    cudaFuncAttributes attributes;
    const cudaError_t e = cudaFuncGetAttributes(&attributes, kernels[index]);
    if (e != cudaSuccess) return e;
    return attributes.numRegs * threads[index] >= registers[index] ? cudaSuccess : cudaErrorInvalidConfiguration;
  });
  if (err != cudaSuccess) return err;
  return launch_per_item(kernels[index], allowed[index], threads[index], kSmemBytes, p, stream);
}

}  // namespace

cudaError_t attention_sm90_pair(const AttentionParams& p, int form, cudaStream_t stream) {
  if (form & kPairFp8) {  // two forms only: with the output through shared memory or not
    if (form & ~(kPairFp8 | kPairStagedOut)) return cudaErrorInvalidValue;
    return launch_pair(form & kPairStagedOut, p, stream,
                       std::integer_sequence<int, kPairFp8, kPairFp8 | kPairStagedOut>());
  }
  if (form < 0 || form >= kPairForms) return cudaErrorInvalidValue;
  return launch_pair(form, p, stream, std::make_integer_sequence<int, kPairForms>());
}

}  // namespace lcattn
