// Window + compressed entries + sink attention on Hopper (SPEC 5) for head dim 512 and heads in
// groups of 64: wgmma with the 64 heads of one query token as the M dimension, since they all
// share the token's keys.
//
// One CTA = one query token x 64 heads (x one split of its keys), three warpgroups:
//   WG2, producer: gathers key rows (window rows, then selected or visible entries) with cp.async,
//        64 keys a block, into a ring of two buffers, so block b + 1 loads while block b computes;
//        marks absent keys (-1 indices, past the end) with a -inf bias and zero rows.
//   WG0, WG1, math: WG w accumulates O[:, dims 256w .. 256w + 255] += P V[:, those dims] in fp32, V = K
//        read MN-major from the key buffer. How the two share a block's logits and online softmax
//        (base 2) is the Schedule below: by keys (version 7, bf16 entries' default below 4 key blocks and
//        in the decode's clusters; version 6 takes the rest: pair_schedule_applies) or by dims
//        (version 4, kv_fp8 entries' default).
// Shared memory: Q 64 KB + 2 key buffers of 64 KB + the partial logits 32 KB (kKeys: the P tile and
// the row statistics in their place), 128B-swizzled tiles.
// Entries in the kv_fp8 form (kFp8Entries) are copied as they are by the producer's cp.async and
// widened to bf16 in place (exact) by each math warpgroup for its own dims (kKeys: its own rows), so
// the math is the same and the producer's loads stay asynchronous.
// With several splits (decode), each CTA writes its unnormalised output and (max, sum) to the
// workspace and the last CTA of each query to finish (2 to 4 splits; fused_combine) or a second
// kernel combines them, adds the sink and undoes the query rotation; or, with two splits as a cluster
// (cluster_combine), the two CTAs exchange halves of their output through distributed shared memory.
#include "attention_sm90.h"
#include "attention_sm90_common.cuh"
#include "common/device.h"
#include "common/fp8.cuh"
#include "common/sm90.cuh"
#include "lcattn/shared_math.h"
#include "lcattn/switches.h"

#include <algorithm>

