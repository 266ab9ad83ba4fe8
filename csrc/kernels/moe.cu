// MoE on CUDA (SPEC 6): tiled grouped GEMM in both layouts, routing, permute and unpermute.
// The GEMM is a plain shared-memory FMA tiling; the Hopper GEMM replaces it later.
#include <cub/block/block_scan.cuh>

#include "common/reduce.cuh"
#include "lcattn/api.h"
#include "lcattn/shared_math.h"

namespace lcattn {
namespace {

constexpr int kTile = 64, kTileK = 16, kGemmThreads = 256;  // 64x64 outputs, 4x4 per thread

// y[r, n0 + .] = x[r] w^T for rows r in [r_lo, r_hi) of the 64-row tile starting at r0.
__device__ void gemm_tile(const bf16* x, const bf16* w, bf16* y, int r0, int r_lo, int r_hi, int n0, int N,
                          int K) {
  __shared__ float xs[kTileK][kTile + 1], ws[kTileK][kTile + 1];
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < K; k0 += kTileK) {
    for (int e = threadIdx.x; e < kTile * kTileK; e += kGemmThreads) {
      const int rr = e / kTileK, kk = e % kTileK, r = r0 + rr, col = n0 + rr, k = k0 + kk;
      xs[kk][rr] = r >= r_lo && r < r_hi && k < K ? bf16_to_float(x[int64_t(r) * K + k]) : 0.f;
      ws[kk][rr] = col < N && k < K ? bf16_to_float(w[int64_t(col) * K + k]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk)
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += xs[kk][tr + 16 * i] * ws[kk][tc + 16 * j];
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = r0 + tr + 16 * i;
    if (r < r_lo || r >= r_hi) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int col = n0 + tc + 16 * j;
      if (col < N) y[int64_t(r) * N + col] = float_to_bf16(acc[i][j]);
    }
  }
}

// grid (N / 64, M / 64): a row tile may span several experts; each gets its own pass.
__global__ void __launch_bounds__(kGemmThreads) grouped_gemm_contiguous_kernel(const GroupedGemmParams p) {
  const int r0 = blockIdx.y * kTile, n0 = blockIdx.x * kTile, r_end = min(r0 + kTile, p.M);
  for (int e = 0; e < p.E; ++e) {
    const int lo = max(p.offsets[e], r0), hi = min(p.offsets[e + 1], r_end);
    if (lo < hi) gemm_tile(p.x, p.w + int64_t(e) * p.N * p.K, p.y, r0, lo, hi, n0, p.N, p.K);
  }
}

// grid (N / 64, M / 64, E): rows past the expert's count are zeroed.
__global__ void __launch_bounds__(kGemmThreads) grouped_gemm_masked_kernel(const GroupedGemmParams p) {
  const int e = blockIdx.z, r0 = blockIdx.y * kTile, n0 = blockIdx.x * kTile;
  const int count = min(p.counts[e], p.M);
  const bf16* x = p.x + int64_t(e) * p.M * p.K;
  bf16* y = p.y + int64_t(e) * p.M * p.N;
  if (r0 < count) gemm_tile(x, p.w + int64_t(e) * p.N * p.K, y, r0, r0, min(count, r0 + kTile), n0, p.N, p.K);
  for (int x_ = threadIdx.x; x_ < kTile * kTile; x_ += kGemmThreads) {
    const int r = r0 + x_ / kTile, col = n0 + x_ % kTile;
    if (r >= count && r < p.M && col < p.N) y[int64_t(r) * p.N + col] = bf16(0);
  }
}

// One thread per token.
__global__ void moe_route_kernel(const RouteParams p) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t < p.T) route_token(p, t);
}

constexpr int kPermuteThreads = 256;

