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
// Every count is an integer, so the result is the same on every run. LCATTN_TOPK_SPLIT=0 turns it off.
#include <algorithm>

#include "common/chain.cuh"
#include "common/device.h"
#include "common/reduce.cuh"
#include "common/topk_key.cuh"
#include "lcattn/api.h"
#include "lcattn/switches.h"
#include "lcattn/workspace.h"

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
  uint32_t prefix;  // the threshold key's bits decided so far
  int remaining;    // keys still to take at or below the prefix (after the last round: ties to take)
  int candidates;   // keys that are neither NaN nor -inf
  int done;         // candidates <= k: take them all (threshold 0, no ties)
};

// A chunk's counts as its write CTA publishes them for the look-back: bits 62-63 the kind (0: not
// yet, 1: the chunk's own counts, 2: counts of this and every earlier chunk), 31-61 the keys above
// the threshold key, 0-30 the ties (counts up to N < 2^31).
constexpr uint64_t kOwn = 1ull << 62, kInclusive = 2ull << 62, kCountMask = (1ull << 31) - 1;
__device__ __forceinline__ uint64_t pack_counts(uint64_t kind, int above, int ties) {
  return kind | uint64_t(above) << 31 | uint64_t(ties);
}

// Where the split path keeps its counts in the workspace (zeroed at the start of each pass of rows).
struct Layout {
  int chunks;        // CTAs per row in the rounds and the write
  int* hist;         // [R, kBins]; each round's select clears it for the next
  RowState* state;   // [R]
  uint64_t* counts;  // [R, chunks]: pack_counts
  int* ticket;       // the write kernel's next chunk, in launch order
  size_t bytes;

  Layout(const TopkParams& p, void* workspace) {
    chunks = (p.N + kChunk - 1) / kChunk;
    WorkspaceCarver carve(workspace);
    const size_t rows = size_t(std::min<int64_t>(p.R, kSliceRows));
    hist = carve.take<int>(rows * kBins);
    state = carve.take<RowState>(rows);
    counts = carve.take<uint64_t>(rows * chunks);
    ticket = carve.take<int>(1);
    bytes = carve.bytes();
  }
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
__global__ void __launch_bounds__(kThreads) topk_write_kernel(const TopkParams p, const Layout l) {
  __shared__ int chunk_id, warp_above[kWarps], warp_ties[kWarps];
  __shared__ int before[2];  // keys above the threshold and ties in the earlier chunks
  chain_start();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (threadIdx.x == 0) chunk_id = atomicAdd(l.ticket, 1);
  __syncthreads();
  const int row = chunk_id / l.chunks, c = chunk_id % l.chunks;
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

// Any number of rows: at 4096 rows the split path reads each row 4 times at the chip's rate, against
// the one-CTA kernel's 6 reads on one SM and its write ordered 512 keys at a time (H200, k = 512:
// 1.14 against 1.94 ms at 32K entries, 7.4 against 18.1 ms at 256K; kernel notes).
bool topk_split_applies(const TopkParams& p) { return p.R >= 1 && p.N >= kMinEntries; }

}  // namespace

size_t topk_split_workspace_bytes(const TopkParams& p) { return topk_split_applies(p) ? Layout(p, nullptr).bytes : 0; }

cudaError_t topk_split_cuda(const TopkParams& all, cudaStream_t stream) {
  const Layout l(all, all.split_workspace);
  for (int64_t r0 = 0; r0 < all.R; r0 += kSliceRows) {  // rows r0 .. r0 + p.R
    TopkParams p = all;
    p.R = std::min<int64_t>(kSliceRows, all.R - r0);
    p.scores += r0 * p.N;
    p.indices += r0 * p.k;
    cudaError_t err = cudaMemsetAsync(p.split_workspace, 0, l.bytes, stream);
    if (err != cudaSuccess) return err;
    // Each kernel after the first is placed while the one before finishes (common/chain.cuh).
    const dim3 grid(unsigned(l.chunks), unsigned(p.R));
    for (int r = 0; r < 3 && err == cudaSuccess; ++r) {
      if (r == 0)
        topk_hist_kernel<<<grid, kThreads, 0, stream>>>(p, l, r);
      else
        err = launch_chained(topk_hist_kernel, grid, kThreads, stream, p, l, r);
      if (err == cudaSuccess) err = launch_chained(topk_select_kernel, dim3(unsigned(p.R)), kThreads, stream, p, l, r);
    }
    if (err == cudaSuccess)
      err = launch_chained(topk_write_kernel, dim3(unsigned(int64_t(l.chunks) * p.R)), kThreads, stream, p, l);
    if (err != cudaSuccess || (err = cudaGetLastError()) != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace lcattn