namespace lcattn {
namespace {

using namespace sm90;

constexpr int kThreads = 384;

struct SharedStorage {
  alignas(1024) uint8_t q[kChunks * kChunkBytes];     // Q [8 chunks][64 heads][128 B]
  alignas(1024) uint8_t k[2][kChunks * kChunkBytes];  // key ring [8 chunks][64 keys][128 B]
  union {
    float logits[2][32 * 128];  // kDims: WG w's partial S in accumulator order
    struct {
      alignas(1024) uint8_t p[kChunkBytes];  // P [64 heads][64 keys] bf16, 128B-swizzled
      float2 row_stat[2][128];               // WG w's (row r0, row r0 + 8) maxima, then sums, by tid
    } split;                                 // kKeys
  };
  float key_bias[2][kKeys];        // 0, or -inf for an absent key
  uint8_t staged[2][kKeys];        // kFp8Entries: 1 for a row copied as a kv_fp8 entry
  float2 unrotate[kMaxRopePairs];  // (cos, -sin) of the query position per RoPE pair
  uint64_t q_full, full[2], empty[2];
  uint64_t pair_data;  // kClusterCombine: the other CTA's rows have arrived
  int last_split;      // fused combine: this CTA is the last of its query's splits to finish
};
constexpr int kSmemBytes = sizeof(SharedStorage) + 1024;  // + room to align the base to 1024
static_assert(kSmemBytes <= 232448, "more shared memory than an H100 block may have");

// Named barriers (0 is __syncthreads): over the 256 math threads, then over math warpgroup w's 128
// (kBarWidened + w).
enum : int { kBarLogits = 1, kBarRead = 2, kBarWidened = 3 };

// Where a kv_fp8 entry's bytes go in its 1 KB row of a key tile, as "linear" offsets
// (chunk * 128 + byte in the chunk's row; linear_offset swizzles them). Math warpgroup w owns the row's
// linear bytes [512 w, 512 w + 512) (dims 256 w ..). Its e4m3 channels (256 for w = 0, nope - 256
// for w = 1) and a copy of the 8 scale bytes are staged at the end of its part that is not RoPE,
// where it widens them in place; the RoPE channels (bf16) go to their final place [2 nope, 1024).
struct Fp8Staging {
  KvFp8Layout l;
  __device__ int units(int w) const { return w == 0 ? 32 : (l.nope() - 256) / 8; }  // 8-channel units
  // Where w's staged e4m3 units, then its 8 scale bytes, start, so that they end its part that is not
  // RoPE: 512 - 8 (32 + 1) for w = 0, 2 nope - 8 ((nope - 256) / 8 + 1) for w = 1.
  __device__ int begin(int w) const { return w == 0 ? 248 : l.nope() + 248; }
  // Linear destination of the entry's 8-byte piece t (pieces() - 1: the second copy of the scales).
  __device__ int pieces() const { return l.bytes() / 8 + 1; }
  __device__ int source(int t) const { return t < pieces() - 1 ? 8 * t : l.scale_offset(); }
  __device__ int destination(int t) const {
    const int o = source(t);
    if (t == pieces() - 1) return begin(1) + 8 * units(1);  // scales for warpgroup 1
    if (o < 256) return begin(0) + o;
    if (o < l.nope()) return begin(1) + o - 256;
    if (o < l.scale_offset()) return l.nope() + o;  // RoPE: 2 nope + (o - nope)
    return begin(0) + 8 * units(0);                 // scales for warpgroup 0
  }
};

// Producer, kFp8Entries: as load_tile, but a row that is a kv_fp8 entry (entry: lane's row is one) is
// copied as it is, in 8-byte cp.async pieces (entries are 8-byte aligned), to the places Fp8Staging
// gives; staged[r] tells the math warpgroups which rows to widen.
__device__ __forceinline__ void load_tile_kv_fp8(uint8_t* tile, int warp, int lane, const void* mine, bool entry,
                                                 const void* any, float* bias, uint8_t* staged, const Fp8Staging& st) {
  constexpr int kPiecesPerLane = 3;  // an entry of head dim 512 is at most 584 bytes: 74 pieces
  int src[kPiecesPerLane], dst[kPiecesPerLane];
#pragma unroll
  for (int k = 0; k < kPiecesPerLane; ++k) {
    const int t = lane + 32 * k;
    src[k] = t < st.pieces() ? st.source(t) : -1;
    dst[k] = t < st.pieces() ? st.destination(t) : 0;
  }
#pragma unroll 4
  for (int j = 0; j < 16; ++j) {
    const int r = warp * 16 + j;
    const auto* row =
        reinterpret_cast<const uint8_t*>(__shfl_sync(0xffffffff, reinterpret_cast<unsigned long long>(mine), j));
    const bool is_entry = __shfl_sync(0xffffffff, entry, j);
    if (is_entry) {
#pragma unroll
      for (int k = 0; k < kPiecesPerLane; ++k)
        if (src[k] >= 0) cp_async_8(tile + linear_offset(r, dst[k]), row + src[k]);
    } else {
#pragma unroll
      for (int half = 0; half < 2; ++half) copy_row_unit(tile, r, half * 32 + lane, row, any);
    }
    if (lane == 0) {
      bias[r] = row ? 0.f : -INFINITY;
      staged[r] = is_entry;
    }
  }
}

// Widens half w (dims 256 w .., linear bytes [512 w, 512 w + 512)) of row r of a key tile (shared
// address `tile`) in place, if the row was staged. The row's four threads q = 0..3 (one warp) read all
// of its staged bytes, then write; every lane of the warp calls it (a __syncwarp inside). Unit i = 4k + q
// of the half (channels 256 w + 8 i ..) lands in chunk 4 w + k / 2 at unit 4 (k % 2) + q, and its scale
// is the row's byte 4 w + k / 2, so both are fixed per k. Every half has at least 24 units (nope >= 448),
// so only k = 6, 7 can be past the end.
__device__ __forceinline__ void widen_row(uint32_t tile, uint32_t staged, int r, int w, int q, const Fp8Staging& st) {
  const int units = st.units(w);
  const uint32_t first = st.begin(w) + 8 * q, scales_at = st.begin(w) + 8 * units;
  const uint32_t out = 4 * w * kChunkBytes + ((uint32_t(q) ^ uint32_t(r % 8)) << 4);  // unit q of chunk 4 w
  const uint32_t row = tile + r * 128;
  const bool mine = lds_u8(staged + r) != 0;
  uint2 raw[8];
  uint32_t scale_bytes = 0;
  if (mine) {
    const uint2 both = lds_v2(tile + linear_offset(r, scales_at));
    scale_bytes = w == 0 ? both.x : both.y;  // tiles 4 w .. 4 w + 3
#pragma unroll
    for (int k = 0; k < 8; ++k)
      if (k < 6 || 4 * k + q < units) raw[k] = lds_v2(tile + linear_offset(r, first + 32 * k));
  }
  __syncwarp();  // the row's staged bytes are read before any of its lanes overwrites them
  if (mine) {
#pragma unroll
    for (int k = 0; k < 8; ++k)
      if (k < 6 || 4 * k + q < units)
        sts_v4(row + ((out + (k / 2) * kChunkBytes) ^ (64 * (k % 2))),
               widen8_e4m3(raw[k], kv_fp8_scale(uint8_t(scale_bytes >> (8 * (k / 2))))));
  }
}

// Asks L2 for this lane's half of the 128-byte lines a row of `bytes` touches (lanes l and l + 16
// share a row; a 1 KB bf16 row is 8 aligned lines, a 584-byte kv_fp8 entry, 8-byte aligned, 5 or 6).
__device__ __forceinline__ void prefetch_row_l2(const void* row, int bytes, int lane) {
  if (!row) return;
  const uintptr_t first = reinterpret_cast<uintptr_t>(row) & ~uintptr_t(127);
  const uintptr_t end = reinterpret_cast<uintptr_t>(row) + bytes;
#pragma unroll
  for (int line = 0; line < 4; ++line) {
    const uintptr_t at = first + (lane / 16 * 4 + line) * 128;
    if (at < end) prefetch_l2(reinterpret_cast<const void*>(at));
  }
}

// Moves a math thread's running sums l and output o (rows r0, r0 + 8) from the reference maxima m_ref
// to the block's maxima m_new, and returns in m_use the reference point the block's exponentials take.
// With slack >= 0 the warp keeps its references unless a row's maximum passes its own by more than
// slack (the 128 multiplies skipped; exact either way, and the warps of both math warpgroups that hold
// the same rows decide alike); with slack 0 it skips only blocks whose factors would all be 1.
__device__ __forceinline__ void rescale_rows(float (&o)[128], float (&l)[2], float (&m_ref)[2], const float (&m_new)[2],
                                             float (&m_use)[2], float slack) {
  const bool passed = slack < 0.f || m_new[0] > m_ref[0] + slack || m_new[1] > m_ref[1] + slack;
  if (!__any_sync(0xffffffff, passed)) {
    m_use[0] = max_ref(m_ref[0]), m_use[1] = max_ref(m_ref[1]);
    return;
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    m_use[h] = max_ref(m_new[h]);
    const float corr = exp2_ftz(m_ref[h] - m_use[h]);  // 0 while nothing was seen (O and l are 0)
    l[h] *= corr;
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      o[j * 4 + 2 * h] *= corr;
      o[j * 4 + 2 * h + 1] *= corr;
    }
    m_ref[h] = m_new[h];
  }
}

// How the two math warpgroups share a key block; in each, warpgroup w accumulates O for dims 256 w ..
//   kDims (version 4): the logits by dims, the fp32 partials exchanged whole, and each warpgroup the
//     softmax of all 64 keys, P from registers.
//   kKeys (version 7): the logits of its own 32 keys over all 512 dims; only the row maxima exchanged;
//     each the softmax of its 32 keys into a shared bf16 P tile, which both read for their P.V; the row
//     sums added once at the end.
enum class Schedule { kDims, kKeys };

// A math warpgroup's partial logits over its 256 dims (kDims): 16 k-steps of 16, four
// per 64-wide chunk, Q and the key tile K-major in shared memory.
__device__ __forceinline__ void partial_logits(float (&sacc)[32], const uint8_t* q, const uint8_t* keys, int wg) {
  const uint64_t q_desc = smem_desc(q + 4 * wg * kChunkBytes, 16, 1024);
  const uint64_t k_desc = smem_desc(keys + 4 * wg * kChunkBytes, 16, 1024);
  wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < 16; ++ks) {
    const int at = (ks / 4) * kChunkBytes + (ks % 4) * 32;
    wgmma_m64n64k16_ss(sacc, desc_advance(q_desc, at), desc_advance(k_desc, at), ks > 0);
  }
  wgmma_commit();
  wgmma_wait<0>();
  fence_registers(sacc);
}

