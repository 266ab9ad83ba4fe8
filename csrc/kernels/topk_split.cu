// Top-k of long rows (16K entries or more: decode's 1 to 64 rows, prefill's thousands) with each row
// spread over many CTAs; the contract of SPEC 4 (ascending indices, -1 padding, NaN and -inf never picked,
// deterministic). The one-CTA kernel of indexer.cu reads such a row six times on one SM and orders
// its picks 512 at a time with two block scans each (0.92 ms for 262,144 entries). Here, per row
// chunks of 4096 entries, one CTA each:
//   3 rounds of radix select on the 32-bit key (11, 11 and 10 bits): a histogram kernel over chunks
//   x rows (shared counts, then global atomics), then a one-block select kernel per row that fixes
//   the next digit of the k-th largest key (a select folded into each histogram's last CTA per row
//   measured no faster; kernel notes);
//   a write kernel: each CTA holds its chunk in registers, counts its keys above the threshold key
//   and its ties, learns the earlier chunks' counts by a decoupled look-back (CTAs take chunks in
//   ticket order, so every chunk they wait on is running or done), and puts its picks after theirs
//   in index order (ties: the first ones).
// For 16 to 256 rows of up to 4M entries, after
// round 0 a filter kernel keeps each chunk's keys at or above the bin of round 0's digit (every pick
// is among them), in index order, and a finish kernel per row runs rounds 1 and 2 and the ordered
// write on those few thousand keys in shared memory: the rows are read twice, not four times. A row
// whose chunk keeps more than its slots, or more than the finish kernel holds, goes on through the
// rounds and the write as without it (the rows the finish kernel took skip them).
// Filtered rows skip round 0's histogram of every key (LCATTN_TOPK_SAMPLE=0 keeps it): a kernel per row
// selects the filter's bound from a sample of the row, and only the rows the finish kernel cannot take
// (fewer than k keys at or above the bound, or an overflow) go on through the three rounds and the
// write.
// Every count is an integer, so the result is the same on every run. LCATTN_TOPK_SPLIT=0 turns it off;
// topk_stream.cu's one-read kernel runs instead where it takes the rows (LCATTN_TOPK_STREAM=0: these).
#include <cub/block/block_scan.cuh>

#include <algorithm>

#include "common/chain.cuh"
#include "common/device.h"
#include "common/reduce.cuh"
#include "common/topk_key.cuh"
#include "lcattn/api.h"
#include "lcattn/switches.h"
#include "lcattn/workspace.h"
#include "topk_stream.h"

