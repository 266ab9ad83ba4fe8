// Top-k of long rows in one read (SPEC 4's contract): rows of 16K entries or more, 1 <= k <= 2048,
// and rows enough for a CTA an SM (below that topk_split.cu's kernels are faster: 1 x 262,144 28
// against 48 us on an H100); LCATTN_TOPK_STREAM=0 leaves every row to topk_split.cu, =1 takes every
// row of 16K entries or more here. Each row is cut into P parts (enough
// CTAs for three an SM over all rows, parts of two tiles but the last, which may have one), one CTA a part. A CTA
// streams its part once in tiles of 4096 entries (a thread's 16 entries of the next tile in flight while it sifts this
// one; 16-byte loads when rows are 16-byte aligned) and keeps the entries whose key is above its threshold (at first a
// bound taken from its first two tiles) in a buffer of composites (common/topk_select.cuh); when the buffer could
// overflow on the next tile it is cut to its k largest, and the k-th's key becomes the threshold: the k-th of a subset
// of the row, so a lower bound on the row's k-th. An entry whose key equals it comes after those k (tiles go in index
// order), so it is never among the row's k best, and no pick is dropped. At the end each part's k best go to the
// workspace, and the last CTA of the row to finish (a ticket) selects the row's k from the parts', marks their indices
// in a bitmap of the row over the buffer (a bitonic sort past 393,216 entries) and writes them in order, then -1; with
// one part the CTA does that itself. One kernel and a memset of the tickets per call; the same picks as the other top-k
// kernels (ties to the lower index), on every run.
#include <algorithm>
#include <climits>

#include "common/device.h"
#include "common/topk_key.cuh"
#include "common/topk_select.cuh"
#include "lcattn/api.h"
#include "lcattn/switches.h"
#include "lcattn/workspace.h"
#include "topk_stream.h"

namespace lcattn {
namespace {

constexpr int kThreads = 256, kLoads = 16, kTile = kThreads * kLoads;  // 4096 entries a step
constexpr int kCap = 6144;                                             // composites a CTA buffers
constexpr int kMaxK = kCap - kTile;                                    // 2048: after a cut a whole tile fits
constexpr int kCtasPerSm = 3;
constexpr int kMinEntries = 16384;
constexpr int kMinPartTiles = 2;
// Dynamic shared memory: the buffer, the picks' indices to sort, the radix histogram, then ints:
// [0, 3) the select's state, 3 the buffer's count, 4 the picks' count, 5 the ticket.
constexpr size_t kSmemBytes = kCap * sizeof(uint64_t) + kMaxK * sizeof(int) + 256 * sizeof(uint32_t) + 8 * sizeof(int);

constexpr int kMaxWave = kCtasPerSm * 256;  // the workspace holds the parts of this many CTAs
constexpr int kMarkedEntries = kCap * 64;   // a bitmap of the row over the buffer: 393,216 entries

// The current device's SMs (132 when it cannot be asked).
int sm_count() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) == cudaSuccess) sms = device_sm_count(device);
  return sms > 0 ? sms : 132;
}
// CTAs for one wave over the current device, at most kMaxWave (the workspace does not depend on
// the device: it may be sized before the call's device is made current).
int wave_ctas() { return std::min(kMaxWave, kCtasPerSm * sm_count()); }

__host__ __device__ inline int tiles_of(int N) { return (N - 1) / kTile + 1; }  // N >= 1

// Parts of each row: about one wave of CTAs over all rows; parts of two tiles or more but the last
// (which may have one), none empty,
// and the parts' k best together fit one CTA's buffer for the merge.
int parts_of(const TopkParams& p) {
  const int tiles = tiles_of(p.N);
  int64_t parts = std::max<int64_t>(1, wave_ctas() / std::max<int64_t>(p.R, 1));
  parts = std::min<int64_t>(parts, std::max(1, tiles / kMinPartTiles));
  parts = std::max<int64_t>(1, std::min<int64_t>(parts, kCap / p.k));
  const int per_part = int((tiles + parts - 1) / parts);
  return (tiles + per_part - 1) / per_part;
}

