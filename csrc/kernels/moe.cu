// MoE on CUDA (SPEC 6): the grouped GEMM (CUTLASS, moe_gemm_sm90*) in both layouts, routing,
// permute, SwiGLU, unpermute, and the routed experts composed from them.
#include <algorithm>
#include <cstdlib>
#include <string>

#include <cub/block/block_scan.cuh>

#include "common/reduce.cuh"
#include "lcattn/api.h"
#include "lcattn/moe_experts_plan.h"
#include "lcattn/shared_math.h"
#include "moe_gemm_sm90.h"

namespace lcattn {
namespace {

// One thread per token (hash routing, or more experts than moe_route_warp_kernel keeps in shared memory).
__global__ void moe_route_kernel(const RouteParams p) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t < p.T) route_token(p, t);
}

constexpr int kRouteWarps = 4, kRouteMaxExperts = 3072;  // keys of 4 tokens in 48 KB of shared memory

// One warp per token: its E keys in shared memory, then k rounds of a warp argmax (higher key, then
// lower id, skipping the experts already picked): route_token's order, in O(E k / 32) steps per lane.
__global__ void __launch_bounds__(32 * kRouteWarps) moe_route_warp_kernel(const RouteParams p) {
  extern __shared__ float route_keys[];  // [kRouteWarps, E]; NaN marks a picked expert
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t t = int64_t(blockIdx.x) * kRouteWarps + warp;
  if (t >= p.T) return;
  float* keys = route_keys + warp * p.E;
  for (int e = lane; e < p.E; e += 32) keys[e] = route_key(p, t, e);
  __syncwarp();
  constexpr int kNone = 0x7fffffff;
  for (int j = 0; j < p.k; ++j) {
    float best_key = -INFINITY;
    int best = kNone;
    for (int e = lane; e < p.E; e += 32) {  // ascending e: a tie keeps the lower id
      const float key = keys[e];
      if (key == key && (best == kNone || key > best_key)) best_key = key, best = e;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float other_key = __shfl_xor_sync(0xffffffffu, best_key, o);
      const int other = __shfl_xor_sync(0xffffffffu, best, o);
      if (other != kNone && (best == kNone || other_key > best_key || (other_key == best_key && other < best)))
        best_key = other_key, best = other;
    }
    if (lane == 0) {
      p.indices[t * p.k + j] = best;
      keys[best] = NAN;
    }
    __syncwarp();
  }
  if (lane == 0) route_weights(p, t);
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
    if (e == 0 && x < slots && !p.routed(x)) p.rows[x] = -1;  // routed nowhere
    const int mine = x < slots && p.indices[x] == e;
    int rank, total;
    Scan(scan_storage).ExclusiveSum(mine, rank, total);
    __syncthreads();
    if (mine) p.rows[x] = next + rank;
    next += total;
  }
}

// grid (T * k): copies token row x[t] to its permuted row (none for a slot routed nowhere), 16 bytes
// at a time when D % 8 == 0.
__global__ void moe_scatter_kernel(const PermuteParams p) {
  const int64_t slot = blockIdx.x;
  if (p.rows[slot] < 0) return;
  const bf16* src = p.x + (slot / p.k) * p.D;
  bf16* dst = p.x_perm + int64_t(p.rows[slot]) * p.D;
  if (p.D % 8 == 0 && aligned16(src) && aligned16(dst)) {
    for (int d = threadIdx.x; d < p.D / 8; d += blockDim.x)
      reinterpret_cast<uint4*>(dst)[d] = reinterpret_cast<const uint4*>(src)[d];
  } else {
    for (int d = threadIdx.x; d < p.D; d += blockDim.x) dst[d] = src[d];
  }
}