namespace lcattn {
namespace {

constexpr int kThreads = 256, kWarps = kThreads / 32;
constexpr int kBins = 2048;                 // the widest digit: 11 bits
constexpr int kPerLane = 16;                // keys a thread holds in the write kernel
constexpr int kWarpKeys = 32 * kPerLane;    // a warp's contiguous part of a chunk
constexpr int kChunk = kWarps * kWarpKeys;  // entries per CTA: 4096
constexpr int kMinEntries = 16384;          // entries from which it runs
constexpr int kSliceRows = 4096;            // rows per pass: the workspace (8 KB a row) and grid.y stay bounded

// Round r decides bits [shift, shift + bits) of the threshold key; the bits above are known.
__device__ __forceinline__ int round_shift(int r) { return r == 0 ? 21 : (r == 1 ? 10 : 0); }
__device__ __forceinline__ int round_bits(int r) { return r == 2 ? 10 : 11; }
__device__ __forceinline__ uint32_t known_mask(int r) { return r == 0 ? 0u : (r == 1 ? 0xFFE00000u : 0xFFFFFC00u); }

struct RowState {
  uint32_t prefix;     // the threshold key's bits decided so far
  int remaining;       // keys still to take at or below the prefix (after the last round: ties to take)
  int candidates;      // keys that are neither NaN nor -inf
  int done;            // candidates <= k: take them all (threshold 0, no ties); or finished
  int overflow;        // filtering: a chunk kept more keys than its slots
  int finished;        // filtering: the finish kernel wrote the row
  uint32_t keep_from;  // sampling: the filter keeps the keys at or above it (0: every candidate)
};

// The filtering path's sizes: rows per call, entries per row (chunks the finish kernel scans in
// one step), keys a row may keep.
constexpr int kFilterMinRows = 16, kFilterMaxRows = 256, kFinishThreads = 1024;
constexpr int kFilterMaxChunks = kFinishThreads, kFilterMaxKeys = 12 * kFinishThreads;
// A chunk's slots: 8 k / chunks (a row keeps the k picks and the rest of round 0's bin, about 3 k
// for normal scores), at least 64, a multiple of 32.
inline int filter_slots(int k, int chunks) {
  const int want = std::max(64, 8 * k / chunks);
  return std::min(kChunk, (want + 31) / 32 * 32);
}
// Whether the workspace holds the filtering buffers (for up to kFilterMaxRows of p.R rows): rows
// are filtered when this holds for the call and it has kFilterMinRows..kFilterMaxRows rows. Sized
// for any p.R from kFilterMinRows: a call may have fewer rows than the workspace was sized for
// (indexer_topk's last block of rows), and its Layout must fit in that workspace.
bool filter_sized(const TopkParams& p) {
  return p.R >= kFilterMinRows && p.k >= 1 && p.k <= kFilterMaxKeys &&
         (int64_t(p.N) + kChunk - 1) / kChunk <= kFilterMaxChunks;
}

// A chunk's counts as its write CTA publishes them for the look-back: bits 62-63 the kind (0: not
// yet, 1: the chunk's own counts, 2: counts of this and every earlier chunk), 31-61 the keys above
// the threshold key, 0-30 the ties (counts up to N < 2^31).
constexpr uint64_t kOwn = 1ull << 62, kInclusive = 2ull << 62, kCountMask = (1ull << 31) - 1;
__device__ __forceinline__ uint64_t pack_counts(uint64_t kind, int above, int ties) {
  return kind | uint64_t(above) << 31 | uint64_t(ties);
}

// Where the split path keeps its counts in the workspace (zeroed at the start of each pass of rows),
// then, when it may filter, the kept keys (written before they are read).
struct Layout {
  int chunks;            // CTAs per row in the rounds and the write
  int* hist;             // [R, kBins]; each round's select clears it for the next
  RowState* state;       // [R]
  uint64_t* counts;      // [R, chunks]: pack_counts
  int* ticket;           // the write kernel's next chunk, in launch order
  size_t counter_bytes;  // the part above, zeroed for each pass of rows
  // Filtering (null otherwise): chunk c of row r keeps its keys at [r][c][0, min(count, slots)).
  int slots = 0;
  uint32_t* kept_keys = nullptr;  // [R, chunks, slots] topk_key
  int* kept_index = nullptr;      // [R, chunks, slots] their indices in the row
  int* kept_count = nullptr;      // [R, chunks] keys the chunk kept (more than slots: overflow)
  size_t bytes;