// The workspace: a ticket per row (zeroed per call), and for rows of several parts each part's
// count and its k best. Sized for any call of up to p.R rows with p's N and k (R * parts <= the
// target when parts > 1).
struct StreamLayout {
  int parts;
  int* ticket;          // [R]
  int* part_count;      // [R * parts]
  uint64_t* part_best;  // [R * parts, k]
  size_t ticket_bytes, bytes;

  StreamLayout(const TopkParams& p, void* workspace) {
    parts = parts_of(p);
    WorkspaceCarver carve(workspace);
    ticket = carve.take<int>(size_t(p.R));
    ticket_bytes = carve.bytes();
    part_count = carve.take<int>(kMaxWave);  // R * parts <= the wave when parts > 1
    part_best = carve.take<uint64_t>(size_t(kMaxWave) * p.k);
    bytes = carve.bytes();
  }
};

__device__ __forceinline__ void block_sync() { __syncthreads(); }

// The k-th largest of the first n composites of buffer (n > k), by the whole block.
__device__ __forceinline__ uint64_t kth_in_buffer(const uint64_t* buffer, int n, int k, uint32_t* hist, int* state) {
  return kth_largest_composite<kThreads>(
      [&](auto&& f) {
        for (int x = threadIdx.x; x < n; x += kThreads) f(buffer[x]);
      },
      k, hist, state, threadIdx.x, block_sync);
}

// Cuts the buffer's n composites (n > k) to its k largest, in place; returns the k-th. Groups of 4
// entries a thread are read, then their survivors written after the survivors before them: the
// writes land below the entries read so far, so nothing is overwritten before it is read.
__device__ __noinline__ uint64_t cut(uint64_t* buffer, int n, int k, uint32_t* hist, int* state, int* count) {
  const uint64_t kth = kth_in_buffer(buffer, n, k, hist, state);
  if (threadIdx.x == 0) *count = 0;
  __syncthreads();
  for (int g = 0; g < n; g += 4 * kThreads) {
    uint64_t v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int x = g + threadIdx.x + kThreads * j;
      v[j] = x < n ? buffer[x] : 0;
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (v[j] >= kth) buffer[atomicAdd(count, 1)] = v[j];
  }
  __syncthreads();
  return kth;
}

// The m indices of picked (distinct, in [0, N)) ascending into out: each marked in a bitmap of the
// row's entries in `words` [ceil(N / 32)], then thread t writes the marks of its words after those
// of the threads before it (an odd number of words a thread, so that the lanes read distinct banks).
// warp_sums: [kThreads / 32] of scratch.
__device__ void write_marked(const int* picked, int m, int N, uint32_t* words, int* warp_sums, int* out) {
  const int t = threadIdx.x, lane = t % 32, warp = t / 32;
  const int count = (N + 31) / 32, per = ((count + kThreads - 1) / kThreads) | 1;
  for (int x = t; x < count; x += kThreads) words[x] = 0u;
  __syncthreads();
  for (int i = t; i < m; i += kThreads) atomicOr(&words[picked[i] / 32], 1u << (picked[i] % 32));
  __syncthreads();
  const int begin = min(count, t * per), end = min(count, begin + per);
  int mine = 0;
  for (int x = begin; x < end; ++x) mine += __popc(words[x]);
  int upto = mine;  // inclusive sum over the warp, then the warps before
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, upto, o);
    if (lane >= o) upto += y;
  }
  if (lane == 31) warp_sums[warp] = upto;
  __syncthreads();
  int at = upto - mine;
  for (int w = 0; w < warp; ++w) at += warp_sums[w];
  for (int x = begin; x < end; ++x)
    for (uint32_t bits = words[x]; bits != 0u; bits &= bits - 1u) out[at++] = 32 * x + __ffs(bits) - 1;
}

// The m indices of picked (distinct; [kMaxK] of room) ascending into out, by a bitonic sort in place.
__device__ void write_sorted(int* picked, int m, int* out) {
  int m2 = 1;
  while (m2 < m) m2 <<= 1;
  for (int x = m + threadIdx.x; x < m2; x += kThreads) picked[x] = INT_MAX;
  __syncthreads();
  for (int size = 2; size <= m2; size <<= 1)
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < m2 / 2; i += kThreads) {
        const int lo = 2 * i - (i & (stride - 1)), hi = lo + stride;
        const int a = picked[lo], b = picked[hi];
        if ((a > b) == ((lo & size) == 0)) {
          picked[lo] = b;
          picked[hi] = a;
        }
      }
      __syncthreads();
    }
  for (int x = threadIdx.x; x < m; x += kThreads) out[x] = picked[x];
}