// out[t, d0 .. d0 + n) = sum_j w[t, j] y[rows[t, j], d0 .. d0 + n) in fp32, n = 8 or 1 channels.
template <int n>
__device__ __forceinline__ void unpermute_channels(const UnpermuteParams& p, int64_t t, int d0) {
  float acc[n] = {};
  for (int j = 0; j < p.k; ++j) {
    const int row = p.rows[t * p.k + j];
    if (row < 0 || row >= p.R) continue;  // routed nowhere
    const float wt = p.weights ? p.weights[t * p.k + j] : 1.f;
    const bf16* y = p.y + int64_t(row) * p.D + d0;
    bf16 v[n];
    if constexpr (n == 8)
      *reinterpret_cast<uint4*>(v) = *reinterpret_cast<const uint4*>(y);
    else
      v[0] = y[0];
#pragma unroll
    for (int c = 0; c < n; ++c) acc[c] += wt * bf16_to_float(v[c]);
  }
  bf16 out[n];
#pragma unroll
  for (int c = 0; c < n; ++c) out[c] = float_to_bf16(acc[c]);
  if constexpr (n == 8)
    *reinterpret_cast<uint4*>(p.out + t * p.D + d0) = *reinterpret_cast<const uint4*>(out);
  else
    p.out[t * p.D + d0] = out[0];
}

// grid (T): out[t] = sum_j w[t, j] y[rows[t, j]].
__global__ void moe_unpermute_kernel(const UnpermuteParams p) {
  const int64_t t = blockIdx.x;
  if (p.D % 8 == 0 && aligned16(p.y) && aligned16(p.out)) {
    for (int d = threadIdx.x * 8; d < p.D; d += blockDim.x * 8) unpermute_channels<8>(p, t, d);
  } else {
    for (int d = threadIdx.x; d < p.D; d += blockDim.x) unpermute_channels<1>(p, t, d);
  }
}

// 8 outputs per thread: h[r, i .. i + 8) from gate_up row r, whose 16 values from 2i are the 8 gates,
// then their 8 ups (gate_up_row).
__global__ void swiglu_kernel(const SwigluParams p) {
  const int64_t chunks = p.R * (p.I / 8);
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < chunks; c += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = c / (p.I / 8), i = (c % (p.I / 8)) * 8;
    const uint4 g = *reinterpret_cast<const uint4*>(p.gate_up + r * 2 * p.I + 2 * i);
    const uint4 u = *reinterpret_cast<const uint4*>(p.gate_up + r * 2 * p.I + 2 * i + 8);
    const bf16* gv = reinterpret_cast<const bf16*>(&g);
    const bf16* uv = reinterpret_cast<const bf16*>(&u);
    uint4 out;
    bf16* ov = reinterpret_cast<bf16*>(&out);
#pragma unroll
    for (int j = 0; j < 8; ++j)
      ov[j] = float_to_bf16(swiglu(bf16_to_float(gv[j]), bf16_to_float(uv[j]), p.swiglu_limit));
    *reinterpret_cast<uint4*>(p.h + r * p.I + i) = out;
  }
}

using GemmFn = cudaError_t (*)(const GroupedGemmParams&, cudaStream_t);
using GemmWorkspaceFn = size_t (*)(const GroupedGemmParams&);

struct GemmConfig {
  GemmFn run;
  GemmWorkspaceFn workspace;
};

// The CUTLASS tile by rows per expert; LCATTN_GROUPED_GEMM_TILE=n32|n64|n128|n256 overrides it (for
// tuning, and for tests that run every tile on the same shapes); read per call.
moe_sm90::Tile tile_for(const GroupedGemmParams& p) {
  if (const char* forced = std::getenv("LCATTN_GROUPED_GEMM_TILE")) {
    const std::string name(forced);
    if (name == "n32") return moe_sm90::Tile::n32;
    if (name == "n64") return moe_sm90::Tile::n64;
    if (name == "n128") return moe_sm90::Tile::n128;
    if (name == "n256") return moe_sm90::Tile::n256;
  }
  return moe_sm90::pick_tile(p);
}

