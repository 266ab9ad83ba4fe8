// Lightning indexer scoring, top-k selection and row gather on CUDA (SPEC 4).
#include <cub/block/block_scan.cuh>

#include "common/device.h"
#include "common/fp8.cuh"
#include "common/mma.cuh"
#include "common/reduce.cuh"
#include "common/topk_key.cuh"
#include "lcattn/api.h"
#include "lcattn/indexer_topk.h"
#include "indexer_sm90.h"
#include "lcattn/shared_math.h"
#include "lcattn/switches.h"

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
  const int visible = visible_entries(p.q_start[b] + s, p.ratio, p.N);
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
        total += w[h] * relu(warp_sum(dot));
      }
      total *= p.key_scale(b, i);
      __syncwarp();
    }
    if (lane == 0) p.scores[n * p.N + i] = total;
  }
}

// Tensor-core scoring for DI = 128: a block scores 64 query rows of one sequence against 128
// keys. Per head, the warps multiply q_h [64 x 128] by the key tile [128 x 128] with mma.sync
// (each warp 16 rows x 64 keys) and fold w_h * ReLU(.) into fp32 accumulators in registers.
// Shared rows are padded by 8 bf16 so that the fragment loads hit 32 distinct banks.
constexpr int kTileRows = 64, kTileKeys = 128, kTileDim = 128, kTileThreads = 256;
constexpr int kTileStride = kTileDim + 8;
constexpr size_t kTileSmem = (kTileKeys + kTileRows) * kTileStride * sizeof(bf16) + kTileRows * sizeof(float);

__host__ __device__ __forceinline__ int64_t score_tile_of(const IndexerParams& p, int64_t row) {
  return row / p.S * ceil_div(p.S, kTileRows) + row % p.S / kTileRows;
}

// 8 elements of a row as 8 bf16 (16 bytes): bf16 as they are, e4m3 widened exactly.
__device__ __forceinline__ uint4 load8_as_bf16(const bf16* src) { return *reinterpret_cast<const uint4*>(src); }
__device__ __forceinline__ uint4 load8_as_bf16(const e4m3* src) {
  return widen8_e4m3(*reinterpret_cast<const uint2*>(src), 1.f);
}

// Copies rows [0, rows) of kTileDim elements as bf16 (row r from src_row(r), a const bf16* or
// const e4m3*; zeros where it returns null).
template <typename Src>
__device__ __forceinline__ void stage_rows(bf16* dst, int rows, Src src_row) {
  constexpr int kVectors = kTileDim / 8;  // vectors of 8 elements per row
  for (int v = threadIdx.x; v < rows * kVectors; v += kTileThreads) {
    const int r = v / kVectors, col = v % kVectors * 8;
    const auto* src = src_row(r);
    *reinterpret_cast<uint4*>(dst + r * kTileStride + col) = src ? load8_as_bf16(src + col) : make_uint4(0, 0, 0, 0);
  }
}

// acc = rows [wm, wm + 16) of q times keys [wn, wn + 64) of the staged tiles over kTileDim: this
// warp's m16n8k16 products (fragment layout: lane = 4 g + t holds rows g, g + 8 and key pairs 2t).
__device__ __forceinline__ void warp_tile_products(const bf16* q, const bf16* keys, int wm, int wn, int lane,
                                                   float (&acc)[8][4]) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
#pragma unroll
  for (int k0 = 0; k0 < kTileDim; k0 += 16) {
    const bf16* a = q + (wm + g) * kTileStride + k0 + 2 * t;
    const uint32_t a0 = load_pair(a), a1 = load_pair(a + 8 * kTileStride), a2 = load_pair(a + 8),
                   a3 = load_pair(a + 8 * kTileStride + 8);
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      const bf16* bk = keys + (wn + nt * 8 + g) * kTileStride + k0 + 2 * t;
      mma_bf16_16816(acc[nt], a0, a1, a2, a3, load_pair(bk), load_pair(bk + 8));
    }
  }
}