// The k best of the buffer's n composites, their indices ascending into out [k], then -1: for rows
// of up to kMarkedEntries through a bitmap of the row over the buffer (free once the picks are out
// of it), else sorted.
__device__ void write_best(uint64_t* buffer, int n, int k, int N, int* sorted, uint32_t* hist, int* state, int* picks,
                           int* out) {
  const uint64_t kth = n > k ? kth_in_buffer(buffer, n, k, hist, state) : 1;
  if (threadIdx.x == 0) *picks = 0;
  __syncthreads();
  for (int x = threadIdx.x; x < n; x += kThreads)
    if (buffer[x] >= kth) sorted[atomicAdd(picks, 1)] = topk_composite_index(buffer[x]);
  __syncthreads();
  const int m = *picks;  // min(n, k)
  if (N <= kMarkedEntries)
    write_marked(sorted, m, N, reinterpret_cast<uint32_t*>(buffer), reinterpret_cast<int*>(hist), out);
  else
    write_sorted(sorted, m, out);
  for (int x = m + threadIdx.x; x < k; x += kThreads) out[x] = -1;
}

// Entry j of this thread in a tile: with kVec (rows 16-byte aligned, N a multiple of 4) 4 float4
// of 4 consecutive entries 1024 apart, else 16 single entries 256 apart; both coalesced.
template <bool kVec>
__device__ __forceinline__ int entry_of(int tile, int j) {
  const int t = threadIdx.x;
  return tile * kTile + (kVec ? 4 * (t + kThreads * (j / 4)) + j % 4 : t + kThreads * j);
}

// A thread's entries of a tile (read once: evict-first), -inf past the row.
template <bool kVec>
__device__ __forceinline__ void load_tile(const float* row, int N, int tile, float (&v)[kLoads]) {
  if constexpr (kVec) {
#pragma unroll
    for (int q = 0; q < kLoads / 4; ++q) {
      const int n = entry_of<true>(tile, 4 * q);
      const float4 x = n < N ? __ldcs(reinterpret_cast<const float4*>(row + n))
                             : make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
      v[4 * q] = x.x, v[4 * q + 1] = x.y, v[4 * q + 2] = x.z, v[4 * q + 3] = x.w;
    }
  } else {
#pragma unroll
    for (int j = 0; j < kLoads; ++j) {
      const int n = entry_of<false>(tile, j);
      v[j] = n < N ? __ldcs(row + n) : -INFINITY;
    }
  }
}

// A lower bound of the k-th largest key of a part from its first two tiles, which are in registers
// (tile 2's keys 0 when the part has one tile): each thread cuts its 32 keys into g groups of 32 / g
// (the least g of 1, 2, 4, 8 with kThreads * g >= k), and every group's largest key is at least the
// smallest over the block, so that many entries, at least k, are at or above it. For normal scores
// at k = 512 that is about two thirds of the way up (512 maxima of 16), so the first tile no longer fills
// the buffer to be cut at once while the stream waits (LCATTN_TOPK_FIRST_BOUND=0 starts from 0).
// hist: [kThreads / 32] of scratch, free until the first tile's appends are in. Every thread gets it.
__device__ __forceinline__ uint32_t first_bound(const float (&v)[kLoads], const float (&next)[kLoads], bool has_next,
                                                int k, uint32_t* hist) {
  uint32_t m8[8];  // the largest of keys 4 i .. 4 i + 3 of the 32
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    uint32_t m = 0u;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float x = i < 4 ? v[4 * i + j] : next[4 * (i - 4) + j];
      m = max(m, i < 4 || has_next ? topk_key(x) : 0u);
    }
    m8[i] = m;
  }
  const uint32_t m4[4] = {max(m8[0], m8[1]), max(m8[2], m8[3]), max(m8[4], m8[5]), max(m8[6], m8[7])};
  const uint32_t m2[2] = {max(m4[0], m4[1]), max(m4[2], m4[3])};
  const int groups = (k + kThreads - 1) / kThreads;  // 1 .. 8
  uint32_t mine = max(m2[0], m2[1]);
  if (groups == 2) mine = min(m2[0], m2[1]);
  if (groups > 2 && groups <= 4) mine = min(min(m4[0], m4[1]), min(m4[2], m4[3]));
  if (groups > 4) {
#pragma unroll
    for (int i = 0; i < 8; ++i) mine = min(mine, m8[i]);
  }
  mine = __reduce_min_sync(0xffffffffu, mine);
  if (threadIdx.x % 32 == 0) hist[threadIdx.x / 32] = mine;
  __syncthreads();
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) mine = min(mine, hist[w]);
  return mine;
}

