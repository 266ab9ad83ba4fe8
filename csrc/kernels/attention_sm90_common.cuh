// What the Hopper attention kernels share (attention_sm90.cu, attention_sm90_pair.cu): the tile
// shapes, the key set of one query, the online-softmax helpers and the producer's bf16 row copy.
// Tiles are [8 chunks][64 rows][128 B], 128B-swizzled (common/sm90.cuh).
#pragma once
#include <cuda_bf16.h>

#include "common/device.h"
#include "common/sm90.cuh"
#include "lcattn/shared_math.h"

namespace lcattn {
namespace {

using namespace sm90;

constexpr int kHeads = 64;                // M of every wgmma
constexpr int kDim = 512;                 // head dim
constexpr int kKeys = 64;                 // keys per buffer
constexpr int kChunk = 64;                // bf16 per 128-byte swizzled row
constexpr int kChunks = kDim / kChunk;    // 8
constexpr int kChunkBytes = kKeys * 128;  // one [64 rows][64 cols] swizzled chunk: 8 KB
constexpr int kPartStride = kDim + 4;     // workspace row: O (512), then (max, sum), 16-byte rows
// With more splits the last CTA would read too many partials alone (65 at 1M context, 8.5 MB).
constexpr int kMaxFusedSplits = 4;
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

constexpr int kMaxRopePairs = 32;  // RoPE channels <= 64

// What one CTA computes: grid = query rows x head groups x splits, splits fastest.
struct CtaWork {
  int split, group, b, pos;
  int64_t cta, row;  // cta: the flat (query row, head group); row: b * S + s
  __device__ explicit CtaWork(const AttentionParams& p) {
    split = int(blockIdx.x % p.splits);
    cta = blockIdx.x / p.splits;
    row = cta / (p.H / kHeads);
    group = int(cta % (p.H / kHeads));
    b = int(row / p.S);
    pos = p.q_start[b] + int(row % p.S);
  }
};

// The (query row, head group) items of a call; a CTA each per split.
__host__ __device__ inline int64_t head_group_items(const AttentionParams& p) {
  return int64_t(p.B) * p.S * (p.H / kHeads);
}

// Launches an attention kernel of `threads` threads on a CTA per item and split, with `smem_bytes` of
// dynamic shared memory (allowed once per device; `allowed` is the call site's own).
template <typename Kernel>
cudaError_t launch_per_item(Kernel kernel, PerDevice<cudaError_t>& allowed, int threads, int smem_bytes,
                            const AttentionParams& p, cudaStream_t stream) {
  const cudaError_t err = allow_dynamic_smem(allowed, reinterpret_cast<const void*>(kernel), smem_bytes);
  if (err != cudaSuccess) return err;
  kernel<<<unsigned(head_group_items(p) * p.splits), threads, smem_bytes, stream>>>(p);
  return cudaGetLastError();
}

// With several splits the workspace holds the partials [splits, B * S * H, kPartStride], then (fused
// combine) one arrival counter per (query row, head group).
__host__ __device__ __forceinline__ int64_t partial_floats(const AttentionParams& p) {
  return int64_t(p.splits) * p.B * p.S * p.H * kPartStride;
}
__host__ __device__ __forceinline__ int* combine_counters(const AttentionParams& p) {
  return reinterpret_cast<int*>(p.workspace + partial_floats(p));
}

// Keys of one query (attention_keys): window rows first, then entries (selected, or the visible prefix).
struct QueryKeys {
  const bf16* window;   // row of position window_lo
  const uint8_t* pool;  // [N, entry_bytes] of this sequence: bf16 rows, or kv_fp8 entries
  const int* indices;   // [K] of this query, or null for dense
  int n_window, n_keys, N, entry_bytes;
  __device__ QueryKeys(const AttentionParams& p, int64_t row, int b, int pos) {
    const AttentionKeys set = attention_keys(p, b, pos);
    window = p.kv + (int64_t(b) * p.L + (set.window_lo - p.kv_start[b])) * kDim;
    entry_bytes = p.ckv_fp8 ? KvFp8Layout{kDim, p.rope_dim}.bytes() : kDim * 2;
    pool = (p.ckv_fp8 ? p.ckv_fp8 : reinterpret_cast<const uint8_t*>(p.ckv)) + int64_t(b) * p.N * entry_bytes;
    indices = p.indices ? p.indices + row * p.K : nullptr;
    n_window = set.n_window;
    N = p.N;
    n_keys = set.n_window + set.n_entries;
  }
  // Row of key u, or null when it is absent (index -1 or out of range, or u past the end).
  __device__ const void* row(int u) const {
    if (u < n_window) return window + int64_t(u) * kDim;
    if (u >= n_keys) return nullptr;
    const int i = indices ? __ldg(indices + (u - n_window)) : u - n_window;
    return i >= 0 && i < N ? pool + int64_t(i) * entry_bytes : nullptr;
  }
  // row(u) in two steps, so that a thread's index loads for several keys can be in flight together:
  // entry(u) loads key u's index (an entry key's position without indices; unread otherwise), then
  // row(u, entry(u)) is row(u). (row(u) keeps its own body: as row(u, entry(u)) it compiles to other
  // SASS in version 7.)
  __device__ int entry(int u) const {
    const int j = u - n_window;
    return indices && j >= 0 && u < n_keys ? __ldg(indices + j) : j;
  }
  __device__ const void* row(int u, int entry) const {
    if (u < n_window) return window + int64_t(u) * kDim;
    if (u >= n_keys) return nullptr;
    return entry >= 0 && entry < N ? pool + int64_t(entry) * entry_bytes : nullptr;
  }
};

// Blocks [first, last) of 64 keys that this split computes; each split but the last takes a multiple
// of `step` blocks (2 for version 6, which takes them in pairs).
struct SplitRange {
  int first, last;
  __device__ SplitRange(int n_keys, int splits, int split, int step = 1) {
    const int blocks = (n_keys + kKeys - 1) / kKeys;
    const int per = ((blocks + splits - 1) / splits + step - 1) / step * step;
    first = min(blocks, split * per);
    last = min(blocks, first + per);
  }
};

// 2^x from the SFU alone (results below 2^-126 flush to 0): exp2f wraps the same ex2.approx in a range
// check and two multiplies that keep such results, 3 more instructions an exponential on the softmax's path.
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// A row's running maximum as a reference point: 0 while no key was seen, so that exp2(x - ref) is never NaN.
__device__ __forceinline__ float max_ref(float m) { return m == -INFINITY ? 0.f : m; }

// Scales a math thread's logits s (rows r0, r0 + 8; columns 8 j + c0, + 1, j < N / 4, whose key biases
// start at `bias`) to base 2 with the key bias added, and folds their row maxima over the quad into m.
template <int N>
__device__ __forceinline__ void scale_logits(float (&s)[N], const float* bias, float scale, int c0, float (&m)[2]) {
#pragma unroll
  for (int j = 0; j < N / 4; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float& x = s[j * 4 + e];
      x = x * scale + bias[j * 8 + c0 + (e & 1)];
      m[e / 2] = fmaxf(m[e / 2], x);
    }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    m[h] = fmaxf(m[h], __shfl_xor_sync(0xffffffff, m[h], 1));
    m[h] = fmaxf(m[h], __shfl_xor_sync(0xffffffff, m[h], 2));
  }
}

// The factor that turns a row's unnormalised output into the result: 1 / (sum + exp(sink)), all
// relative to the base-2 maximum m; 0 when the row saw no key at all (SPEC 5, sink in the denominator).
__device__ __forceinline__ float output_scale(float sum, float m, float sink) {
  return sum > 0.f ? 1.f / (sum + exp2_ftz(sink * kLog2e - max_ref(m))) : 0.f;
}

// Natural log-sum-exp of the scaled logits from the base-2 maximum and sum; -inf with no key, NaN
// after a NaN logit (the unordered compare lets a NaN sum through).
__device__ __forceinline__ float natural_lse(float sum, float m) {
  return !(sum <= 0.f) ? (m + log2f(sum)) * kLn2 : -INFINITY;
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Offset of "linear" byte `lin` (chunk * 128 + byte in the chunk's row) of row r in a swizzled
// [8 chunks][64 rows][128 B] tile.
__device__ __forceinline__ int linear_offset(int r, int lin) {
  return (lin / 128) * kChunkBytes + swizzled(r, (lin % 128) / 16) + lin % 16;
}

// Producer: 16-byte unit `unit` (of 64) of a 1 KB bf16 row `src` into row r of a swizzled
// [8 chunks][64 rows][128 B] tile; src null: zeros (reading nothing, from the valid address `any`).
template <typename T>
__device__ __forceinline__ void copy_row_unit(uint8_t* tile, int r, int unit, const T* src, const void* any) {
  cp_async_16(tile + (unit / 8) * kChunkBytes + swizzled(r, unit % 8), src ? src + unit * (16 / sizeof(T)) : any,
              src ? 16 : 0);
}

// Producer: loads 64 rows of 512 bf16 into a swizzled [8 chunks][64 rows][128 B] tile. Warp w takes
// rows 16w .. 16w + 15; lane l brings the source of row 16w + l % 16 (null: absent, zero-filled),
// and each row is two warp-wide 512-byte copies.
__device__ __forceinline__ void load_tile(uint8_t* tile, int warp, int lane, const bf16* mine, const bf16* any,
                                          float* bias) {
#pragma unroll 4
  for (int j = 0; j < 16; ++j) {
    const int r = warp * 16 + j;
    const bf16* src =
        reinterpret_cast<const bf16*>(__shfl_sync(0xffffffff, reinterpret_cast<unsigned long long>(mine), j));
#pragma unroll
    for (int half = 0; half < 2; ++half) copy_row_unit(tile, r, half * 32 + lane, src, any);
    if (bias && lane == 0) bias[r] = src ? 0.f : -INFINITY;
  }
}

// (cos, -sin) of the query position for each RoPE pair, by threads 0 .. rope_dim / 2 - 1: one angle
// per pair for all heads (the accurate sincos of a large angle is slow).
__device__ __forceinline__ void fill_unrotate(float2* unrotate, const AttentionParams& p, int pos) {
  if (threadIdx.x < p.rope_dim / 2) {
    float si, co;
    sincosf(rope_angle(pos, p.inv_freq[threadIdx.x]), &si, &co);
    unrotate[threadIdx.x] = make_float2(co, -si);
  }
}

// Output dims d, d + 1 of a row as packed bf16: the accumulators x0, x1 normalised by inv, RoPE undone
// where d is a RoPE channel (the CTA's (cos, -sin) table from rope_begin on).
__device__ __forceinline__ uint32_t output_pair(float x0, float x1, float inv, int d, int rope_begin,
                                                const float2* unrotate) {
  x0 *= inv, x1 *= inv;
  if (d >= rope_begin) {
    const float2 cs = unrotate[(d - rope_begin) / 2];
    rotate_pair(x0, x1, cs.x, cs.y);
  }
  return pack_bf16(x0, x1);
}

// A math thread's rows r0 and r0 + 8 (of the 64 heads from head0 = flat (row, head) of row 0, whose
// sinks start at `sinks`) and its dims dim0 + 8 j, + 1 of O (unnormalised, relative to the base-2
// maxima m) with the rows' sums l, as the output (sink in the denominator, RoPE undone with unrotate)
// and, from the threads with `stats`, the lse.
__device__ __forceinline__ void write_output_rows(const AttentionParams& p, const float (&o)[128], const float (&m)[2],
                                                  const float (&l)[2], int64_t head0, const float* sinks, int r0,
                                                  int dim0, bool stats, const float2* unrotate) {
  const int rope_begin = kDim - p.rope_dim;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float inv = output_scale(l[h], m[h], sinks[r0 + 8 * h]);
    bf16* dst = p.out + (head0 + r0 + 8 * h) * kDim;
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      const int d = dim0 + 8 * j;
      *reinterpret_cast<uint32_t*>(dst + d) =
          output_pair(o[j * 4 + 2 * h], o[j * 4 + 2 * h + 1], inv, d, rope_begin, unrotate);
    }
    if (stats) p.lse[head0 + r0 + 8 * h] = natural_lse(l[h], m[h]);
  }
}

// write_output_rows with one split; with several, split's partial (O, then (m, l) from the threads
// with `stats`) into the workspace.
__device__ __forceinline__ void write_rows(const AttentionParams& p, const float (&o)[128], const float (&m)[2],
                                           const float (&l)[2], int64_t head0, const float* sinks, int split, int r0,
                                           int dim0, bool stats, const float2* unrotate) {
  if (p.splits == 1) return write_output_rows(p, o, m, l, head0, sinks, r0, dim0, stats, unrotate);
  const int64_t rows_total = int64_t(p.B) * p.S * p.H;
  float* part = p.workspace + (split * rows_total + head0) * kPartStride;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float* dst = part + int64_t(r0 + 8 * h) * kPartStride;
#pragma unroll
    for (int j = 0; j < 32; ++j)
      *reinterpret_cast<float2*>(dst + dim0 + 8 * j) = make_float2(o[j * 4 + 2 * h], o[j * 4 + 2 * h + 1]);
    if (stats) *reinterpret_cast<float2*>(dst + kDim) = make_float2(m[h], l[h]);
  }
}