  Layout(const TopkParams& p, void* workspace) {
    chunks = (p.N + kChunk - 1) / kChunk;
    WorkspaceCarver carve(workspace);
    const size_t rows = size_t(std::min<int64_t>(p.R, kSliceRows));
    hist = carve.take<int>(rows * kBins);
    state = carve.take<RowState>(rows);
    counts = carve.take<uint64_t>(rows * chunks);
    ticket = carve.take<int>(1);
    counter_bytes = carve.bytes();
    if (filter_sized(p)) {
      const size_t kept_rows = size_t(std::min<int64_t>(p.R, kFilterMaxRows));
      slots = filter_slots(p.k, chunks);
      kept_keys = carve.take<uint32_t>(kept_rows * chunks * slots);
      kept_index = carve.take<int>(kept_rows * chunks * slots);
      kept_count = carve.take<int>(kept_rows * chunks);
    }
    bytes = carve.bytes();
  }
  int sampled = 0;  // filtering from a sampled bound (topk_sample_kernel), not round 0's bin
  // Whether this call's rows are filtered (the workspace was sized for them: see filter_sized).
  bool filters(const TopkParams& p) const { return kept_keys && p.R >= kFilterMinRows && p.R <= kFilterMaxRows; }
};

// grid (chunks, R): histogram of round r's digit over the chunk's keys that match the prefix; in
// round 0 also the chunk's candidates.
__global__ void __launch_bounds__(kThreads) topk_hist_kernel(const TopkParams p, const Layout l, int r) {
  __shared__ int hist[kBins];
  __shared__ int scratch[32];
  chain_start();
  const int row = blockIdx.y;
  if (l.state[row].done) return;
  const uint32_t prefix = l.state[row].prefix, mask = known_mask(r);
  const int shift = round_shift(r);
  const uint32_t digits = (1u << round_bits(r)) - 1u;
  for (int x = threadIdx.x; x < kBins; x += kThreads) hist[x] = 0;
  __syncthreads();
  const float* scores = p.scores + int64_t(row) * p.N;
  const int begin = blockIdx.x * kChunk, end = min(p.N, begin + kChunk);
  int candidates = 0;
  for (int i = begin + threadIdx.x; i < end; i += kThreads) {
    const uint32_t key = topk_key(scores[i]);
    candidates += key != 0u;
    if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & digits], 1);
  }
  if (r == 0) candidates = block_sum(candidates, scratch);  // (its syncs also order the hist)
  __syncthreads();
  int* global = l.hist + int64_t(row) * kBins;
  for (int x = threadIdx.x; x < kBins; x += kThreads)
    if (hist[x]) atomicAdd(&global[x], hist[x]);
  if (r == 0 && threadIdx.x == 0 && candidates) atomicAdd(&l.state[row].candidates, candidates);
}

// grid R, one block: the digit of round r where the k-th largest key falls. Thread t holds 8 bins,
// thread 0 the highest; a block scan of their sums finds the one thread whose bins reach the k-th
// key, and it walks its 8. Each thread then clears its bins for the next round.
constexpr int kBinsPerThread = kBins / kThreads;
__global__ void __launch_bounds__(kThreads) topk_select_kernel(const TopkParams p, const Layout l, int r) {
  __shared__ int warp_sums[kWarps];
  __shared__ int found[3];  // the digit (-1: none), the keys above it, the count of bin 0
  chain_start();
  const int row = blockIdx.x, t = threadIdx.x, lane = t & 31, warp = t >> 5;
  RowState* state = l.state + row;
  if (state->done) return;  // the same for the whole block
  int* hist = l.hist + int64_t(row) * kBins;
  const bool take_all = r == 0 && state->candidates <= p.k;  // threshold key 0 (NaN and -inf)
  int remaining = r == 0 ? p.k : state->remaining;
  const int bins = 1 << round_bits(r), top = kBins - 1 - t * kBinsPerThread;  // this thread's highest bin
  int count[kBinsPerThread], sum = 0;
#pragma unroll
  for (int j = 0; j < kBinsPerThread; ++j) {
    count[j] = top - j < bins ? hist[top - j] : 0;
    sum += count[j];
  }
  int cum = sum;  // inclusive sum over the warp's lanes, in descending bins
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int n = __shfl_up_sync(0xffffffffu, cum, o);
    if (lane >= o) cum += n;
  }
  if (lane == 31) warp_sums[warp] = cum;
  if (t == 0) found[0] = -1;
  if (t == kThreads - 1) found[2] = count[kBinsPerThread - 1];
  __syncthreads();
  int above = cum - sum, total = 0;  // keys in the bins above this thread's; in all bins
  for (int w = 0; w < kWarps; ++w) {
    above += w < warp ? warp_sums[w] : 0;
    total += warp_sums[w];
  }
  if (!take_all && above < remaining && above + sum >= remaining) {
#pragma unroll
    for (int j = 0; j < kBinsPerThread; ++j) {
      if (above + count[j] >= remaining) {
        found[0] = top - j, found[1] = above;
        break;
      }
      above += count[j];
    }
  }
