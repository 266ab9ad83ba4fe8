// Lightning indexer scoring fused with its top-k on Hopper (SPEC 4): the [rows, N] scores are never
// written. Head dim 128, up to 64 heads, k <= kMaxK, N <= kMaxEntries; LCATTN_INDEXER_FUSED_TOPK=1.
//
// One CTA = one pair of query rows of a sequence. It streams the entries the pair sees, 256 a step,
// through the products and head sums of indexer_sm90.cuh, so each score is the one indexer_scores
// computes. Three warpgroups:
//   WG2, producer: the pair's q [2 x 64 heads, 128] and head weights once, then each key tile (and
//        its key scales) into a ring of stages with cp.async.
//   WG0, WG1, math: WG w scores keys 128w .. 128w + 127 of each tile for both rows. A score is a
//        candidate when it beats the row's threshold; a candidate is the composite key << 32 | ~index
//        (larger is better, ties go to the lower index, as the top-k kernels take them), appended to
//        the warpgroup's buffer for its row. A buffer that could overflow on the next step is cut to
//        its k largest by a radix select over the composite (8 bits a pass), and the key of its k-th
//        raises the row's threshold (shared by both warpgroups, atomic max): the k-th of a subset of
//        the row's scores, so a lower bound on the row's k-th, and a score whose key is at or above
//        it is taken, so the row's top k are never dropped.
//   At the end, per row: the k largest of both buffers (a radix select by the 256 math threads) are
//   marked in a bitmap of the entries (over the freed key stages) and written in ascending order,
//   then -1.
// Shared memory: key stages 128 KB (bf16 2 x 64 KB, e4m3 4 x 32 KB), q 32 / 16 KB, buffers 48 KB.
#include <climits>

#include "common/device.h"
#include "common/topk_key.cuh"
#include "common/topk_select.cuh"
#include "indexer_sm90.cuh"
#include "indexer_sm90.h"
#include "lcattn/shared_math.h"