// kClusterCombine: the two splits of a query are the two CTAs of a cluster (rank = split), which
// combine through distributed shared memory instead of the workspace: CTA s finishes the dims of its
// math warpgroup s (256 s .. 256 s + 255, all 64 heads). Once both CTAs are done with their key
// buffers (a cluster barrier that every thread meets: the producers when their last copies are issued,
// the math threads after their last P.V), the other warpgroup sends its O and (max, sum) into the other
// CTA's key buffers (64 KB + 2 KB), then arrives on that CTA's pair_data; the thread there holding the
// same (row, dims) adds the two splits in split order (the same bits whichever finishes first) and the
// warpgroup writes its half of the output as one split does (through shared memory in Q's half of its
// dims, free by then, when p.out is 16-byte aligned). A CTA exits only after every access the other
// makes to its shared memory: its receivers wait for pair_data.
__device__ __forceinline__ void cluster_combine(const AttentionParams& p, SharedStorage& sm, float (&o)[128],
                                                const float (&m)[2], const float (&l)[2], int split, int64_t head0,
                                                const float* sinks, int r0, int c0, int wg, int tid, bool stats) {
  const uint32_t other = 1 - split;
  cluster_sync();                                             // both CTAs' key buffers are free
  float4* const values = reinterpret_cast<float4*>(sm.k[0]);  // [32][128 threads] O, 4 at a time
  float4* const rows = reinterpret_cast<float4*>(sm.k[1]);    // [128 threads] (m0, m1, l0, l1)
  if (wg != split) {                                          // the other CTA's dims: send them
    const uint32_t to = cluster_map(smem_addr(values + tid), other);
#pragma unroll
    for (int i = 0; i < 32; ++i)
      st_cluster_v4(to + i * 128 * sizeof(float4), make_float4(o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]));
    st_cluster_v4(cluster_map(smem_addr(rows + tid), other), make_float4(m[0], m[1], l[0], l[1]));
    mbar_arrive_cluster(cluster_map(smem_addr(&sm.pair_data), other));
    return;
  }
  mbar_wait_cluster(&sm.pair_data, 0);
  const float4 theirs = rows[tid];
  const float their_m[2] = {theirs.x, theirs.y}, their_l[2] = {theirs.z, theirs.w};
  float m_all[2], l_all[2], w_mine[2], w_theirs[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    m_all[h] = fmaxf(m[h], their_m[h]);
    w_mine[h] = exp2_ftz(m[h] - max_ref(m_all[h]));  // 0 for a split that saw no key
    w_theirs[h] = exp2_ftz(their_m[h] - max_ref(m_all[h]));
    const float mine = __fmul_rn(w_mine[h], l[h]), them = __fmul_rn(w_theirs[h], their_l[h]);
    l_all[h] = split == 0 ? __fadd_rn(mine, them) : __fadd_rn(them, mine);
  }
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    const float4 v = values[i * 128 + tid];
    const float them[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float a = __fmul_rn(w_mine[e / 2], o[4 * i + e]), b = __fmul_rn(w_theirs[e / 2], them[e]);
      o[4 * i + e] = split == 0 ? __fadd_rn(a, b) : __fadd_rn(b, a);
    }
  }
  if (reinterpret_cast<uintptr_t>(p.out) % 16 == 0)
    write_rows_staged(p, o, m_all, l_all, head0, sinks, r0, c0, wg, stats, sm.unrotate,
                      sm.q + wg * (kChunks / 2) * kChunkBytes, kBarWidened + wg);
  else
    write_output_rows(p, o, m_all, l_all, head0, sinks, r0, 256 * wg + c0, stats, sm.unrotate);
}

