// What the Hopper indexer kernels share (indexer_sm90.cu scores, indexer_topk_sm90.cu scores and
// selects): a tile of 256 keys as the wgmma M dimension (two math warpgroups x two m64 tiles) against a
// pair of query rows (2 rows x 64 heads) as N, and the sums over heads of w_h ReLU(q_h . k) along each
// accumulator row. Tiles in shared memory: 128B-swizzled [chunks of 64 dims][rows][128 B].
#pragma once
#include "common/sm90.cuh"
#include "lcattn/shared_math.h"

namespace lcattn {
namespace indexer_sm90 {

using namespace sm90;

constexpr int kDim = 128;              // indexer head dim: K of the products
constexpr int kHeads = 64;             // heads per query row (fewer are zero-padded)
constexpr int kKeys = 256;             // keys of a tile: M of two warpgroups x two m64 tiles
constexpr int kPairRows = 2 * kHeads;  // N of a product: 2 query rows x 64 heads
constexpr int kThreads = 384;
constexpr int kKeyChunkBytes = kKeys * 128;       // 128 bytes of every key: 32 KB
constexpr int kPairChunkBytes = kPairRows * 128;  // 128 bytes of a pair's 128 head rows: 16 KB

// The element: bf16 (2 bytes, wgmma k = 16) or e4m3 (1 byte, k = 32). A row of kDim elements is
// kChunks 128-byte swizzled chunks; a k-step reads 32 bytes of every row either way.
template <int kElemBytes>
struct Elem {
  static constexpr int kRowBytes = kDim * kElemBytes, kChunks = kRowBytes / 128, kUnits = kRowBytes / 16;
  static constexpr int kSteps = kRowBytes / 32;
};

// The k-steps of S = K Q^T for one m64 tile (keys key_row0 .. key_row0 + 63 of the key tile) against
// the pair's 128 head rows (no fence or commit: the callers group them).
template <int kElemBytes>
__device__ __forceinline__ void tile_products(float (&acc)[64], const uint8_t* keys, const uint8_t* q, int key_row0) {
  const uint64_t keys_desc = smem_desc(keys + key_row0 * 128, 16, 1024), q_desc = smem_desc(q, 16, 1024);
#pragma unroll
  for (int ks = 0; ks < Elem<kElemBytes>::kSteps; ++ks) {
    const uint64_t desc_keys = desc_advance(keys_desc, (ks / 4) * kKeyChunkBytes + (ks % 4) * 32);
    const uint64_t desc_q = desc_advance(q_desc, (ks / 4) * kPairChunkBytes + (ks % 4) * 32);
    if constexpr (kElemBytes == 2)
      wgmma_m64n128k16_ss(acc, desc_keys, desc_q, ks > 0);
    else
      wgmma_m64n128k32_e4m3_ss(acc, desc_keys, desc_q, ks > 0);
  }
}

// S = K Q^T of warpgroup wg's two m64 tiles (keys 128 wg .. 128 wg + 127 of the key tile) against
// the pair's 128 head rows, issued and committed as one wgmma group.
template <int kElemBytes>
__device__ __forceinline__ void issue_pair_products(float (&acc)[2][64], const uint8_t* keys, const uint8_t* q,
                                                    int wg) {
  wgmma_fence();
#pragma unroll
  for (int t = 0; t < 2; ++t) tile_products<kElemBytes>(acc[t], keys, q, 128 * wg + 64 * t);
  wgmma_commit();
}

// Waits for issue_pair_products's group; then its accumulators may be read.
__device__ __forceinline__ void wait_pair_products(float (&acc)[2][64]) {
  wgmma_wait<0>();
  fence_registers(acc[0]);
  fence_registers(acc[1]);
}

// The head weights of this thread's columns (c0, c0 + 1 of every 8-column block) from a pair's
// weights [2 rows x 64 heads] in shared memory: w[q][j] = heads 8 j + c0 and + 1 of query row q.
__device__ __forceinline__ void load_pair_weights(float2 (&w)[2][8], const float* pair_weights, int c0) {
#pragma unroll
  for (int q = 0; q < 2; ++q)
#pragma unroll
    for (int j = 0; j < 8; ++j) w[q][j] = *reinterpret_cast<const float2*>(&pair_weights[q * kHeads + 8 * j + c0]);
}

// The sum over this thread's 16 heads of w_h max(S, 0) for query row q and half (key rows + 0 or + 8)
// of one tile's accumulators (a thread holds 16 heads of each of its key rows and query rows; the
// other 48 are in the 3 other lanes of its quad): one fma chain of a max and an fma a product.
// w[j]: the weights of query row q's heads 8 j + 2 (lane % 4) and + 1.
__device__ __forceinline__ float thread_head_sum(const float (&acc)[64], const float2 (&w)[8], int q, int half) {
  float sum = 0.f;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float* a = &acc[(8 * q + j) * 4 + 2 * half];
    sum = fmaf(w[j].x, relu(a[0]), sum);
    sum = fmaf(w[j].y, relu(a[1]), sum);
  }
  return sum;
}

// thread_head_sum of a pair's accumulators acc[tile][64] for every (tile, query row, half).
__device__ __forceinline__ void thread_head_sums(const float (&acc)[2][64], const float2 (&w)[2][8],
                                                 float (&sums)[2][2][2]) {
#pragma unroll
  for (int t = 0; t < 2; ++t)
#pragma unroll
    for (int q = 0; q < 2; ++q)
#pragma unroll
      for (int half = 0; half < 2; ++half) sums[t][q][half] = thread_head_sum(acc[t], w[q], q, half);
}

// All 64 heads for the lane's (tile t, query row q), both halves: each sum in one chain and reduced
// over the quad (16 shuffles), then selected.
__device__ __forceinline__ void head_sums_selected(const float (&acc)[2][64], const float2 (&w)[2][8], int t, int q,
                                                   float (&total)[2]) {
  float sums[2][2][2];
  thread_head_sums(acc, w, sums);
#pragma unroll
  for (int tt = 0; tt < 2; ++tt)
#pragma unroll
    for (int qq = 0; qq < 2; ++qq)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float& sum = sums[tt][qq][half];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      }
#pragma unroll
  for (int half = 0; half < 2; ++half) {  // the lane's register without dynamic indexing
    float v = sums[0][0][half];
    v = (t == 0 && q == 1) ? sums[0][1][half] : v;
    v = (t == 1 && q == 0) ? sums[1][0][half] : v;
    v = (t == 1 && q == 1) ? sums[1][1][half] : v;
    total[half] = v;
  }
}

}  // namespace indexer_sm90
}  // namespace lcattn