#pragma unroll
  for (int j = 0; j < kBinsPerThread; ++j) hist[top - j] = 0;
  __syncthreads();
  if (t != 0) return;
  if (take_all) {
    remaining = 0;
  } else {
    int digit = found[0], keys_above = found[1];
    if (digit < 0) {  // cannot happen with more candidates than k; as the one-CTA kernel: digit 0
      digit = 0;
      keys_above = total - found[2];
    }
    remaining -= keys_above;
    state->prefix |= uint32_t(digit) << round_shift(r);
  }
  state->remaining = remaining;
  if (remaining == 0) state->done = 1;
}

// A warp's 16 keys per lane of a chunk: lane l holds entries lo + 32 j + l (key 0 past n).
__device__ __forceinline__ void load_keys(const float* scores, int n, int lo, int lane, uint32_t (&key)[kPerLane]) {
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int i = lo + j * 32 + lane;
    key[j] = i < n ? topk_key(scores[i]) : 0u;
  }
}

// The warp's keys above the threshold and its ties (keys equal to it, never key 0).
__device__ __forceinline__ void count_picks(const uint32_t (&key)[kPerLane], uint32_t threshold, int& above,
                                            int& ties) {
  above = ties = 0;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    above += __popc(__ballot_sync(0xffffffffu, key[j] > threshold));
    ties += __popc(__ballot_sync(0xffffffffu, key[j] != 0u && key[j] == threshold));
  }
}

// The warp's picks in index order: the keys above the threshold, and ties while fewer than `take`
// ties come before them; emit(slot, j) for each, slots from `slot` on. tie_rank: ties before the
// warp's part (slot already counts the ties of those that are taken).
template <typename Emit>
__device__ __forceinline__ void write_picks(const uint32_t (&key)[kPerLane], uint32_t threshold, int take, int tie_rank,
                                            int slot, int lane, Emit emit) {
  const unsigned below = (1u << lane) - 1u;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const bool tie = key[j] != 0u && key[j] == threshold;
    const unsigned ties_here = __ballot_sync(0xffffffffu, tie);
    const bool pick = key[j] > threshold || (tie && tie_rank + __popc(ties_here & below) < take);
    const unsigned picks = __ballot_sync(0xffffffffu, pick);
    if (pick) emit(slot + __popc(picks & below), j);
    tie_rank += __popc(ties_here);
    slot += __popc(picks);
  }
}