// kFp8Entries: the entries are p.ckv_fp8 (kv_fp8 form). By keys, the RoPE (cos, -sin) table is built by
// math warp 0 while Q loads (the row sums' barrier after the blocks orders it before the epilogue), so
// the producer issues Q without waiting on the accurate sincosf, whose angles past 105,615 rad at 128K
// context take its slow path; by dims it is built before the set-up barrier. kStagedOut (by keys,
// launch_for_schedule): with one split, O goes out through shared memory in 16-byte pieces
// (write_rows_staged) instead of 4-byte stores.
template <bool kFp8Entries, Schedule kSchedule, bool kStagedOut = false, bool kClusterCombine = false>
__global__ void __launch_bounds__(kThreads, 1) attention_sm90_kernel(const AttentionParams p) {
  constexpr bool kLateTable = kSchedule == Schedule::kKeys;
  extern __shared__ uint8_t smem_raw[];
  // The base aligned to 1024 by an offset from smem_raw, so the compiler knows every access is to
  // shared memory (LDS / STS, not generic LD / ST).
  SharedStorage& sm = *reinterpret_cast<SharedStorage*>(smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023));
  const CtaWork work(p);
  const QueryKeys keys(p, work.row, work.b, work.pos);
  const SplitRange range(keys.n_keys, p.splits, work.split);
  const int wg = threadIdx.x / 128, tid = threadIdx.x % 128, warp = tid / 32, lane = threadIdx.x % 32;

  if (threadIdx.x == 0) {
    mbar_init(&sm.q_full, 128);
    for (int i = 0; i < 2; ++i) {
      mbar_init(&sm.full[i], 128 + 4);  // 128 cp.async arrivals + 4 warps' key_bias stores
      mbar_init(&sm.empty[i], 256);     // every math thread, after its P.V product
    }
    if constexpr (kClusterCombine) mbar_init(&sm.pair_data, 128);  // the other CTA's sending warpgroup
    fence_barrier_init();
  }
  if constexpr (!kLateTable) fill_unrotate(sm.unrotate, p, work.pos);
  if constexpr (kClusterCombine)
    cluster_sync();  // also orders both CTAs' barrier set-up before either arrives on the other's
  else
    __syncthreads();

  if (wg == 2) {  // ---------------------------------------------------------------- producer
    reg_dealloc<56>();
    const int my_row = warp * 16 + lane % 16;
    const bf16* q = p.q + (work.row * p.H + work.group * kHeads) * kDim;
    load_tile(sm.q, warp, lane, q + my_row * kDim, q, nullptr);  // q: any valid address for zero fills
    mbar_arrive_cp_async(&sm.q_full);
    // Block b + 1's rows are looked up and prefetched into L2 while block b loads.
    auto look_up = [&](int blk) -> const void* {
      if (blk >= range.last) return nullptr;
      const int u = blk * kKeys + my_row;
      const void* row = keys.row(u);
      prefetch_row_l2(row, u < keys.n_window ? kDim * 2 : keys.entry_bytes, lane);
      return row;
    };
    const void* next = keys.row(range.first * kKeys + my_row);
    for (int blk = range.first; blk < range.last; ++blk) {
      const int it = blk - range.first, buf = it & 1;
      const void* cur = next;
      if (it >= 2) mbar_wait(&sm.empty[buf], ((it >> 1) - 1) & 1);
      if constexpr (kFp8Entries) {
        const bool entry = cur && blk * kKeys + my_row >= keys.n_window;
        load_tile_kv_fp8(sm.k[buf], warp, lane, cur, entry, q, sm.key_bias[buf], sm.staged[buf],
                         Fp8Staging{KvFp8Layout{kDim, p.rope_dim}});
      } else {
        load_tile(sm.k[buf], warp, lane, static_cast<const bf16*>(cur), q, sm.key_bias[buf]);
      }
      mbar_arrive_cp_async(&sm.full[buf]);
      if (lane == 0) mbar_arrive(&sm.full[buf]);
      next = look_up(blk + 1);
    }
    if constexpr (kClusterCombine) cluster_arrive();  // the math threads' cluster_sync in cluster_combine
    return;
  }

  // ------------------------------------------------------------------------------------ math
  reg_alloc<224>();
  // kLateTable: threads 0 .. rope_dim / 2 - 1 (math warp 0) build the table while Q loads; the row sums'
  // exchange barrier after the blocks (every CTA meets it) orders it before the epilogue's reads.
  if constexpr (kLateTable) fill_unrotate(sm.unrotate, p, work.pos);
  const int r0 = warp * 16 + lane / 4;  // this thread's rows r0 and r0 + 8 of every accumulator
  const int c0 = (lane % 4) * 2;        // and columns c0, c0 + 1 of every 8-column block
  const float scale = p.scale * kLog2e;
  float o[128];  // O[64 heads, dims 256 wg .. 256 wg + 255], unnormalised