// grid (row tiles of [row_begin, row_end), N / kTileKeys).
__global__ void __launch_bounds__(kTileThreads) indexer_scores_mma_kernel(const IndexerParams p) {
  extern __shared__ __align__(16) unsigned char tile_smem[];
  bf16* keys = reinterpret_cast<bf16*>(tile_smem);
  bf16* q = keys + kTileKeys * kTileStride;
  float* w = reinterpret_cast<float*>(q + kTileRows * kTileStride);
  const int64_t tile = score_tile_of(p, p.row_begin) + blockIdx.x;
  const int tiles_per_seq = ceil_div(p.S, kTileRows);
  const int b = int(tile / tiles_per_seq), s0 = int(tile % tiles_per_seq) * kTileRows;
  const int64_t seq_row0 = int64_t(b) * p.S;  // flattened row of position s = 0
  // Positions of this tile that lie in the rows being scored.
  const int s_lo = int(s0 > p.row_begin - seq_row0 ? s0 : p.row_begin - seq_row0);
  const int s_end = min(s0 + kTileRows, p.S);
  const int s_hi = int(s_end < p.row_end - seq_row0 ? s_end : p.row_end - seq_row0);
  if (s_lo >= s_hi) return;
  const int n0 = blockIdx.y * kTileKeys, q0 = p.q_start[b];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int wm = (warp & 3) * 16, wn = (warp >> 2) * 64;  // this warp's rows and keys in the tile
  float out[8][4] = {};
  if (n0 < visible_entries(q0 + s_hi - 1, p.ratio, p.N)) {  // some key of the tile is visible to some row
    stage_rows(keys, kTileKeys,
               [&](int r) { return n0 + r < p.N ? p.keys + (int64_t(b) * p.N + n0 + r) * kTileDim : nullptr; });
    for (int h = 0; h < p.HI; ++h) {
      __syncthreads();  // the previous head's q and w are consumed
      stage_rows(q, kTileRows, [&](int r) {
        const int s = s0 + r;
        return s >= s_lo && s < s_hi ? p.q + ((seq_row0 + s) * p.HI + h) * kTileDim : nullptr;
      });
      if (threadIdx.x < kTileRows) {
        const int s = s0 + threadIdx.x;
        w[threadIdx.x] = s >= s_lo && s < s_hi ? p.weights[(seq_row0 + s) * p.HI + h] : 0.f;
      }
      __syncthreads();
      float acc[8][4];
      warp_tile_products(q, keys, wm, wn, lane, acc);
      const float w_lo = w[wm + g], w_hi = w[wm + g + 8];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        out[nt][0] += w_lo * relu(acc[nt][0]);
        out[nt][1] += w_lo * relu(acc[nt][1]);
        out[nt][2] += w_hi * relu(acc[nt][2]);
        out[nt][3] += w_hi * relu(acc[nt][3]);
      }
    }
  }
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int s = s0 + wm + g + 8 * half;
    if (s < s_lo || s >= s_hi) continue;
    const int visible = visible_entries(q0 + s, p.ratio, p.N);
    float* dst = p.scores + (seq_row0 + s - p.row_begin) * p.N;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int n = n0 + wn + nt * 8 + 2 * t + j;
        if (n < p.N) dst[n] = n < visible ? p.key_scale(b, n) * out[nt][2 * half + j] : -INFINITY;
      }
  }
}

// Few rows per sequence (decode): a block scores one query row against kTileKeys keys with the
// row's heads as the M dimension, q [HI <= 64, 128] x keys [128, 128]^T in one pass of mma.sync (the
// row-tile kernel above would run its 64 heads one after another on a tile of mostly empty rows).
// w_h * ReLU(.) is summed over the heads in registers, across lanes, then across the 4 warps that
// share a key range (a fixed order: deterministic). grid (rows of [row_begin, row_end), N / kTileKeys).
constexpr int kHeadsRowsMax = 16;  // rows per sequence up to which the heads kernel runs
constexpr size_t kHeadsSmem = kTileSmem + 4 * kTileKeys * sizeof(float);

