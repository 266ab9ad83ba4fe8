// Lightning indexer scoring, top-k selection and row gather on CUDA (SPEC 4).
#include <cub/block/block_scan.cuh>

#include "common/reduce.cuh"
#include "lcattn/api.h"

namespace lcattn {
namespace {

constexpr int kScoreWarps = 8, kScoreKeys = 64;  // keys per block of the scoring kernel

// grid (rows, N / kScoreKeys); dynamic smem: q [HI, DI], weights [HI], one key row per warp.
__global__ void indexer_scores_kernel(const IndexerParams p) {
  extern __shared__ float smem[];
  float* q = smem;
  float* w = q + p.HI * p.DI;
  float* key_rows = w + p.HI;
  const int64_t n = blockIdx.x, r = p.row_begin + n;
  const int b = int(r / p.S), s = int(r % p.S);
  const int visible = min(p.N, (p.q_start[b] + s + 1) / p.ratio);
  for (int x = threadIdx.x; x < p.HI * p.DI; x += blockDim.x) q[x] = bf16_to_float(p.q[r * p.HI * p.DI + x]);
  for (int x = threadIdx.x; x < p.HI; x += blockDim.x) w[x] = p.weights[r * p.HI + x];
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float* key = key_rows + warp * p.DI;
  for (int j = warp; j < kScoreKeys; j += kScoreWarps) {
    const int i = blockIdx.y * kScoreKeys + j;
    if (i >= p.N) break;
    float total = -INFINITY;
    if (i < visible) {
      const bf16* src = p.keys + (int64_t(b) * p.N + i) * p.DI;
      for (int d = lane; d < p.DI; d += 32) key[d] = bf16_to_float(src[d]);
      __syncwarp();
      total = 0.f;
      for (int h = 0; h < p.HI; ++h) {
        float dot = 0.f;
        for (int d = lane; d < p.DI; d += 32) dot += q[h * p.DI + d] * key[d];
        total += w[h] * fmaxf(warp_sum(dot), 0.f);
      }
      __syncwarp();
    }
    if (lane == 0) p.scores[n * p.N + i] = total;
  }
}

// Order-preserving map of a float to an unsigned key; NaN and -inf map to 0 (never picked).
__device__ __forceinline__ uint32_t topk_key(float v) {
  if (isnan(v) || v == -INFINITY) return 0u;
  const uint32_t bits = __float_as_uint(v);
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

constexpr int kTopkThreads = 512;

// One block per row: radix select of the k-th largest key (4 passes of 8 bits), then one
// ordered pass that writes the picked indices in ascending order (deterministic).
__global__ void __launch_bounds__(kTopkThreads) topk_kernel(const TopkParams p) {
  using Scan = cub::BlockScan<int, kTopkThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int hist[256];
  __shared__ float scratch[32];
  __shared__ uint32_t s_prefix;
  __shared__ int s_remaining;
  const int64_t r = blockIdx.x;
  const float* row = p.scores + r * p.N;
  int* out = p.indices + r * p.k;

  float local = 0.f;
  for (int i = threadIdx.x; i < p.N; i += blockDim.x) local += topk_key(row[i]) != 0u ? 1.f : 0.f;
  const int candidates = int(block_sum(local, scratch));

  // Threshold key: pick every key > threshold, then `remaining` keys == threshold.
  uint32_t threshold = 0u;
  int remaining = 0;
  if (candidates > p.k) {
    uint32_t prefix = 0u, mask = 0u;
    remaining = p.k;
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int x = threadIdx.x; x < 256; x += blockDim.x) hist[x] = 0;
      __syncthreads();
      for (int i = threadIdx.x; i < p.N; i += blockDim.x) {
        const uint32_t key = topk_key(row[i]);
        if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1);
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        int above = 0, digit = 255;
        for (; digit > 0 && above + hist[digit] < remaining; --digit) above += hist[digit];
        s_prefix = prefix | (uint32_t(digit) << shift);
        s_remaining = remaining - above;
      }
      __syncthreads();
      prefix = s_prefix;
      remaining = s_remaining;
      mask |= 255u << shift;
      __syncthreads();
    }
    threshold = prefix;
  }

  int written = 0, ties_taken = 0;
  for (int base = 0; base < p.N; base += blockDim.x) {
    const int i = base + threadIdx.x;
    const uint32_t key = i < p.N ? topk_key(row[i]) : 0u;
    const int tie = key != 0u && key == threshold;
    int tie_rank, ties;
    Scan(scan_storage).ExclusiveSum(tie, tie_rank, ties);
    __syncthreads();
    const int pick = key > threshold || (tie && ties_taken + tie_rank < remaining);
    int slot, picked;
    Scan(scan_storage).ExclusiveSum(pick, slot, picked);
    __syncthreads();
    if (pick) out[written + slot] = i;
    written += picked;
    ties_taken += ties;
  }
  for (int j = written + threadIdx.x; j < p.k; j += blockDim.x) out[j] = -1;
}

// One block per picked row; copies 2-byte units.
__global__ void gather_rows_kernel(const GatherParams p) {
  const int64_t n = blockIdx.x;
  const int b = int(n / (int64_t(p.S) * p.K));
  const int idx = p.indices[n];
  const int64_t units = p.row_bytes / 2;
  uint16_t* dst = reinterpret_cast<uint16_t*>(p.out + n * p.row_bytes);
  const uint16_t* src =
      idx >= 0 && idx < p.N ? reinterpret_cast<const uint16_t*>(p.pool + (int64_t(b) * p.N + idx) * p.row_bytes)
                            : nullptr;
  for (int64_t x = threadIdx.x; x < units; x += blockDim.x) dst[x] = src ? src[x] : uint16_t(0);
}

}  // namespace

cudaError_t indexer_scores_cuda(const IndexerParams& p, cudaStream_t stream) {
  const int64_t rows = p.row_end - p.row_begin;
  if (rows == 0 || p.N == 0) return cudaSuccess;
  const size_t smem = sizeof(float) * (size_t(p.HI) * p.DI + p.HI + kScoreWarps * p.DI);
  if (smem > 48 * 1024) return cudaErrorInvalidValue;
  const dim3 grid(unsigned(rows), ceil_div(p.N, kScoreKeys));
  indexer_scores_kernel<<<grid, kScoreWarps * 32, smem, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t topk_cuda(const TopkParams& p, cudaStream_t stream) {
  if (p.R == 0 || p.k == 0) return cudaSuccess;
  topk_kernel<<<unsigned(p.R), kTopkThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t gather_rows_cuda(const GatherParams& p, cudaStream_t stream) {
  const int64_t rows = int64_t(p.B) * p.S * p.K;
  if (rows == 0 || p.row_bytes == 0) return cudaSuccess;
  gather_rows_kernel<<<unsigned(rows), 128, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace lcattn