#pragma unroll
  for (int i = 0; i < 128; ++i) o[i] = 0.f;
  // Per row: the base-2 reference maximum (the running maximum, or with rescale_slack up to that much
  // below it) and the sum relative to it.
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};

  // kFp8Entries: widens the staged entries of key buffer b in place: this warpgroup's half of every row;
  // with the logits split by keys (kOwnRows), both halves of its own 32 rows, which its logits read (the
  // other rows, which its P.V reads, are widened by the other warpgroup before the 256-thread barriers).
  auto widen_buffer = [&](int b) {
    constexpr bool kOwnRows = kSchedule == Schedule::kKeys;
    const Fp8Staging staging{KvFp8Layout{kDim, p.rope_dim}};
    const uint32_t tile = smem_addr(sm.k[b]), staged = smem_addr(sm.staged[b]);
#pragma unroll 1
    for (int pass = 0; pass < 2; ++pass) {
      const int r = (kOwnRows ? 32 * wg : 32 * pass) + tid / 4, half = kOwnRows ? pass : wg;
      widen_row(tile, staged, r, half, tid % 4, staging);
    }
    fence_proxy_async();  // this thread's stores, before the warpgroup's wgmma reads them
    named_barrier_sync(kBarWidened + wg, 128);
  };

  mbar_wait(&sm.q_full, 0);
  for (int blk = range.first; blk < range.last; ++blk) {
    const int it = blk - range.first, buf = it & 1;
    mbar_wait(&sm.full[buf], (it >> 1) & 1);
    fence_proxy_async();  // the cp.async writes (generic proxy) before wgmma reads them (async proxy)
    if constexpr (kFp8Entries) widen_buffer(buf);

    if constexpr (kSchedule == Schedule::kDims) {
      float sacc[32];
      partial_logits(sacc, sm.q, sm.k[buf], wg);
      // Exchange partials: thread tid of either warpgroup holds the same (row, column) positions.
#pragma unroll
      for (int i = 0; i < 32; ++i) sm.logits[wg][i * 128 + tid] = sacc[i];
      named_barrier_sync(kBarLogits, 256);
      // Both warpgroups add the same two partials (a + b == b + a), so they agree exactly.
#pragma unroll
      for (int i = 0; i < 32; ++i) sacc[i] += sm.logits[1 - wg][i * 128 + tid];
      named_barrier_sync(kBarRead, 256);  // both read before either writes the next block's partial

      // Scaled base-2 logits, -inf for absent keys; the new row maxima.
      float m_new[2] = {m_run[0], m_run[1]}, m_use[2];
      scale_logits(sacc, sm.key_bias[buf], scale, c0, m_new);
      rescale_rows(o, l_run, m_run, m_new, m_use, p.rescale_slack);
      uint32_t pa[4][4];  // P as the A operand of 4 k-steps of 16 keys
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        float e[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          e[i] = exp2_ftz(sacc[j * 4 + i] - m_use[i / 2]);
          l_run[i / 2] += e[i];
        }
        pa[j / 2][(j % 2) * 2] = pack_bf16(e[0], e[1]);
        pa[j / 2][(j % 2) * 2 + 1] = pack_bf16(e[2], e[3]);
      }

      // O[:, my dims] += P V[:, my dims] (V = K, read MN-major: 4 chunks of 64 dims, 16 keys a k-step).
      const uint64_t v_desc = smem_desc(sm.k[buf] + 4 * wg * kChunkBytes, kChunkBytes, 1024);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) wgmma_m64n256k16_rs_bmn(o, pa[kk], desc_advance(v_desc, kk * 2048), 1);
    } else {
      // The logits of keys 32 wg .. 32 wg + 31 (columns 8 j + c0, + 1 from key 32 wg) over all 512
      // dims: 32 k-steps of 16 on rows 32 wg .. of the tile.
      float s[16];
      const uint64_t q_desc = smem_desc(sm.q, 16, 1024), k_desc = smem_desc(sm.k[buf] + wg * 32 * 128, 16, 1024);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < 32; ++ks) {
        const int at = (ks / 4) * kChunkBytes + (ks % 4) * 32;
        wgmma_m64n32k16_ss(s, desc_advance(q_desc, at), desc_advance(k_desc, at), ks > 0);
      }
      wgmma_commit();
      wgmma_wait<0>();
      fence_registers(s);

      // Row maxima over both warpgroups' keys: thread tid of either warpgroup holds the same rows, and
      // fmaxf does not depend on the order, so both get the same maxima.
      float m_mine[2] = {-INFINITY, -INFINITY};
      scale_logits(s, sm.key_bias[buf] + 32 * wg, scale, c0, m_mine);
      sm.split.row_stat[wg][tid] = make_float2(m_mine[0], m_mine[1]);
      named_barrier_sync(kBarLogits, 256);
      const float2 theirs = sm.split.row_stat[1 - wg][tid];
      const float m_new[2] = {fmaxf(m_run[0], fmaxf(m_mine[0], theirs.x)), fmaxf(m_run[1], fmaxf(m_mine[1], theirs.y))};
      float m_use[2];
      rescale_rows(o, l_run, m_run, m_new, m_use, p.rescale_slack);

      // This warpgroup's half of P (bf16, keys 32 wg ..) into the [64 heads][64 keys] swizzled tile.
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        float e[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          e[i] = exp2_ftz(s[j * 4 + i] - m_use[i / 2]);
          l_run[i / 2] += e[i];
        }
        *reinterpret_cast<uint32_t*>(sm.split.p + swizzled(r0, 4 * wg + j) + 2 * c0) = pack_bf16(e[0], e[1]);
        *reinterpret_cast<uint32_t*>(sm.split.p + swizzled(r0 + 8, 4 * wg + j) + 2 * c0) = pack_bf16(e[2], e[3]);
      }
      fence_proxy_async();                // the P stores, before either warpgroup's wgmma reads them
      named_barrier_sync(kBarRead, 256);  // both halves of P are in the tile

      // O[:, my dims] += P V[:, my dims], P from the tile (4 k-steps of 16 keys), V as above. The wait
      // below also comes before the next block's P overwrites the tile (after the next maxima barrier).
      const uint64_t p_desc = smem_desc(sm.split.p, 16, 1024);
      const uint64_t v_desc = smem_desc(sm.k[buf] + 4 * wg * kChunkBytes, kChunkBytes, 1024);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
        wgmma_m64n256k16_ss_bmn(o, desc_advance(p_desc, kk * 32), desc_advance(v_desc, kk * 2048), 1);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_registers(o);
    mbar_arrive(&sm.empty[buf]);
  }

  // Row sums over the quad.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l_run[h] += __shfl_xor_sync(0xffffffff, l_run[h], 1);
    l_run[h] += __shfl_xor_sync(0xffffffff, l_run[h], 2);
  }
  if constexpr (kSchedule == Schedule::kKeys) {
    // Each warpgroup summed its own keys: both add the two in the order (WG0) + (WG1). The maxima's
    // slots are free: the last block's were read before its second barrier.
    sm.split.row_stat[wg][tid] = make_float2(l_run[0], l_run[1]);
    named_barrier_sync(kBarLogits, 256);
    const float2 theirs = sm.split.row_stat[1 - wg][tid];
    l_run[0] = wg == 0 ? l_run[0] + theirs.x : theirs.x + l_run[0];
    l_run[1] = wg == 0 ? l_run[1] + theirs.y : theirs.y + l_run[1];
  }

  const int64_t head0 = work.row * p.H + work.group * kHeads;  // flat (row, head) of accumulator row 0
  if constexpr (kClusterCombine) {
    cluster_combine(p, sm, o, m_run, l_run, work.split, head0, p.sink + work.group * kHeads, r0, c0, wg, tid,
                    lane % 4 == 0);
    return;
  }
  if constexpr (kStagedOut) {
    // Staged in WG w's 32 KB half of Q (dims 256 w ..): by keys both warpgroups' logits are done (the
    // row sums' barrier); by dims WG w's logits read only that half, and its last wgmma has completed.
    if (p.splits == 1) {
      write_rows_staged(p, o, m_run, l_run, head0, p.sink + work.group * kHeads, r0, c0, wg, wg == 0 && lane % 4 == 0,
                        sm.unrotate, sm.q + wg * (kChunks / 2) * kChunkBytes, kBarWidened + wg);
      return;
    }
  }
  write_rows(p, o, m_run, l_run, head0, p.sink + work.group * kHeads, work.split, r0, 256 * wg + c0,
             wg == 0 && lane % 4 == 0, sm.unrotate);
  if (p.splits > 1 && p.fused_combine)
    combine_if_last(p, sm.last_split, sm.unrotate, work.cta, head0, kBarLogits, kBarRead);
}