namespace lcattn {
namespace {

using namespace indexer_sm90;

constexpr int kCap = 1536;                   // candidates a warpgroup buffers for a row
constexpr int kStep = 128;                   // the most a warpgroup adds to a row's buffer in a step
constexpr int kMaxK = kCap - 2 * kStep;      // a cut leaves room for at least two steps
constexpr int kRingBytes = 128 * 1024;       // key stages, then the bitmap of one row's picks
constexpr int kMaxEntries = kRingBytes * 8;  // a bit per entry: 1M
constexpr int kPer = kCap / 128;             // buffer entries per thread in a cut (and 2 buffers / 256)
constexpr int kCutBarrier = 1;               // named barriers 1 and 2: one warpgroup; 3: both
constexpr int kMathBarrier = 3;

template <int kElemBytes>
struct FusedStorage {
  static constexpr int kStageBytes = Elem<kElemBytes>::kChunks * kKeyChunkBytes;
  static constexpr int kStages = kRingBytes / kStageBytes;
  union {
    alignas(1024) uint8_t keys[kStages][kStageBytes];  // [chunks][256 keys][128 B]
    uint32_t picked[kMaxEntries / 32];                 // after the stream: one row's picks, a bit each
  };
  alignas(1024) uint8_t q[Elem<kElemBytes>::kChunks * kPairChunkBytes];  // [chunks][row 0's heads, row 1's][128 B]
  uint64_t candidates[2][2][kCap];                                       // [warpgroup][row]: composites
  float scales[kStages][kKeys];                                          // key scales of each stage's keys
  float w[kPairRows];                                                    // head weights, 0 for absent heads and rows
  uint32_t threshold[2];                                                 // a key per row; 0 takes every candidate
  int count[2][2];                                                       // [warpgroup][row]
  uint32_t hist[2][256];                                                 // radix histogram of each warpgroup's cut
  int select[2][4];                                                      // digit, rank left, group size
  int scan[8];                                                           // per math warp: picks before it
  uint64_t q_full, full[kStages], empty[kStages];
};
template <int kElemBytes>
constexpr int kSmemBytes = sizeof(FusedStorage<kElemBytes>) + 1024;  // + room to align the base to 1024
static_assert(kSmemBytes<2> <= 232448 && kSmemBytes<1> <= 232448, "more shared memory than an H100 block may have");

// Appends the lanes' candidates (take) to their rows' buffers (a lane's row is lane % 2), one
// shared atomic a row per warp.
__device__ __forceinline__ void append(bool take, uint64_t c, uint64_t (&buffers)[2][kCap], int (&counts)[2],
                                       int lane) {
  const unsigned taken = __ballot_sync(0xffffffffu, take);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const unsigned lanes = taken & (r == 0 ? 0x55555555u : 0xAAAAAAAAu);
    if (lanes == 0u) continue;
    const int leader = __ffs(lanes) - 1;
    int base = 0;
    if (lane == leader) base = atomicAdd(&counts[r], __popc(lanes));
    base = __shfl_sync(0xffffffffu, base, leader);
    if (take && lane % 2 == r) buffers[r][base + __popc(lanes & ((1u << lane) - 1u))] = c;
  }
}

// The k-th largest of the values v[] of the kGroup threads of named barrier `barrier`.
template <int kGroup>
__device__ __forceinline__ uint64_t kth_largest(const uint64_t (&v)[kPer], int k, uint32_t* hist, int* state, int tid,
                                                int barrier) {
  return kth_largest_composite<kGroup>(
      [&](auto&& f) {
#pragma unroll
        for (int j = 0; j < kPer; ++j) f(v[j]);
      },
      k, hist, state, tid, [&] { named_barrier_sync(barrier, kGroup); });
}

// Cuts a warpgroup's buffer for one row (count > kCap - kStep > k entries) to its k largest; the k-th
// raises the row's threshold to its key. All 128 threads of the warpgroup, after a barrier.
__device__ __noinline__ void cut(uint64_t* buffer, int* count, uint32_t* threshold, uint32_t* hist, int* state, int k,
                                 int tid, int barrier) {
  const int n = *count;
  uint64_t v[kPer];
#pragma unroll
  for (int j = 0; j < kPer; ++j) v[j] = tid + 128 * j < n ? buffer[tid + 128 * j] : 0;
  const uint64_t kth = kth_largest<128>(v, k, hist, state, tid, barrier);
  if (tid == 0) *count = 0;
  named_barrier_sync(barrier, 128);  // every entry is in registers and the count is reset
#pragma unroll
  for (int j = 0; j < kPer; ++j)
    if (v[j] >= kth) buffer[atomicAdd(count, 1)] = v[j];
  if (tid == 0) atomicMax(threshold, uint32_t(kth >> 32));  // atomic: the other warpgroup reads it
  named_barrier_sync(barrier, 128);                         // the kept entries and their count before the next appends
}

// grid (B * ceil(S / 2)), kThreads threads; q and keys bf16 (kElemBytes 2) or e4m3 (1: q_e4m3,
// keys_e4m3). indices [B * S, k].
template <int kElemBytes>
__global__ void __launch_bounds__(kThreads, 1) indexer_topk_sm90_kernel(const IndexerParams p, int* indices, int k) {
  using E = Elem<kElemBytes>;
  using Storage = FusedStorage<kElemBytes>;
  constexpr int kStages = Storage::kStages;
  extern __shared__ uint8_t smem_raw[];
  // The base aligned to 1024 by an offset from smem_raw, so every access compiles to LDS/STS.
  Storage& sm = *reinterpret_cast<Storage*>(smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023));
  // The last pairs of every sequence first (the longest streams, when the sequences start alike).
  const int pairs_per_seq = ceil_div(p.S, 2);
  const int b = int(blockIdx.x % p.B);
  const int s0 = 2 * (pairs_per_seq - 1 - int(blockIdx.x / p.B));
  const int rows = min(2, p.S - s0);
  const int64_t row0 = int64_t(b) * p.S + s0;  // flattened row of s0
  const int q0 = p.q_start[b];
  const int seen = visible_entries(q0 + s0 + rows - 1, p.ratio, p.N);  // entries the pair's last row sees
  if (seen == 0) {
    for (int x = threadIdx.x; x < rows * k; x += kThreads) indices[row0 * k + x] = -1;
    return;
  }
  const int steps = ceil_div(seen, kKeys);
  const int wg = threadIdx.x / 128, tid = threadIdx.x % 128, warp = tid / 32, lane = threadIdx.x % 32;

  if (threadIdx.x == 0) {
    mbar_init(&sm.q_full, 128);
    for (int i = 0; i < kStages; ++i) {
      mbar_init(&sm.full[i], 128);   // the producer's cp.async arrivals
      mbar_init(&sm.empty[i], 256);  // every math thread, after its products and scale reads
    }
    for (int i = 0; i < 4; ++i) sm.count[i / 2][i % 2] = 0;
    sm.threshold[0] = sm.threshold[1] = 0;
    fence_barrier_init();
  }
  __syncthreads();