#define LCATTN_GEMM_CONFIG(name) \
  GemmConfig { moe_sm90::grouped_gemm_##name, moe_sm90::grouped_gemm_workspace_##name }

GemmConfig gemm_config(const GroupedGemmParams& p) {
  switch (tile_for(p)) {
    case moe_sm90::Tile::n32:
      return p.gated ? LCATTN_GEMM_CONFIG(n32_gated) : LCATTN_GEMM_CONFIG(n32);
    case moe_sm90::Tile::n64:
      return p.gated ? LCATTN_GEMM_CONFIG(n64_gated) : LCATTN_GEMM_CONFIG(n64);
    case moe_sm90::Tile::n128:
      return p.gated ? LCATTN_GEMM_CONFIG(n128_gated) : LCATTN_GEMM_CONFIG(n128);
    default:
      return p.gated ? LCATTN_GEMM_CONFIG(n256_gated) : LCATTN_GEMM_CONFIG(n256);
  }
}
#undef LCATTN_GEMM_CONFIG

cudaError_t grouped_gemm_cuda(const GroupedGemmParams& p, cudaStream_t stream) {
  if (p.E == 0 || p.M == 0 || p.N == 0) return cudaSuccess;
  if (p.K == 0)  // empty sums: y is zero
    return cudaMemsetAsync(p.y, 0, sizeof(bf16) * (p.counts ? p.E : 1) * p.M * p.out_cols(), stream);
  const GemmConfig config = gemm_config(p);
  if (p.N % (p.gated ? 16 : 8) || p.K % 8 || (!p.workspace && config.workspace(p) > 0)) return cudaErrorInvalidValue;
  return config.run(p, stream);
}

}  // namespace

size_t grouped_gemm_workspace_bytes(const GroupedGemmParams& p) {
  if (p.E == 0 || p.M == 0 || p.N == 0) return 0;
  return gemm_config(p).workspace(p);
}

cudaError_t grouped_gemm_contiguous_cuda(const GroupedGemmParams& p, cudaStream_t stream) {
  GroupedGemmParams q = p;
  q.counts = nullptr;
  return grouped_gemm_cuda(q, stream);
}

cudaError_t grouped_gemm_masked_cuda(const GroupedGemmParams& p, cudaStream_t stream) {
  GroupedGemmParams q = p;
  q.offsets = nullptr;
  return grouped_gemm_cuda(q, stream);
}

cudaError_t moe_route_cuda(const RouteParams& p, cudaStream_t stream) {
  if (p.T == 0) return cudaSuccess;
  if (p.tid2eid || p.E > kRouteMaxExperts) {
    moe_route_kernel<<<ceil_div(p.T, 128), 128, 0, stream>>>(p);
  } else {
    const size_t smem = sizeof(float) * kRouteWarps * p.E;
    moe_route_warp_kernel<<<ceil_div(p.T, kRouteWarps), 32 * kRouteWarps, smem, stream>>>(p);
  }
  return cudaGetLastError();
}

cudaError_t moe_permute_cuda(const PermuteParams& p, cudaStream_t stream) {
  if (p.E == 0) return cudaSuccess;
  moe_count_kernel<<<p.E, kPermuteThreads, 0, stream>>>(p, p.counts);
  moe_place_kernel<<<p.E, kPermuteThreads, 0, stream>>>(p, p.counts);
  if (int64_t(p.T) * p.k > 0) moe_scatter_kernel<<<unsigned(int64_t(p.T) * p.k), 128, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t moe_unpermute_cuda(const UnpermuteParams& p, cudaStream_t stream) {
  if (p.T == 0) return cudaSuccess;
  moe_unpermute_kernel<<<p.T, 128, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t swiglu_cuda(const SwigluParams& p, cudaStream_t stream) {
  const int64_t chunks = p.R * (p.I / 8);
  if (chunks == 0) return cudaSuccess;
  swiglu_kernel<<<unsigned(std::min<int64_t>((chunks + 255) / 256, 4096)), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t moe_experts_cuda(const MoeExpertsParams& p, cudaStream_t stream) {
  if (p.T == 0) return cudaSuccess;
  const MoeExpertsPlan plan(p, p.workspace);
  cudaError_t err = moe_permute_cuda(plan.permute(p), stream);
  if (err == cudaSuccess) err = grouped_gemm_contiguous_cuda(plan.gate_up_gemm(p), stream);
  if (err == cudaSuccess && !p.fused_swiglu) err = swiglu_cuda(plan.swiglu(p), stream);
  if (err == cudaSuccess) err = grouped_gemm_contiguous_cuda(plan.down_gemm(p), stream);
  if (err == cudaSuccess) err = moe_unpermute_cuda(plan.unpermute(p), stream);
  return err;
}

}  // namespace lcattn
