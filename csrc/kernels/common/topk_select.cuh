// Selection over top-k candidates held as 64-bit composites, shared by the kernels that keep a
// buffer of candidates above a rising threshold (indexer_topk_sm90.cu, topk_stream.cu).
// A composite is topk_key << 32 | ~index: larger is better, and of equal keys the lower index is
// larger, as the top-k kernels break ties; composites of one row are distinct, and nonzero for
// every candidate (NaN and -inf have key 0 and are never candidates).
#pragma once
#include <cstdint>

namespace lcattn {

__device__ __forceinline__ uint64_t topk_composite(uint32_t key, int index) {
  return uint64_t(key) << 32 | (0xFFFFFFFFu - uint32_t(index));
}
__device__ __forceinline__ int topk_composite_index(uint64_t c) { return int(0xFFFFFFFFu - uint32_t(c)); }
__device__ __forceinline__ uint32_t topk_composite_key(uint64_t c) { return uint32_t(c >> 32); }

// The k-th largest of the distinct nonzero composites that the kGroup threads of a group hold (at
// least k of them): for_each_value(f) calls f(v) for each of this thread's values (zeros are
// skipped); sync() is the group's barrier. A radix select, 8 bits a pass from the top, that stops
// once the values left with the prefix are exactly those still to take, so that the values >= the
// result are exactly k. hist [256] and state [3] are the group's shared scratch; threads 0-31 of the
// group (tid < 32) scan the histogram. Ends with a sync; hist and state may be reused after the next.
template <int kGroup, class ForEachValue, class Sync>
__device__ __forceinline__ uint64_t kth_largest_composite(ForEachValue&& for_each_value, int k, uint32_t* hist,
                                                          int* state, int tid, Sync&& sync) {
  uint64_t prefix = 0, mask = 0;
  int need = k;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int x = tid; x < 256; x += kGroup) hist[x] = 0;
    sync();
    for_each_value([&](uint64_t v) {
      if (v != 0 && (v & mask) == prefix) atomicAdd(&hist[(v >> shift) & 255], 1u);
    });
    sync();
    if (tid < 32) {  // lane l holds bins 8 l .. 8 l + 7; `from` counts the values in bins >= 8 l
      uint32_t c[8], own = 0;
#pragma unroll
      for (int t = 0; t < 8; ++t) own += (c[t] = hist[8 * tid + t]);
      uint32_t from = own;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const uint32_t x = __shfl_down_sync(0xffffffffu, from, o);
        if (tid + o < 32) from += x;
      }
      uint32_t above = from - own;
      if (above < uint32_t(need) && uint32_t(need) <= from) {
        for (int t = 7; t >= 0; --t) {
          if (above + c[t] >= uint32_t(need)) {
            state[0] = 8 * tid + t;
            state[1] = need - int(above);
            state[2] = int(c[t]);
            break;
          }
          above += c[t];
        }
      }
    }
    sync();
    const int digit = state[0], group = state[2];
    need = state[1];
    prefix |= uint64_t(digit) << shift;
    mask |= uint64_t(255) << shift;
    if (group == need) break;  // the same for every thread
  }
  return prefix;
}

}  // namespace lcattn