  if (wg == 2) {  // ---------------------------------------------------------------- producer
    reg_dealloc<56>();
    const uint8_t* q_all = kElemBytes == 2 ? reinterpret_cast<const uint8_t*>(p.q) : p.q_e4m3;
    const uint8_t* keys_all = kElemBytes == 2 ? reinterpret_cast<const uint8_t*>(p.keys) : p.keys_e4m3;
    for (int v = tid; v < kPairRows * E::kUnits; v += 128) {  // unit u of head row r (query row s0 + r / 64)
      const int r = v / E::kUnits, u = v % E::kUnits, s = s0 + r / kHeads, h = r % kHeads;
      const bool valid = s < s0 + rows && h < p.HI;
      const uint8_t* src = q_all + ((int64_t(b) * p.S + s) * p.HI + h) * E::kRowBytes + u * 16;
      cp_async_16(sm.q + (u / 8) * kPairChunkBytes + swizzled(r, u % 8), valid ? src : q_all, valid ? 16 : 0);
    }
    {
      const int s = s0 + tid / kHeads, h = tid % kHeads;
      const bool valid = s < s0 + rows && h < p.HI;
      cp_async_4(&sm.w[tid], valid ? p.weights + (int64_t(b) * p.S + s) * p.HI + h : p.weights, valid ? 4 : 0);
    }
    mbar_arrive_cp_async(&sm.q_full);
    const uint8_t* keys = keys_all + int64_t(b) * p.N * E::kRowBytes;
    for (int i = 0; i < steps; ++i) {
      const int stage = i % kStages;
      if (i >= kStages) mbar_wait(&sm.empty[stage], ((i / kStages) - 1) & 1);
      const int n0 = i * kKeys;
      for (int v = tid; v < kKeys * E::kUnits; v += 128) {  // 16-byte unit u of key n0 + r
        const int r = v / E::kUnits, u = v % E::kUnits;
        const bool valid = n0 + r < seen;
        cp_async_16(sm.keys[stage] + (u / 8) * kKeyChunkBytes + swizzled(r, u % 8),
                    valid ? keys + int64_t(n0 + r) * E::kRowBytes + u * 16 : keys_all, valid ? 16 : 0);
      }
      if (p.key_scales)
        for (int r = tid; r < kKeys; r += 128) {
          const bool valid = n0 + r < seen;
          cp_async_4(&sm.scales[stage][r], valid ? p.key_scales + int64_t(b) * p.N + n0 + r : p.key_scales,
                     valid ? 4 : 0);
        }
      mbar_arrive_cp_async(&sm.full[stage]);
    }
    return;
  }

  // ------------------------------------------------------------------------------------ math
  reg_alloc<224>();
  const int c0 = (lane % 4) * 2;  // this thread's columns c0, c0 + 1 of every 8-column block
  // Lane l of a quad takes (tile, query row) = (l % 4 / 2, l % 2) of its keys, both halves (as in
  // indexer_sm90.cu): keys key_local[half] of each tile.
  const int t_out = (lane % 4) / 2, q_out = lane % 2;
  int key_local[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) key_local[half] = 128 * wg + warp * 16 + lane / 4 + 64 * t_out + 8 * half;
  const int visible = s0 + q_out < s0 + rows ? visible_entries(q0 + s0 + q_out, p.ratio, p.N) : 0;
  int most[2] = {0, 0};  // at least each buffer's count, the same in every thread of the warpgroup
  mbar_wait(&sm.q_full, 0);
  float2 w[2][8];  // the pair's weights stay in registers
  load_pair_weights(w, sm.w, c0);
  for (int i = 0; i < steps; ++i) {
    const int stage = i % kStages;
    mbar_wait(&sm.full[stage], (i / kStages) & 1);
    fence_proxy_async();  // the cp.async writes (generic proxy) before wgmma reads them (async proxy)
    float acc[2][64];
    issue_pair_products<kElemBytes>(acc, sm.keys[stage], sm.q, wg);
    float scale[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) scale[half] = p.key_scales ? sm.scales[stage][key_local[half]] : 1.f;
    wait_pair_products(acc);
    mbar_arrive(&sm.empty[stage]);

    float total[2];
    head_sums_selected(acc, w, t_out, q_out, total);
    // The rows' thresholds, read atomically by lane 0 (the other warpgroup may be raising them).
    uint32_t bars[2] = {0u, 0u};
    if (lane == 0) {
      bars[0] = atomicMax(&sm.threshold[0], 0u);
      bars[1] = atomicMax(&sm.threshold[1], 0u);
    }
    bars[0] = __shfl_sync(0xffffffffu, bars[0], 0);
    bars[1] = __shfl_sync(0xffffffffu, bars[1], 0);
    const uint32_t bar = q_out == 0 ? bars[0] : bars[1];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int n = i * kKeys + key_local[half];
      const uint32_t key = n < visible ? topk_key(scale[half] * total[half]) : 0u;
      append(key != 0u && key >= bar, topk_composite(key, n), sm.candidates[wg], sm.count[wg], lane);
    }
    most[0] += kStep;
    most[1] += kStep;
    if (max(most[0], most[1]) > kCap - kStep) {   // a buffer may be too full for the next step: count them
      named_barrier_sync(kCutBarrier + wg, 128);  // the appends are in
      most[0] = sm.count[wg][0];
      most[1] = sm.count[wg][1];
      named_barrier_sync(kCutBarrier + wg, 128);  // read by all before a cut changes them
#pragma unroll
      for (int r = 0; r < 2; ++r)
        if (most[r] > kCap - kStep) {
          cut(sm.candidates[wg][r], &sm.count[wg][r], &sm.threshold[r], sm.hist[wg], sm.select[wg], k, tid,
              kCutBarrier + wg);
          most[r] = k;
        }
    }
  }

  // ---------------------------------------------------------- the k best of both buffers, ascending
  named_barrier_sync(kMathBarrier, 256);  // both warpgroups are past the stream: buffers final, stages free
  const int t = threadIdx.x, math_warp = t / 32;
  // Thread t scans words [t * per, (t + 1) * per): an odd stride keeps the lanes on distinct banks.
  const int words = ceil_div(seen, 32), per = ceil_div(words, 256) | 1;
  for (int r = 0; r < rows; ++r) {
    const int n_first = sm.count[0][r], total = n_first + sm.count[1][r];
    uint64_t v[kPer];
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int x = t + 256 * j;
      v[j] = x < n_first ? sm.candidates[0][r][x] : x < total ? sm.candidates[1][r][x - n_first] : 0;
    }
    const uint64_t kth = total > k ? kth_largest<256>(v, k, sm.hist[0], sm.select[0], t, kMathBarrier) : 1;
    for (int x = t; x < words; x += 256) sm.picked[x] = 0u;
    named_barrier_sync(kMathBarrier, 256);