// grid chunks x R (in ticket order): the chunk's picks, in index order after the earlier chunks'
// picks. Warp w holds entries [w * 512, (w + 1) * 512) of the chunk, 16 per lane; ballots order the
// lanes. The last chunk writes the -1 padding.
// Held to 32 registers without spills, 8 CTAs an SM (left to ptxas it takes 59, 4 CTAs an SM), so
// twice the chunks have their loads in flight while others wait in the look-back (1.06-1.09x).
__global__ void __launch_bounds__(kThreads, 8) topk_write_kernel(const TopkParams p, const Layout l) {
  __shared__ int chunk_id, warp_above[kWarps], warp_ties[kWarps];
  __shared__ int before[2];  // keys above the threshold and ties in the earlier chunks
  chain_start();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (threadIdx.x == 0) chunk_id = atomicAdd(l.ticket, 1);
  __syncthreads();
  const int row = chunk_id / l.chunks, c = chunk_id % l.chunks;
  if (l.state[row].finished) return;  // the finish kernel wrote it (so did every chunk of it)
  const uint32_t threshold = l.state[row].prefix;
  const int take = l.state[row].remaining;  // ties to take, the first in index order
  const int lo = c * kChunk + warp * kWarpKeys;
  uint32_t key[kPerLane];
  load_keys(p.scores + int64_t(row) * p.N, p.N, lo, lane, key);
  int above, ties;
  count_picks(key, threshold, above, ties);
  if (lane == 0) warp_above[warp] = above, warp_ties[warp] = ties;
  __syncthreads();
  if (warp == 0) {  // publish this chunk's counts, then look back 32 chunks at a time
    int chunk_above = 0, chunk_ties = 0;
    for (int w = 0; w < kWarps; ++w) chunk_above += warp_above[w], chunk_ties += warp_ties[w];
    auto* counts = reinterpret_cast<unsigned long long*>(l.counts + int64_t(row) * l.chunks);
    if (lane == 0 && c > 0) atomicExch(counts + c, pack_counts(kOwn, chunk_above, chunk_ties));
    int above_before = 0, ties_before = 0;
    for (int end = c - 1; end >= 0; end -= 32) {
      const int x = end - lane;  // lane 0 the nearest earlier chunk
      uint64_t v = kInclusive;   // before chunk 0: nothing
      if (x >= 0) {              // volatile: a loop of plain loads may be assumed to end and be dropped
        const volatile unsigned long long* word = counts + x;
        while ((v = *word) == 0) {
        }
      }
      const unsigned inclusive = __ballot_sync(0xffffffffu, (v & kInclusive) != 0);
      const int stop = inclusive ? __ffs(inclusive) - 1 : 31;  // the nearest inclusive counts end the walk
      above_before += warp_sum(lane <= stop ? int(v >> 31 & kCountMask) : 0);
      ties_before += warp_sum(lane <= stop ? int(v & kCountMask) : 0);
      if (inclusive) break;
    }
    if (lane == 0) {
      atomicExch(counts + c, pack_counts(kInclusive, above_before + chunk_above, ties_before + chunk_ties));
      before[0] = above_before, before[1] = ties_before;
    }
  }
  __syncthreads();
  int tie_rank = before[1], slot = before[0];  // ties and picks before this warp's part
  for (int w = 0; w < warp; ++w) tie_rank += warp_ties[w], slot += warp_above[w];
  slot += min(tie_rank, take);
  int* out = p.indices + int64_t(row) * p.k;
  write_picks(key, threshold, take, tie_rank, slot, lane, [&](int at, int j) {
    const int i = lo + j * 32 + lane;
    out[at] = i;
  });
  if (c == l.chunks - 1) {  // this chunk's inclusive counts are the row's
    int above_all = before[0], ties_all = before[1];
    for (int w = 0; w < kWarps; ++w) above_all += warp_above[w], ties_all += warp_ties[w];
    for (int j = above_all + min(ties_all, take) + threadIdx.x; j < p.k; j += kThreads) out[j] = -1;
  }
}

// grid (chunks, R), filtering, after round 0's select (sampling: after the sample kernel): the chunk's keys at or above
// the bin of round 0's digit (all candidates when the row takes them all), in index order, into its slots, and how many
// there are. Every pick of the row is among them. Sampling: the keys at or above keep_from.
__global__ void __launch_bounds__(kThreads) topk_filter_kernel(const TopkParams p, const Layout l) {
  __shared__ int warp_kept[kWarps];
  chain_start();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, row = blockIdx.y, c = blockIdx.x;
  const RowState& state = l.state[row];
  // Keep the keys above `bound`; key 0 (NaN, -inf) never: with digit 0 the bin's lowest key is 0.
  const uint32_t from = l.sampled ? state.keep_from : (state.done ? 0u : state.prefix);
  const uint32_t bound = from == 0u ? 0u : from - 1u;
  const int lo = c * kChunk + warp * kWarpKeys;
  uint32_t key[kPerLane];
  load_keys(p.scores + int64_t(row) * p.N, p.N, lo, lane, key);
  int kept, ties;  // ties unused: the kept keys are those above the bound
  count_picks(key, bound, kept, ties);
  if (lane == 0) warp_kept[warp] = kept;
  __syncthreads();
  int slot = 0, total = 0;
  for (int w = 0; w < kWarps; ++w) {
    slot += w < warp ? warp_kept[w] : 0;
    total += warp_kept[w];
  }
  const int64_t base = (int64_t(row) * l.chunks + c) * l.slots;
  write_picks(key, bound, 0, 0, slot, lane, [&](int at, int j) {
    if (at < l.slots) {
      l.kept_keys[base + at] = key[j];
      l.kept_index[base + at] = lo + j * 32 + lane;
    }
  });
  if (threadIdx.x == 0) {
    l.kept_count[int64_t(row) * l.chunks + c] = total;
    if (total > l.slots) l.state[row].overflow = 1;
  }
}

using FinishScan = cub::BlockScan<int, kFinishThreads>;