// Combines the splits of one (row, head) with kCombineGroups x 128 threads of 4 dims: group g takes
// splits g, g + 4, ..., so that at decode (up to 66 splits over 64 (row, head) CTAs) each thread waits
// on a quarter of the loads; the groups' sums are added in group order, so the result is the same on
// every run.
constexpr int kCombineGroups = 4;
__global__ void __launch_bounds__(128 * kCombineGroups) attention_combine_kernel(const AttentionParams p) {
  __shared__ float group_max[kCombineGroups], group_sum[kCombineGroups];
  __shared__ float4 group_acc[kCombineGroups][128];
  const int64_t n = blockIdx.x;  // flat (row, head)
  const int64_t split_stride = int64_t(p.B) * p.S * p.H * kPartStride;
  const float* parts = p.workspace + n * kPartStride;  // split i at parts + i * split_stride
  const int g = threadIdx.x / 128, t = threadIdx.x % 128, d = t * 4;
  float m = -INFINITY;
#pragma unroll 4
  for (int i = g; i < p.splits; i += kCombineGroups) m = fmaxf(m, parts[i * split_stride + kDim]);
  if (t == 0) group_max[g] = m;
  __syncthreads();
  m = group_max[0];
  for (int j = 1; j < kCombineGroups; ++j) m = fmaxf(m, group_max[j]);
  const float m_use = max_ref(m);
  float l = 0.f;
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
  for (int i = g; i < p.splits; i += kCombineGroups) {
    const float* part = parts + i * split_stride;
    const float w = exp2_ftz(part[kDim] - m_use);  // 0 for a split that saw no key
    l += w * part[kDim + 1];
    const float4 v = *reinterpret_cast<const float4*>(part + d);
    acc.x += w * v.x, acc.y += w * v.y, acc.z += w * v.z, acc.w += w * v.w;
  }
  group_acc[g][t] = acc;
  if (t == 0) group_sum[g] = l;
  __syncthreads();
  if (g != 0) return;
  float total[4] = {0.f, 0.f, 0.f, 0.f};
  l = 0.f;
  for (int j = 0; j < kCombineGroups; ++j) {
    const float4 a = group_acc[j][t];
    total[0] += a.x, total[1] += a.y, total[2] += a.z, total[3] += a.w;
    l += group_sum[j];
  }
  write_combined<false>(p, n, d, total, l, m, nullptr);
}

// Head dim 512, whole groups of 64 heads, at most 64 RoPE channels (V4 has 64); entries in the kv_fp8
// form with a multiple of 8 RoPE channels (no 16-byte unit is half e4m3, half bf16).
bool sm90_takes(const AttentionParams& p, bool kv_fp8) {
  return p.D == kDim && p.H % kHeads == 0 && p.rope_dim <= 2 * kMaxRopePairs && (!kv_fp8 || p.rope_dim % 8 == 0);
}