#pragma unroll
    for (int j = 0; j < kPer; ++j)
      if (v[j] >= kth) {
        const int n = topk_composite_index(v[j]);
        atomicOr(&sm.picked[n / 32], 1u << (n % 32));
      }
    named_barrier_sync(kMathBarrier, 256);
    // Thread t writes the picks of its words after those of the threads before it.
    const int w_begin = min(words, t * per), w_end = min(words, w_begin + per);
    int mine = 0;
    for (int x = w_begin; x < w_end; ++x) mine += __popc(sm.picked[x]);
    int before = mine;  // inclusive scan over the warp, then the warps before
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, before, o);
      if (lane >= o) before += y;
    }
    if (lane == 31) sm.scan[math_warp] = before;
    named_barrier_sync(kMathBarrier, 256);
    before -= mine;
    for (int x = 0; x < math_warp; ++x) before += sm.scan[x];
    int* out = indices + (row0 + r) * k;
    for (int x = w_begin; x < w_end; ++x)
      for (uint32_t bits = sm.picked[x]; bits != 0u; bits &= bits - 1u) out[before++] = 32 * x + __ffs(bits) - 1;
    for (int x = min(total, k) + t; x < k; x += 256) out[x] = -1;
    named_barrier_sync(kMathBarrier, 256);  // before the next row reuses the bitmap, histogram and scan
  }
}

template <int kElemBytes>
cudaError_t launch(const IndexerParams& p, int* indices, int k, cudaStream_t stream) {
  static PerDevice<cudaError_t> smem_limit;
  const void* kernel = reinterpret_cast<const void*>(indexer_topk_sm90_kernel<kElemBytes>);
  const cudaError_t err = allow_dynamic_smem(smem_limit, kernel, kSmemBytes<kElemBytes>);
  if (err != cudaSuccess) return err;
  const int64_t ctas = int64_t(p.B) * ceil_div(p.S, 2);
  indexer_topk_sm90_kernel<kElemBytes><<<unsigned(ctas), kThreads, kSmemBytes<kElemBytes>, stream>>>(p, indices, k);
  return cudaGetLastError();
}

}  // namespace

bool indexer_topk_sm90_supported(const IndexerParams& p, int k) {
  return p.DI == kDim && p.HI >= 1 && p.HI <= kHeads && p.N >= 1 && p.N <= kMaxEntries && k >= 1 && k <= kMaxK &&
         p.row_begin == 0 && p.row_end == int64_t(p.B) * p.S && int64_t(p.B) * ceil_div(p.S, 2) <= INT_MAX;
}

cudaError_t indexer_topk_sm90(const IndexerParams& p, int* indices, int k, cudaStream_t stream) {
  if (!indexer_topk_sm90_supported(p, k)) return cudaErrorInvalidValue;
  if (p.row_end == 0) return cudaSuccess;
  return p.keys_e4m3 ? launch<1>(p, indices, k, stream) : launch<2>(p, indices, k, stream);
}

}  // namespace lcattn