// grid (R, parts), kThreads threads, kSmemBytes of dynamic shared memory.
template <bool kVec, bool kBound>
__global__ void __launch_bounds__(kThreads, kCtasPerSm) topk_stream_kernel(const TopkParams p, const StreamLayout l) {
  extern __shared__ uint64_t stream_smem[];
  uint64_t* buffer = stream_smem;                                // [kCap]
  int* sorted = reinterpret_cast<int*>(buffer + kCap);           // [kMaxK]
  uint32_t* hist = reinterpret_cast<uint32_t*>(sorted + kMaxK);  // [256]
  int* ints = reinterpret_cast<int*>(hist + 256);                // [8]
  int* state = ints;
  int* count = ints + 3;
  const int row = blockIdx.x, part = blockIdx.y, t = threadIdx.x, lane = t % 32;
  const int tiles = tiles_of(p.N), per_part = (tiles + l.parts - 1) / l.parts;
  const int tile_begin = part * per_part, tile_end = min(tiles, tile_begin + per_part);
  const float* scores = p.scores + int64_t(row) * p.N;
  if (t == 0) *count = 0;
  __syncthreads();
  // Entries with a key above the threshold are candidates (the same in every thread; 0 takes every
  // entry that can be picked).
  float v[kLoads], next[kLoads];
  load_tile<kVec>(scores, p.N, tile_begin, v);
  uint32_t threshold = 0u;
  if constexpr (kBound) {  // keys at or above the bound; the second tile is loaded here, not in the loop
    const bool has_next = tile_begin + 1 < tile_end;
    if (has_next) load_tile<kVec>(scores, p.N, tile_begin + 1, next);
    threshold = max(first_bound(v, next, has_next, p.k, hist), 1u) - 1u;
  }
  for (int tile = tile_begin; tile < tile_end; ++tile) {
    if (tile + 1 < tile_end && !(kBound && tile == tile_begin)) load_tile<kVec>(scores, p.N, tile + 1, next);
    uint32_t taken = 0u;
#pragma unroll
    for (int j = 0; j < kLoads; ++j) taken |= (topk_key(v[j]) > threshold ? 1u : 0u) << j;
    const int mine = __popc(taken);
    int upto = mine;  // inclusive sum over the warp
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, upto, o);
      if (lane >= o) upto += y;
    }
    int at = 0;
    if (lane == 31 && upto > 0) at = atomicAdd(count, upto);
    at = __shfl_sync(0xffffffffu, at, 31) + upto - mine;
#pragma unroll
    for (int j = 0; j < kLoads; ++j)
      if (taken >> j & 1u) buffer[at++] = topk_composite(topk_key(v[j]), entry_of<kVec>(tile, j));
    __syncthreads();  // the tile's appends are in
    const int n = *count;
    __syncthreads();  // read by all before a cut changes it
    if (n > kCap - kTile) threshold = max(threshold, topk_composite_key(cut(buffer, n, p.k, hist, state, count)));