// A launch of `kernel` in clusters of two CTAs along x (the two splits of each item, kClusterCombine).
cudaLaunchConfig_t pair_launch(unsigned ctas, cudaStream_t stream, cudaLaunchAttribute& cluster) {
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = 2;
  cluster.val.clusterDim.y = 1;
  cluster.val.clusterDim.z = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(ctas);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = kSmemBytes;
  config.stream = stream;
  config.attrs = &cluster;
  config.numAttrs = 1;
  return config;
}

template <bool kFp8Entries, Schedule kSchedule, bool kStagedOut, bool kClusterCombine = false>
cudaError_t launch_attention_sm90(const AttentionParams& p, cudaStream_t stream) {
  static PerDevice<cudaError_t> allowed;
  const auto kernel = attention_sm90_kernel<kFp8Entries, kSchedule, kStagedOut, kClusterCombine>;
  if constexpr (!kClusterCombine) {
    return launch_per_item(kernel, allowed, kThreads, kSmemBytes, p, stream);
  } else {
    const cudaError_t err = allow_dynamic_smem(allowed, reinterpret_cast<const void*>(kernel), kSmemBytes);
    if (err != cudaSuccess) return err;
    cudaLaunchAttribute cluster;
    const cudaLaunchConfig_t config = pair_launch(unsigned(head_group_items(p) * 2), stream, cluster);
    return cudaLaunchKernelEx(&config, kernel, p);
  }
}

// How many clusters of two of these CTAs the current device holds at once (0 if it cannot say).
int max_cluster_pairs() {
  static PerDevice<int> cache;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 0;
  return cache.get(device, [](int) {
    const auto kernel = attention_sm90_kernel<false, Schedule::kKeys, false, true>;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes) != cudaSuccess) return 0;
    cudaLaunchAttribute cluster;
    const cudaLaunchConfig_t config = pair_launch(2, nullptr, cluster);
    int clusters = 0;
    return cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) == cudaSuccess ? clusters : 0;
  });
}

// The one-split output through shared memory in 16-byte pieces (write_rows_staged): on by default where
// it measured faster (by_default), LCATTN_ATTN_STAGED_OUT=1 or 0 turns it on or off. Read per call.
// Its 16-byte stores need p.out 16-byte aligned (the ops allocate it; a C++ caller may not).
bool stages_output(const AttentionParams& p, bool by_default) {
  const bool on = by_default ? !env_is("LCATTN_ATTN_STAGED_OUT", "0") : env_is("LCATTN_ATTN_STAGED_OUT", "1");
  return on && reinterpret_cast<uintptr_t>(p.out) % 16 == 0;
}

// The math warpgroups' schedule: by keys for bf16 entries, by dims for kv_fp8 entries, where keys
// measured 2-4% slower (H100); LCATTN_ATTN_SCHEDULE=keys or dims picks one (read per call). The output
// through shared memory by default by keys (1.00-1.11x on the bf16 sparse rows, H100), not by dims
// (kv_fp8 rows 0.98-1.02x, with more spills in their producer).
template <bool kFp8Entries>
cudaError_t launch_for_schedule(const AttentionParams& p, cudaStream_t stream) {
  const bool by_keys =
      env_is("LCATTN_ATTN_SCHEDULE", "keys") || (!kFp8Entries && !env_is("LCATTN_ATTN_SCHEDULE", "dims"));
  if (p.cluster_combine)
    return by_keys ? launch_attention_sm90<kFp8Entries, Schedule::kKeys, false, true>(p, stream)
                   : launch_attention_sm90<kFp8Entries, Schedule::kDims, false, true>(p, stream);
  if (stages_output(p, by_keys))
    return by_keys ? launch_attention_sm90<kFp8Entries, Schedule::kKeys, true>(p, stream)
                   : launch_attention_sm90<kFp8Entries, Schedule::kDims, true>(p, stream);
  return by_keys ? launch_attention_sm90<kFp8Entries, Schedule::kKeys, false>(p, stream)
                 : launch_attention_sm90<kFp8Entries, Schedule::kDims, false>(p, stream);
}

// The key blocks of the query with the most keys: its window and its top-k or compressed entries.
int max_key_blocks(const AttentionParams& p) {
  const int max_keys = min(p.window, p.L) + (p.indices ? p.K : (p.ratio > 0 ? p.N : 0));
  return (max_keys + kKeys - 1) / kKeys;
}

// Version 6 where it measured faster than version 7 (H100, bf16 entries): at least 4 key blocks, outside
// the decode's clusters. With its default form its CTA's fixed cost is about 0.7 us more and its block
// about 0.4-0.5 us less: prefill 1.05-1.09x at 4 blocks; decode 1.03-1.05x at B = 1 (five splits),
// 1.03-1.04x at B = 128 and 1.04x at B = 64 of 4 blocks (one split; kernel notes). LCATTN_ATTN_PAIR=1 or 0 takes it
// or not; an explicit LCATTN_ATTN_SCHEDULE asks for version 7 or 4. kv_fp8 entries take it (its kPairFp8
// form) only with LCATTN_ATTN_FP8_PAIR=1, by the same rule.
bool pair_schedule_applies(const AttentionParams& p) {
  if ((p.ckv_fp8 && !env_is("LCATTN_ATTN_FP8_PAIR", "1")) || p.cluster_combine || env_is("LCATTN_ATTN_PAIR", "0"))
    return false;
  if (env_is("LCATTN_ATTN_PAIR", "1")) return true;
  return !std::getenv("LCATTN_ATTN_SCHEDULE") && max_key_blocks(p) >= 4;
}