// Rounds r_first .. 2 of the select (as topk_select_kernel) on keys[0, total) in shared memory, by
// the kFinishThreads threads of the block: prefix gets the digits of the key of rank `remaining`
// (counted from the largest; the digits above round r_first already in prefix), and remaining the
// keys of that value to take. hist [kBins] and found [2] are shared scratch; the first barrier also
// orders the caller's stores of the keys.
__device__ __forceinline__ void select_in_shared(const uint32_t* keys, int total, int r_first, uint32_t& prefix,
                                                 int& remaining, int* hist, int* found,
                                                 FinishScan::TempStorage& scan_storage) {
  const int t = threadIdx.x;
  for (int r = r_first; r < 3; ++r) {
    const uint32_t mask = known_mask(r), digits = (1u << round_bits(r)) - 1u;
    const int shift = round_shift(r);
    for (int x = t; x < kBins; x += kFinishThreads) hist[x] = 0;
    if (t == 0) found[0] = -1;
    __syncthreads();
    for (int i = t; i < total; i += kFinishThreads)
      if ((keys[i] & mask) == prefix) atomicAdd(&hist[(keys[i] >> shift) & digits], 1);
    __syncthreads();
    const int top = kBins - 1 - 2 * t;  // thread t: bins top and top - 1, thread 0 the highest
    const int c0 = hist[top], c1 = hist[top - 1];
    int above, all;
    FinishScan(scan_storage).ExclusiveSum(c0 + c1, above, all);
    if (above < remaining && above + c0 + c1 >= remaining) {
      found[0] = above + c0 >= remaining ? top : top - 1;
      found[1] = above + c0 >= remaining ? above : above + c0;
    }
    __syncthreads();
    int digit = found[0], keys_above = found[1];
    if (digit < 0) digit = 0, keys_above = all - hist[0];  // cannot happen; as topk_select_kernel
    prefix |= uint32_t(digit) << shift;
    remaining -= keys_above;
    __syncthreads();  // every thread has read found[] and hist before the next round writes them
  }
}

// grid R, kFinishThreads threads, filtering: the row's kept keys in shared memory (in index order),
// rounds 1 and 2 of the select on them (sampling: all three), then the ordered write; the row is
// then marked finished (and done, so that the rounds skip it). A row with an overflowing chunk or
// more than kFilterMaxKeys kept keys (sampling: or too few) is left to the rounds and the write kernel.
constexpr size_t kFinishSmem = size_t(kFilterMaxKeys) * (sizeof(uint32_t) + sizeof(int));
__global__ void __launch_bounds__(kFinishThreads) topk_finish_kernel(const TopkParams p, const Layout l) {
  using Scan = FinishScan;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int hist[kBins], chunk_start[kFilterMaxChunks], found[2];
  extern __shared__ uint32_t finish_smem[];
  uint32_t* keys = finish_smem;                                       // [kFilterMaxKeys]
  int* index = reinterpret_cast<int*>(finish_smem + kFilterMaxKeys);  // [kFilterMaxKeys]
  chain_start();
  const int row = blockIdx.x, t = threadIdx.x, lane = t & 31, warp = t >> 5;
  RowState* state = l.state + row;
  if (state->overflow) return;  // the same for the whole block
  const int* kept_count = l.kept_count + int64_t(row) * l.chunks;
  int start, total;
  Scan(scan_storage).ExclusiveSum(t < l.chunks ? kept_count[t] : 0, start, total);
  if (total > kFilterMaxKeys) return;  // the same for the whole block
  // Sampling: the keys at or above a bound hold every pick only if there are at least k of them (or
  // they are every candidate, bound 0).
  if (l.sampled && state->keep_from != 0u && total < p.k) return;
  if (t < l.chunks) chunk_start[t] = start;
  __syncthreads();
  for (int c = warp; c < l.chunks; c += kFinishThreads / 32) {  // a warp per chunk
    const int64_t base = (int64_t(row) * l.chunks + c) * l.slots;
    for (int i = lane; i < kept_count[c]; i += 32) {
      keys[chunk_start[c] + i] = l.kept_keys[base + i];
      index[chunk_start[c] + i] = l.kept_index[base + i];
    }
  }
  uint32_t threshold = 0u;  // pick the keys above it, then `take` ties in index order
  int take = 0;
  if (l.sampled ? total > p.k : !state->done) {
    // Sampling: the whole select on the kept keys; else rounds 1 and 2 below round 0's digit.
    threshold = l.sampled ? 0u : state->prefix;
    take = l.sampled ? p.k : state->remaining;
    select_in_shared(keys, total, l.sampled ? 0 : 1, threshold, take, hist, found, scan_storage);
  } else {
    __syncthreads();  // the kept keys are in place
  }
  // The ordered write: thread t takes kept keys [t * per, (t + 1) * per), which are in index order.
  const int per = (total + kFinishThreads - 1) / kFinishThreads, lo = min(total, t * per), hi = min(total, lo + per);
  int above = 0, ties = 0;
  for (int i = lo; i < hi; ++i) {
    above += keys[i] > threshold;
    ties += keys[i] != 0u && keys[i] == threshold;
  }
  int above_before, ties_before, above_all, ties_all;
  Scan(scan_storage).ExclusiveSum(above, above_before, above_all);
  __syncthreads();  // scan_storage is used again
  Scan(scan_storage).ExclusiveSum(ties, ties_before, ties_all);
  int* out = p.indices + int64_t(row) * p.k;
  int slot = above_before + min(ties_before, take), tie_rank = ties_before;
  for (int i = lo; i < hi; ++i) {
    const bool tie = keys[i] != 0u && keys[i] == threshold;
    if (keys[i] > threshold || (tie && tie_rank < take)) out[slot++] = index[i];
    tie_rank += tie;
  }
  for (int j = above_all + min(ties_all, take) + t; j < p.k; j += kFinishThreads) out[j] = -1;
  if (t == 0) state->finished = state->done = 1;
}