#pragma unroll
    for (int j = 0; j < kLoads; ++j) v[j] = next[j];
  }
  int n = *count;  // after the last tile's barriers
  int* out = p.indices + int64_t(row) * p.k;
  if (l.parts == 1) {
    write_best(buffer, n, p.k, p.N, sorted, hist, state, ints + 4, out);
    return;
  }
  // Several parts: this part's k best to the workspace; the row's last CTA to finish merges them.
  if (n > p.k) {
    cut(buffer, n, p.k, hist, state, count);
    n = p.k;
  }
  const int64_t slot = int64_t(row) * l.parts + part;
  uint64_t* best = l.part_best + slot * p.k;
  for (int x = t; x < n; x += kThreads) best[x] = buffer[x];
  if (t == 0) l.part_count[slot] = n;
  __threadfence();  // this part's results before its ticket
  __syncthreads();
  if (t == 0) ints[5] = atomicAdd(&l.ticket[row], 1);
  __syncthreads();
  if (ints[5] != l.parts - 1) return;  // the same for the whole block
  __threadfence();                     // every part's results, after their tickets
  // The parts' counts, then their best 8 a thread at a time into the buffer: a few round trips to L2
  // instead of two a part (at 64 x 262,144 on an H100 3.4 against 4.0 us).
  int* counts = sorted;  // [parts], free until write_best
  const int64_t first = int64_t(row) * l.parts;
  for (int q = t; q < l.parts; q += kThreads) counts[q] = __ldcg(l.part_count + first + q);  // up to kMaxWave
  __syncthreads();
  int total = 0;
  for (int q = 0; q < l.parts; ++q) total += counts[q];
  int q = 0, start = 0;  // the part of this thread's place x and the part's first place (x only grows)
  for (int base = 0; base < total; base += 8 * kThreads) {
    uint64_t got[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int x = base + kThreads * j + t;
      got[j] = 0;
      if (x < total) {
        while (x - start >= counts[q]) start += counts[q++];
        got[j] = __ldcg(l.part_best + (first + q) * p.k + (x - start));
      }
    }
#pragma unroll
    for (int j = 0; j < 8; ++j)
      if (base + kThreads * j + t < total) buffer[base + kThreads * j + t] = got[j];
  }
  __syncthreads();
  write_best(buffer, total, p.k, p.N, sorted, hist, state, ints + 4, out);
}

// Rows the kernel can take: 16K entries or more, 1 <= k <= kMaxK, unless LCATTN_TOPK_STREAM=0.
bool stream_fits(const TopkParams& p) {
  return !env_is("LCATTN_TOPK_STREAM", "0") && p.N >= kMinEntries && p.k >= 1 && p.k <= kMaxK && p.R >= 1 &&
         p.R <= INT_MAX;
}

}  // namespace

bool topk_stream_takes(const TopkParams& p) {
  if (!stream_fits(p)) return false;
  // Rows with parts for twice the SMs (parts are capped by the merge buffer and the row's tiles).
  // Measured on the H100 at 262,144 entries and k = 512 (12 parts a row): 16 rows (192 parts) took
  // 51 us here against 43 in the split kernels, 64 rows (768 parts) 63 against 81.
  const int64_t parts_cap = std::min<int64_t>(kCap / p.k, std::max(1, tiles_of(p.N) / kMinPartTiles));
  return env_is("LCATTN_TOPK_STREAM", "1") || p.R * parts_cap >= 2 * sm_count();
}

size_t topk_stream_workspace_bytes(const TopkParams& p) { return stream_fits(p) ? StreamLayout(p, nullptr).bytes : 0; }

cudaError_t topk_stream_cuda(const TopkParams& p, cudaStream_t stream) {
  if (!topk_stream_takes(p) || !p.split_workspace) return cudaErrorInvalidValue;
  const StreamLayout l(p, p.split_workspace);
  const bool vec = p.N % 4 == 0 && reinterpret_cast<uintptr_t>(p.scores) % 16 == 0;
  const bool bound = !env_is("LCATTN_TOPK_FIRST_BOUND", "0");
  const auto kernel = vec ? (bound ? topk_stream_kernel<true, true> : topk_stream_kernel<true, false>)
                          : (bound ? topk_stream_kernel<false, true> : topk_stream_kernel<false, false>);
  static PerDevice<cudaError_t> smem_limit[2][2];
  cudaError_t err = allow_dynamic_smem(smem_limit[vec][bound], reinterpret_cast<const void*>(kernel), int(kSmemBytes));
  if (err == cudaSuccess && l.parts > 1) err = cudaMemsetAsync(l.ticket, 0, l.ticket_bytes, stream);
  if (err != cudaSuccess) return err;
  kernel<<<dim3(unsigned(p.R), unsigned(l.parts)), kThreads, kSmemBytes, stream>>>(p, l);
  return cudaGetLastError();
}

}  // namespace lcattn