__global__ void __launch_bounds__(kTileThreads) indexer_scores_heads_kernel(const IndexerParams p) {
  extern __shared__ __align__(16) unsigned char tile_smem[];
  bf16* keys = reinterpret_cast<bf16*>(tile_smem);
  bf16* q = keys + kTileKeys * kTileStride;
  float* w = reinterpret_cast<float*>(q + kTileRows * kTileStride);
  float* partial = w + kTileRows;  // [4 warp rows, kTileKeys]
  const int64_t r = p.row_begin + blockIdx.x;
  const int b = int(r / p.S), s = int(r % p.S);
  const int n0 = blockIdx.y * kTileKeys;
  const int visible = visible_entries(p.q_start[b] + s, p.ratio, p.N);
  float* dst = p.scores + (r - p.row_begin) * p.N;
  if (n0 >= visible) {  // no key of the tile is visible to this row
    for (int n = n0 + threadIdx.x; n < min(n0 + kTileKeys, p.N); n += kTileThreads) dst[n] = -INFINITY;
    return;
  }
  if (p.keys_e4m3) {  // the fp8 form, widened exactly as it is staged
    stage_rows(keys, kTileKeys, [&](int i) {
      return n0 + i < visible ? p.keys_e4m3 + (int64_t(b) * p.N + n0 + i) * kTileDim : nullptr;
    });
    stage_rows(q, kTileRows, [&](int h) { return h < p.HI ? p.q_e4m3 + (r * p.HI + h) * kTileDim : nullptr; });
  } else {
    stage_rows(keys, kTileKeys,
               [&](int i) { return n0 + i < visible ? p.keys + (int64_t(b) * p.N + n0 + i) * kTileDim : nullptr; });
    stage_rows(q, kTileRows, [&](int h) { return h < p.HI ? p.q + (r * p.HI + h) * kTileDim : nullptr; });
  }
  if (threadIdx.x < kTileRows) w[threadIdx.x] = threadIdx.x < p.HI ? p.weights[r * p.HI + threadIdx.x] : 0.f;
  __syncthreads();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int wm = (warp & 3) * 16, wn = (warp >> 2) * 64;  // this warp's heads and keys in the tile
  float acc[8][4];
  warp_tile_products(q, keys, wm, wn, lane, acc);
  const float w_lo = w[wm + g], w_hi = w[wm + g + 8];
#pragma unroll
  for (int nt = 0; nt < 8; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      // This lane's two heads, then the 8 lanes of the same key (lane bits 2-4) hold the warp's 16.
      float sum = w_lo * relu(acc[nt][j]) + w_hi * relu(acc[nt][2 + j]);
      sum += __shfl_xor_sync(0xffffffffu, sum, 4);
      sum += __shfl_xor_sync(0xffffffffu, sum, 8);
      sum += __shfl_xor_sync(0xffffffffu, sum, 16);
      if (g == 0) partial[(warp & 3) * kTileKeys + wn + nt * 8 + 2 * t + j] = sum;
    }
  __syncthreads();
  for (int i = threadIdx.x; i < kTileKeys; i += kTileThreads) {
    const int n = n0 + i;
    if (n >= p.N) break;
    const float total = partial[i] + partial[kTileKeys + i] + partial[2 * kTileKeys + i] + partial[3 * kTileKeys + i];
    dst[n] = n < visible ? p.key_scale(b, n) * total : -INFINITY;
  }
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
  const uint16_t* src = idx >= 0 && idx < p.N
                            ? reinterpret_cast<const uint16_t*>(p.pool + (int64_t(b) * p.N + idx) * p.row_bytes)
                            : nullptr;
  for (int64_t x = threadIdx.x; x < units; x += blockDim.x) dst[x] = src ? src[x] : uint16_t(0);
}

// Decode (up to 16 rows per sequence): the heads kernel, heads as M.
bool heads_kernel_applies(const IndexerParams& p) {
  return p.DI == kTileDim && p.HI <= kTileRows && p.S <= kHeadsRowsMax;
}

// Prefill: wgmma with keys as M (indexer_sm90.cu), unless LCATTN_INDEXER_SM90=0.
bool sm90_kernel_applies(const IndexerParams& p) {
  return !env_is("LCATTN_INDEXER_SM90", "0") && indexer_sm90_supported(p);
}

}  // namespace

// Prefill (e4m3 wgmma) and decode (the heads kernel, which widens e4m3 exactly as it stages a tile,
// instead of the adapter's widening, which copies the whole key cache each step).
bool indexer_reads_e4m3(const IndexerParams& p) {
  if (env_is("LCATTN_INDEXER_FP8", "0")) return false;
  if (heads_kernel_applies(p)) return true;
  return p.S > kHeadsRowsMax && sm90_kernel_applies(p);
}