// Sampling: a row's sample is every stride-th run of kSampleRun entries (at least 1 in 16, and at
// most kSampleRuns runs); the filter keeps the keys at or above the sample's key of rank 2.5 k x
// (sample / row), about 2.5 k of the row's keys (at k = 512 and 64 chunks, 20 a chunk).
constexpr int kSampleRun = 256, kSampleRuns = 64, kSampleKeys = kSampleRun * kSampleRuns;
constexpr size_t kSampleSmem = size_t(kSampleKeys) * sizeof(uint32_t);
__device__ __forceinline__ int sample_stride(int N) {
  const int runs = (N + kSampleRun - 1) / kSampleRun;
  return max(16, (runs + kSampleRuns - 1) / kSampleRuns);
}

// grid R, kFinishThreads threads, sampling: the row's sample in shared memory, then the three rounds
// of the select on it give keep_from (0 when the sample has fewer candidates than the rank).
__global__ void __launch_bounds__(kFinishThreads) topk_sample_kernel(const TopkParams p, const Layout l) {
  __shared__ FinishScan::TempStorage scan_storage;
  __shared__ int hist[kBins], found[2];
  extern __shared__ uint32_t sample_smem[];  // [kSampleKeys]
  chain_start();
  const int row = blockIdx.x, t = threadIdx.x;
  const float* scores = p.scores + int64_t(row) * p.N;
  const int stride = sample_stride(p.N), runs = (p.N + kSampleRun - 1) / kSampleRun;
  const int n = (runs + stride - 1) / stride * kSampleRun;  // runs 0, stride, 2 stride, ...; past N: key 0
  int candidates = 0;
  for (int i = t; i < n; i += kFinishThreads) {
    const int64_t at = int64_t(i / kSampleRun) * stride * kSampleRun + i % kSampleRun;
    const uint32_t key = at < p.N ? topk_key(scores[at]) : 0u;
    sample_smem[i] = key;
    candidates += key != 0u;
  }
  int before, all_candidates;
  FinishScan(scan_storage).ExclusiveSum(candidates, before, all_candidates);
  __syncthreads();  // scan_storage is used again
  const int64_t wanted = int64_t(5) * p.k * n / (2 * int64_t(p.N));
  const int rank = wanted > 1 ? int(wanted) : 1;
  uint32_t keep_from = 0u;
  if (rank <= all_candidates) {
    int remaining = rank;
    select_in_shared(sample_smem, n, 0, keep_from, remaining, hist, found, scan_storage);
  }
  if (t == 0) l.state[row].keep_from = keep_from;
}