// The one-split epilogue through shared memory: math warpgroup wg's normalised, unrotated bf16
// [64 heads][256 dims] half (dims 256 wg ..) goes to `stage` (32 KB, 512-byte rows; a row's 16-byte
// pieces permuted by row % 8, so a warp's 4-byte stores, 8 rows x 16 bytes, meet no bank twice), then
// each warp copies one half-row at a time with 16-byte loads and stores: 512 contiguous bytes a
// store instruction instead of 8 rows' 16 bytes. Bit for bit write_rows' result. `bar`: a named
// barrier of the warpgroup's 128 threads.
__device__ __forceinline__ void write_rows_staged(const AttentionParams& p, const float (&o)[128], const float (&m)[2],
                                                  const float (&l)[2], int64_t head0, const float* sinks, int r0,
                                                  int c0, int wg, bool stats, const float2* unrotate, uint8_t* stage,
                                                  int bar) {
  constexpr int kRowBytes = kDim;  // 256 bf16
  const int rope_begin = kDim - p.rope_dim;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = r0 + 8 * h;
    const float inv = output_scale(l[h], m[h], sinks[r]);
    uint8_t* row = stage + r * kRowBytes + c0 * 2;
#pragma unroll
    for (int j = 0; j < 32; ++j)
      *reinterpret_cast<uint32_t*>(row + (j ^ (r % 8)) * 16) =
          output_pair(o[j * 4 + 2 * h], o[j * 4 + 2 * h + 1], inv, 256 * wg + 8 * j + c0, rope_begin, unrotate);
    if (stats) p.lse[head0 + r] = natural_lse(l[h], m[h]);
  }
  named_barrier_sync(bar, 128);
  bf16* out = p.out + head0 * kDim + 256 * wg;
  const int t = threadIdx.x % 128;