// Version 6's form (PairForm flags), read per call: the output through shared memory unless
// LCATTN_ATTN_STAGED_OUT is 0 (or p.out is not 16-byte aligned); the key fence left out only with
// LCATTN_ATTN_KEY_FENCE=0 (0.98-1.04x, within the spread; PTX asks for the fence); the next pair's rows
// asked of L2 only with LCATTN_ATTN_PAIR_ROWS_TO_L2=1 (0.99-1.02x at decode, within the spread).
// kv_fp8 entries: kPairFp8, with the key fence and no rows asked of L2 (its copier's own rows).
int pair_form(const AttentionParams& p) {
  if (p.ckv_fp8) return kPairFp8 | (stages_output(p, true) ? kPairStagedOut : 0);
  return (stages_output(p, true) ? kPairStagedOut : 0) | (env_is("LCATTN_ATTN_KEY_FENCE", "0") ? kPairNoKeyFence : 0) |
         (env_is("LCATTN_ATTN_PAIR_ROWS_TO_L2", "1") ? kPairRowsToL2 : 0);
}

}  // namespace

bool attention_sm90_supported(const AttentionParams& p) { return sm90_takes(p, p.ckv_fp8 != nullptr); }

bool attention_reads_kv_fp8(const AttentionParams& p) { return sm90_takes(p, true); }

int attention_splits(const AttentionParams& p, int num_sms) {
  if (!attention_sm90_supported(p)) return 1;
  // One CTA per SM (shared memory): split the keys only while the split CTAs fill at most half the
  // SMs, into parts of at least two blocks (so each part still overlaps a load with the math). Each
  // split CTA writes and the last reads back a 128 KB fp32 partial: at B = 64 (2 splits filling 128
  // SMs) that traffic made the decode 1.34x slower than one split (H200).
  const int64_t ctas = head_group_items(p);
  const int blocks = max_key_blocks(p);
  // LCATTN_ATTN_SPLITS=n forces n parts (no more than the key blocks), to measure other splits.
  if (const long forced = env_int("LCATTN_ATTN_SPLITS", 0); forced > 0 && ctas > 0)
    return int(std::min<long>(forced, std::max(1, blocks)));
  if (attention_cluster_combines(p, num_sms)) return 2;
  if (ctas == 0 || ctas * 4 > num_sms) return 1;
  return max(1, min(int(num_sms / (2 * ctas)), blocks / 2));
}

bool attention_cluster_combines(const AttentionParams& p, int num_sms) {
  if (env_is("LCATTN_ATTN_CLUSTER_SPLITS", "0") || env_int("LCATTN_ATTN_SPLITS", 0) > 0 || !attention_sm90_supported(p))
    return false;
  // Decode only (prefill keeps its kernels, version 6), where attention_splits' rule gives one split
  // (items past a quarter of the SMs) or two (past a sixth), and the device holds all the pairs at once.
  // Where it replaces one split, only with 8 key blocks or more (H100, B = 64: 1.05x at 10 blocks, kv_fp8
  // 1.40x; 0.92x at 4 blocks); where it replaces two, with 4 or more (B = 32: 1.66x, kv_fp8 1.50x).
  const int64_t items = head_group_items(p);
  return p.S == 1 && items * 6 > num_sms && items <= max_cluster_pairs() &&
         max_key_blocks(p) >= (items * 4 > num_sms ? 8 : 4);
}

int64_t attention_workspace_floats(const AttentionParams& p) {
  if (p.splits <= 1 || p.cluster_combine) return 0;
  const int64_t counters = p.fused_combine ? head_group_items(p) : 0;  // one int each
  return partial_floats(p) + counters;
}

bool attention_fuses_combine(const AttentionParams& p) {
  return p.splits > 1 && p.splits <= kMaxFusedSplits && !p.cluster_combine && attention_sm90_supported(p) &&
         !env_is("LCATTN_ATTN_FUSED_COMBINE", "0");
}

cudaError_t attention_sm90(const AttentionParams& params, cudaStream_t stream) {
  AttentionParams p = params;
  // LCATTN_ATTN_RESCALE_SLACK=s (base 2; every schedule of this kernel); off: measured within the spread
  // of repeated runs. At most 32, so that sums of up to 2^32 exponentials of 2^32 each stay far from the fp32 range.
  if (const long slack = env_int("LCATTN_ATTN_RESCALE_SLACK", -1); slack >= 0)
    p.rescale_slack = float(std::min(slack, 32L));
  if (p.cluster_combine ? p.splits != 2 || p.fused_combine : p.splits > 1 && !p.workspace) return cudaErrorInvalidValue;
  if (p.fused_combine && p.splits > kMaxFusedSplits) return cudaErrorInvalidValue;  // its loop holds 4
  cudaError_t err = cudaSuccess;
  if (p.splits > 1 && p.fused_combine) {  // the arrival counters after the partials start at zero
    err = cudaMemsetAsync(combine_counters(p), 0, head_group_items(p) * sizeof(int), stream);
    if (err != cudaSuccess) return err;
  }
  if (pair_schedule_applies(p))
    err = attention_sm90_pair(p, pair_form(p), stream);
  else
    err = p.ckv_fp8 ? launch_for_schedule<true>(p, stream) : launch_for_schedule<false>(p, stream);
  if (err != cudaSuccess) return err;
  if (p.splits > 1 && !p.fused_combine && !p.cluster_combine) {
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    const unsigned rows = unsigned(int64_t(p.B) * p.S * p.H);
    attention_combine_kernel<<<rows, 128 * kCombineGroups, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace lcattn