// Any number of rows: at 4096 rows the split path reads each row 4 times at the chip's rate, against
// the one-CTA kernel's 6 reads on one SM and its write ordered 512 keys at a time (H200, k = 512:
// 1.14 against 1.94 ms at 32K entries, 7.4 against 18.1 ms at 256K; kernel notes).
bool topk_split_applies(const TopkParams& p) { return p.R >= 1 && p.N >= kMinEntries; }

}  // namespace

// Sized for either path: a call of fewer rows (indexer_topk's last block) may take the other one
// (the one-read kernel's part is 3 MB at k = 512, also for calls it does not take).
size_t topk_split_workspace_bytes(const TopkParams& p) {
  return std::max(topk_stream_workspace_bytes(p), topk_split_applies(p) ? Layout(p, nullptr).bytes : size_t(0));
}

cudaError_t topk_split_cuda(const TopkParams& all, cudaStream_t stream) {
  if (topk_stream_takes(all)) return topk_stream_cuda(all, stream);  // one read of each row (topk_stream.cu)
  Layout l(all, all.split_workspace);
  for (int64_t r0 = 0; r0 < all.R; r0 += kSliceRows) {  // rows r0 .. r0 + p.R
    TopkParams p = all;
    p.R = std::min<int64_t>(kSliceRows, all.R - r0);
    p.scores += r0 * p.N;
    p.indices += r0 * p.k;
    cudaError_t err = cudaMemsetAsync(p.split_workspace, 0, l.counter_bytes, stream);
    if (err != cudaSuccess) return err;
    // Each kernel after the first is placed while the one before finishes (common/chain.cuh).
    const dim3 grid(unsigned(l.chunks), unsigned(p.R));
    const bool filters = l.filters(p);
    l.sampled = filters && !env_is("LCATTN_TOPK_SAMPLE", "0");
    // Filtering: the kept keys into slots, then the finish kernel (after round 0, or first when sampled).
    const auto filter_and_finish = [&]() {
      static PerDevice<cudaError_t> smem_limit;
      cudaError_t e =
          allow_dynamic_smem(smem_limit, reinterpret_cast<const void*>(topk_finish_kernel), int(kFinishSmem));
      if (e == cudaSuccess) e = launch_chained(topk_filter_kernel, grid, kThreads, 0, stream, p, l);
      if (e == cudaSuccess)
        e = launch_chained(topk_finish_kernel, dim3(unsigned(p.R)), kFinishThreads, kFinishSmem, stream, p, l);
      return e;
    };
    if (l.sampled) {
      static PerDevice<cudaError_t> smem_limit;
      err = allow_dynamic_smem(smem_limit, reinterpret_cast<const void*>(topk_sample_kernel), int(kSampleSmem));
      if (err == cudaSuccess) topk_sample_kernel<<<unsigned(p.R), kFinishThreads, kSampleSmem, stream>>>(p, l);
      if (err == cudaSuccess) err = filter_and_finish();
    }
    for (int r = 0; r < 3 && err == cudaSuccess; ++r) {
      if (r == 0 && !l.sampled)
        topk_hist_kernel<<<grid, kThreads, 0, stream>>>(p, l, r);
      else
        err = launch_chained(topk_hist_kernel, grid, kThreads, 0, stream, p, l, r);
      if (err == cudaSuccess)
        err = launch_chained(topk_select_kernel, dim3(unsigned(p.R)), kThreads, 0, stream, p, l, r);
      if (r == 0 && err == cudaSuccess && filters && !l.sampled) err = filter_and_finish();
    }
    if (err == cudaSuccess)
      err = launch_chained(topk_write_kernel, dim3(unsigned(int64_t(l.chunks) * p.R)), kThreads, 0, stream, p, l);
    if (err != cudaSuccess || (err = cudaGetLastError()) != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace lcattn