#pragma unroll
  for (int i = 0; i < 16; ++i) {  // piece g = 128 i + t: row g / 32, 16-byte piece g % 32
    const int r = 4 * i + t / 32, piece = t % 32;
    const uint4 v = *reinterpret_cast<const uint4*>(stage + r * kRowBytes + (piece ^ (r % 8)) * 16);
    *reinterpret_cast<uint4*>(out + int64_t(r) * kDim + piece * 8) = v;
  }
}

// Writes dims [d, d + 4) of the combined (row, head) n: acc normalised by the sum l (base-2 max m)
// and the sink, RoPE undone (kTable: with the CTA's (cos, -sin) table `unrotate`; else from the
// angle); the thread of d = 0 also writes its lse.
template <bool kTable>
__device__ __forceinline__ void write_combined(const AttentionParams& p, int64_t n, int d, float (&acc)[4], float l,
                                               float m, const float2* unrotate) {
  const int64_t row = n / p.H;
  const int pos = p.q_start[row / p.S] + int(row % p.S);
  const float inv = output_scale(l, m, p.sink[n % p.H]);
  const int rope_begin = kDim - p.rope_dim;
  for (int i = 0; i < 4; ++i) acc[i] *= inv;
  for (int i = 0; i < 4; i += 2) {
    if (d + i < rope_begin) continue;
    const int pair = (d + i - rope_begin) / 2;
    if constexpr (kTable)
      rotate_pair(acc[i], acc[i + 1], unrotate[pair].x, unrotate[pair].y);
    else
      rope_rotate_pair(&acc[i], pos, p.inv_freq[pair], -1.f);
  }
  *reinterpret_cast<uint2*>(p.out + n * kDim + d) = make_uint2(pack_bf16(acc[0], acc[1]), pack_bf16(acc[2], acc[3]));
  if (d == 0) p.lse[n] = natural_lse(l, m);
}