// grid (E): counts[e] = slots routed to expert e.
__global__ void moe_count_kernel(const PermuteParams p, int* counts) {
  __shared__ float scratch[32];
  const int e = blockIdx.x;
  float n = 0.f;
  for (int64_t x = threadIdx.x; x < int64_t(p.T) * p.k; x += blockDim.x) n += p.indices[x] == e ? 1.f : 0.f;
  n = block_sum(n, scratch);
  if (threadIdx.x == 0) counts[e] = int(n);
}

// grid (E): expert e places its slots in slot order after the rows of experts < e.
__global__ void __launch_bounds__(kPermuteThreads) moe_place_kernel(const PermuteParams p, const int* counts) {
  using Scan = cub::BlockScan<int, kPermuteThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ float scratch[32];
  const int e = blockIdx.x;
  float before = 0.f;
  for (int x = threadIdx.x; x < e; x += blockDim.x) before += float(counts[x]);
  int next = int(block_sum(before, scratch));
  if (threadIdx.x == 0) {
    p.offsets[e] = next;
    if (e == p.E - 1) p.offsets[p.E] = next + counts[e];
  }
  const int64_t slots = int64_t(p.T) * p.k;
  for (int64_t base = 0; base < slots; base += blockDim.x) {
    const int64_t x = base + threadIdx.x;
    const int mine = x < slots && p.indices[x] == e;
    int rank, total;
    Scan(scan_storage).ExclusiveSum(mine, rank, total);
    __syncthreads();
    if (mine) p.rows[x] = next + rank;
    next += total;
  }
}

// grid (T * k): copies token row x[t] to its permuted row.
__global__ void moe_scatter_kernel(const PermuteParams p) {
  const int64_t slot = blockIdx.x;
  const bf16* src = p.x + (slot / p.k) * p.D;
  bf16* dst = p.x_perm + int64_t(p.rows[slot]) * p.D;
  for (int d = threadIdx.x; d < p.D; d += blockDim.x) dst[d] = src[d];
}

// grid (T): out[t] = sum_j w[t, j] y[rows[t, j]].
__global__ void moe_unpermute_kernel(const UnpermuteParams p) {
  const int64_t t = blockIdx.x;
  for (int d = threadIdx.x; d < p.D; d += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < p.k; ++j) {
      const float wt = p.weights ? p.weights[t * p.k + j] : 1.f;
      acc += wt * bf16_to_float(p.y[int64_t(p.rows[t * p.k + j]) * p.D + d]);
    }
    p.out[t * p.D + d] = float_to_bf16(acc);
  }
}

}  // namespace

cudaError_t grouped_gemm_contiguous_cuda(const GroupedGemmParams& p, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  const dim3 grid(ceil_div(p.N, kTile), ceil_div(p.M, kTile));
  grouped_gemm_contiguous_kernel<<<grid, kGemmThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t grouped_gemm_masked_cuda(const GroupedGemmParams& p, cudaStream_t stream) {
  if (p.E == 0 || p.M == 0 || p.N == 0) return cudaSuccess;
  const dim3 grid(ceil_div(p.N, kTile), ceil_div(p.M, kTile), p.E);
  grouped_gemm_masked_kernel<<<grid, kGemmThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t moe_route_cuda(const RouteParams& p, cudaStream_t stream) {
  if (p.T == 0) return cudaSuccess;
  moe_route_kernel<<<ceil_div(p.T, 128), 128, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t moe_permute_cuda(const PermuteParams& p, cudaStream_t stream) {
  if (p.E == 0) return cudaSuccess;
  moe_count_kernel<<<p.E, kPermuteThreads, 0, stream>>>(p, p.scratch);
  moe_place_kernel<<<p.E, kPermuteThreads, 0, stream>>>(p, p.scratch);
  if (int64_t(p.T) * p.k > 0) moe_scatter_kernel<<<unsigned(int64_t(p.T) * p.k), 128, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t moe_unpermute_cuda(const UnpermuteParams& p, cudaStream_t stream) {
  if (p.T == 0) return cudaSuccess;
  moe_unpermute_kernel<<<p.T, 128, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace lcattn