cudaError_t indexer_scores_cuda(const IndexerParams& p, cudaStream_t stream) {
  const int64_t rows = p.row_end - p.row_begin;
  if (rows == 0 || p.N == 0) return cudaSuccess;
  if (heads_kernel_applies(p)) {  // bf16 or e4m3
    static PerDevice<cudaError_t> smem_limit;
    const cudaError_t attr =
        allow_dynamic_smem(smem_limit, reinterpret_cast<const void*>(indexer_scores_heads_kernel), int(kHeadsSmem));
    if (attr != cudaSuccess) return attr;
    const dim3 grid(unsigned(rows), ceil_div(p.N, kTileKeys));
    indexer_scores_heads_kernel<<<grid, kTileThreads, kHeadsSmem, stream>>>(p);
    return cudaGetLastError();
  }
  // bf16 or e4m3 (indexer_reads_e4m3 asked sm90_kernel_applies); LCATTN_INDEXER_SM90=0 keeps the
  // mma.sync kernel below for bf16.
  if (p.keys_e4m3 || sm90_kernel_applies(p)) return indexer_scores_sm90(p, stream);
  if (p.DI == kTileDim) {  // the V4 indexer head dim: tensor cores, a tile of rows per head
    static PerDevice<cudaError_t> smem_limit;
    const cudaError_t attr =
        allow_dynamic_smem(smem_limit, reinterpret_cast<const void*>(indexer_scores_mma_kernel), int(kTileSmem));
    if (attr != cudaSuccess) return attr;
    const int64_t tiles = score_tile_of(p, p.row_end - 1) - score_tile_of(p, p.row_begin) + 1;
    const dim3 grid(unsigned(tiles), ceil_div(p.N, kTileKeys));
    indexer_scores_mma_kernel<<<grid, kTileThreads, kTileSmem, stream>>>(p);
    return cudaGetLastError();
  }
  const size_t smem = sizeof(float) * (size_t(p.HI) * p.DI + p.HI + kScoreWarps * p.DI);
  if (smem > 48 * 1024) {  // a large HI * DI or DI: raise the kernel's limit to the 227 KB a Hopper block may use
    constexpr int kMaxSmem = 227 * 1024;
    if (smem > kMaxSmem) return cudaErrorInvalidValue;
    static PerDevice<cudaError_t> smem_limit;
    const cudaError_t err =
        allow_dynamic_smem(smem_limit, reinterpret_cast<const void*>(indexer_scores_kernel), kMaxSmem);
    if (err != cudaSuccess) return err;
  }
  const dim3 grid(unsigned(rows), ceil_div(p.N, kScoreKeys));
  indexer_scores_kernel<<<grid, kScoreWarps * 32, smem, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t topk_cuda(const TopkParams& p, cudaStream_t stream) {
  if (p.R == 0 || p.k == 0) return cudaSuccess;
  if (p.split_workspace && topk_split_workspace_bytes(p) > 0) return topk_split_cuda(p, stream);
  topk_kernel<<<unsigned(p.R), kTopkThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

// Prefill rows scored and selected in one kernel (indexer_topk_sm90.cu) when LCATTN_INDEXER_FUSED_TOPK=1:
// no [block_rows, N] scores in memory and no separate top-k.
bool indexer_topk_fuses(const IndexerTopkParams& p) {
  return env_is("LCATTN_INDEXER_FUSED_TOPK", "1") && p.scoring.S > kHeadsRowsMax && sm90_kernel_applies(p.scoring) &&
         indexer_topk_sm90_supported(p.scoring, p.k);
}

cudaError_t indexer_topk_cuda(const IndexerTopkParams& p, cudaStream_t stream) {
  if (indexer_topk_fuses(p)) return indexer_topk_sm90(p.scoring, p.indices, p.k, stream);
  cudaError_t err = cudaSuccess;
  indexer_topk_blocks(p, [&](const IndexerParams& scoring, const TopkParams& topk) {
    err = indexer_scores_cuda(scoring, stream);
    if (err == cudaSuccess) err = topk_cuda(topk, stream);
    return err == cudaSuccess;
  });
  return err;
}

cudaError_t gather_rows_cuda(const GatherParams& p, cudaStream_t stream) {
  const int64_t rows = int64_t(p.B) * p.S * p.K;
  if (rows == 0 || p.row_bytes == 0) return cudaSuccess;
  gather_rows_kernel<<<unsigned(rows), 128, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace lcattn