// fused_combine: the last split of this CTA's (query row, head group) to finish combines every split's
// partial, in split order (so the result does not depend on which split is last), for its 64 heads:
// the 256 math threads take 2 heads at a time, 4 dims each, and finish as the one-split epilogue does
// (unrotate: the CTA's (cos, -sin) per RoPE pair). Each split publishes its partial (named barrier
// `bar_issued`, fence, then one arrival on the counter that follows the partials; the counters are
// zeroed before the launch); `last_split` (shared) and `bar_decided` tell the CTA whether it is last.
__device__ __forceinline__ void combine_if_last(const AttentionParams& p, int& last_split, const float2* unrotate,
                                                int64_t cta, int64_t head0, int bar_issued, int bar_decided) {
  const int64_t split_stride = int64_t(p.B) * p.S * p.H * kPartStride;
  int* counter = combine_counters(p) + cta;
  named_barrier_sync(bar_issued, 256);  // every math thread's partial stores issued
  if (threadIdx.x == 0) {               // release them (the barrier orders them before the fence), count
    __threadfence();
    const bool last = atomicAdd(counter, 1) == p.splits - 1;
    if (last) __threadfence();  // acquire the other splits' partials, for the whole CTA (barrier below)
    last_split = last;
  }
  named_barrier_sync(bar_decided, 256);
  if (!last_split) return;
  // Each thread loads the partials of kHeadsInFlight heads for every split before it adds any: the
  // loads are independent, so the tail pays one L2 round trip per kHeadsInFlight heads, not two per
  // head and split.
  constexpr int kHeadsInFlight = 4;
  const int d = (threadIdx.x % 128) * 4;
  for (int h0 = threadIdx.x / 128; h0 < kHeads; h0 += 2 * kHeadsInFlight) {
    float2 ml[kHeadsInFlight][kMaxFusedSplits];  // (max, sum) of head h0 + 2 j, split i
    float4 v[kHeadsInFlight][kMaxFusedSplits];
#pragma unroll
    for (int j = 0; j < kHeadsInFlight; ++j)
#pragma unroll
      for (int i = 0; i < kMaxFusedSplits; ++i)
        if (i < p.splits) {
          const float* part = p.workspace + (head0 + h0 + 2 * j) * kPartStride + i * split_stride;
          ml[j][i] = __ldcg(reinterpret_cast<const float2*>(part + kDim));
          v[j][i] = __ldcg(reinterpret_cast<const float4*>(part + d));
        }
#pragma unroll
    for (int j = 0; j < kHeadsInFlight; ++j) {
      float m = -INFINITY;
#pragma unroll
      for (int i = 0; i < kMaxFusedSplits; ++i)
        if (i < p.splits) m = fmaxf(m, ml[j][i].x);
      const float m_use = max_ref(m);
      float l = 0.f, acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int i = 0; i < kMaxFusedSplits; ++i)
        if (i < p.splits) {
          const float w = exp2_ftz(ml[j][i].x - m_use);  // 0 for a split that saw no key
          l = __fadd_rn(l, __fmul_rn(w, ml[j][i].y));
          acc[0] = __fadd_rn(acc[0], __fmul_rn(w, v[j][i].x));
          acc[1] = __fadd_rn(acc[1], __fmul_rn(w, v[j][i].y));
          acc[2] = __fadd_rn(acc[2], __fmul_rn(w, v[j][i].z));
          acc[3] = __fadd_rn(acc[3], __fmul_rn(w, v[j][i].w));
        }
      write_combined<true>(p, head0 + h0 + 2 * j, d, acc, l, m, unrotate);
    }
  }
}

}  // namespace
}  // namespace lcattn
