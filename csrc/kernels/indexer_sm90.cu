// Lightning indexer scoring on Hopper (SPEC 4) for head dim 128 and up to 64 heads: wgmma with a
// block of keys as the M dimension and (2 query rows x 64 heads) as N, so that the sum over heads of
// w_h ReLU(q_h . k) runs along each accumulator row: 16 products in a thread's registers, then 2
// shuffles across the quad (with the heads as M it would run over the 8 lanes and 4 warps of a
// column).
//
// One CTA = 256 keys of one sequence x up to 256 query rows of it, three warpgroups:
//   WG2, producer: loads the keys once, then per pair of query rows q [2 x 64 heads, 128] (32 KB)
//        with cp.async and their head weights, into a ring of 4 stages. With kQTma (64 heads, q on
//        a 16-byte boundary; LCATTN_INDEXER_Q_TMA=0 turns it off) one thread loads a pair's q by TMA
//        instead of 1,024 (bf16: 2,048) cp.async, which share the schedulers' issue slots with the
//        math warps.
//   WG0, WG1, math: WG w owns keys 128w .. 128w + 127 (two m64 tiles). Per pair: S = K Q^T
//        (m64n128k16, 8 k-steps per tile), then per key and row sum_h w_h max(S, 0), -inf past the
//        row's visible entries, written to the score row.
// Rows that see no key of the block are written -inf up front and not computed.
// Shared memory: keys 64 KB + 4 stages of 32.5 KB; tiles 128B-swizzled [2 chunks of 64 dims][rows][128 B].
#include "common/device.h"
#include "cutlass/cuda_host_adapter.hpp"  // call_cuTensorMapEncodeTiled: the driver call without -lcuda
#include "indexer_sm90.cuh"
#include "indexer_sm90.h"
#include "lcattn/shared_math.h"
#include "lcattn/switches.h"

namespace lcattn {
namespace {

using namespace indexer_sm90;

constexpr int kRows = 256;  // query rows per CTA at most
constexpr int kStages = 4;

template <int kElemBytes>
struct SharedStorage {
  static constexpr int kChunks = Elem<kElemBytes>::kChunks;
  alignas(1024) uint8_t keys[kChunks * kKeyChunkBytes];         // [chunks][256 keys][128 B]
  alignas(1024) uint8_t q[kStages][kChunks * kPairChunkBytes];  // [chunks][row 0's heads, row 1's][128 B]
  float w[kStages][kPairRows];                                  // head weights, 0 for absent heads and rows
  uint64_t keys_full, full[kStages], empty[kStages];
};
template <int kElemBytes>
constexpr int kSmemBytes = sizeof(SharedStorage<kElemBytes>) + 1024;  // + room to align the base to 1024
static_assert(kSmemBytes<2> <= 232448, "more shared memory than an H100 block may have");

__host__ __device__ __forceinline__ int64_t chunk_of(const IndexerParams& p, int64_t row) {
  return row / p.S * ceil_div(p.S, kRows) + row % p.S / kRows;
}

// grid (ceil(N / kKeys), chunks of query rows of [row_begin, row_end)), kThreads threads; q and keys
// bf16 (kElemBytes 2) or e4m3 (1: q_e4m3, keys_e4m3).
// kQTma: q by TMA through q_map (q as [B * S * 64 head rows, kDim], boxes of 128 B x 128 rows).
// The storage's base is aligned by an offset from smem_raw, so that the head weights' loads are LDS
// (through an integer they compile to generic LD, on the global memory path: 16 LD.E.64 a pair); a
// key's visibility is one int compare with its first seeing position, not a division per pair, and
// the lane's score pointer is advanced two rows a pair (no 64-bit multiply per pair).
template <int kElemBytes, bool kQTma>
__global__ void __launch_bounds__(kThreads, 1)
    indexer_scores_sm90_kernel(const IndexerParams p, const __grid_constant__ CUtensorMap q_map) {
  using E = Elem<kElemBytes>;
  extern __shared__ uint8_t smem_raw[];
  SharedStorage<kElemBytes>& sm =
      *reinterpret_cast<SharedStorage<kElemBytes>*>(smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023));
  const int n0 = blockIdx.x * kKeys;
  const int64_t chunk = chunk_of(p, p.row_begin) + blockIdx.y;
  const int chunks_per_seq = ceil_div(p.S, kRows);
  const int b = int(chunk / chunks_per_seq), s0 = int(chunk % chunks_per_seq) * kRows;
  const int64_t seq_row0 = int64_t(b) * p.S;  // flattened row of position s = 0
  // Positions [s_lo, s_hi) of this chunk that lie in the rows being scored.
  const int s_lo = int(max(int64_t(s0), p.row_begin - seq_row0));
  const int s_hi = int(min(int64_t(min(s0 + kRows, p.S)), p.row_end - seq_row0));
  if (s_lo >= s_hi) return;
  const int q0 = p.q_start[b];
  // The first position that sees entry n0: (pos + 1) / ratio > n0.
  const int s_first = int(min(int64_t(s_hi), max(int64_t(s_lo), int64_t(p.ratio) * (n0 + 1) - 1 - q0)));
  const int n_end = min(n0 + kKeys, p.N);
  for (int64_t x = threadIdx.x; x < int64_t(s_first - s_lo) * (n_end - n0); x += kThreads) {
    const int s = s_lo + int(x / (n_end - n0)), n = n0 + int(x % (n_end - n0));
    p.scores[(seq_row0 + s - p.row_begin) * p.N + n] = -INFINITY;
  }
  const int pairs = (s_hi - s_first + 1) / 2;
  if (pairs == 0) return;
  const int wg = threadIdx.x / 128, tid = threadIdx.x % 128, warp = tid / 32, lane = threadIdx.x % 32;

  if (threadIdx.x == 0) {
    mbar_init(&sm.keys_full, 128);
    for (int i = 0; i < kStages; ++i) {
      // The producer's cp.async arrivals (q and weights; with kQTma the weights and one expect_tx).
      mbar_init(&sm.full[i], kQTma ? 129 : 128);
      mbar_init(&sm.empty[i], 256);  // every math thread, after its products and weight loads
    }
    fence_barrier_init();
  }
  __syncthreads();

  if (wg == 2) {        // ---------------------------------------------------------------- producer
    reg_dealloc<56>();  // 40 spills in the e4m3 producer
    const uint8_t* q_all = kElemBytes == 2 ? reinterpret_cast<const uint8_t*>(p.q) : p.q_e4m3;
    const uint8_t* keys_all = kElemBytes == 2 ? reinterpret_cast<const uint8_t*>(p.keys) : p.keys_e4m3;
    const uint8_t* keys = keys_all + (int64_t(b) * p.N + n0) * E::kRowBytes;
    for (int v = tid; v < kKeys * E::kUnits; v += 128) {  // 16-byte unit u of key r
      const int r = v / E::kUnits, u = v % E::kUnits;
      const bool valid = n0 + r < p.N;
      cp_async_16(sm.keys + (u / 8) * kKeyChunkBytes + swizzled(r, u % 8),
                  valid ? keys + r * E::kRowBytes + u * 16 : keys_all, valid ? 16 : 0);
    }
    mbar_arrive_cp_async(&sm.keys_full);
    for (int i = 0; i < pairs; ++i) {
      const int stage = i % kStages;
      if (i >= kStages) mbar_wait(&sm.empty[stage], ((i / kStages) - 1) & 1);
      const int s_pair = s_first + 2 * i;
      if constexpr (kQTma) {
        // The 128 head rows of query rows s_pair, s_pair + 1; a row past s_hi is read (zeros past the
        // tensor's end) and its columns' sums are never written.
        if (tid == 0) {
          mbar_arrive_expect_tx(&sm.full[stage], E::kChunks * kPairChunkBytes);
#pragma unroll
          for (int c = 0; c < E::kChunks; ++c)
            tma_load_2d(sm.q[stage] + c * kPairChunkBytes, &q_map, &sm.full[stage], c * 128 / kElemBytes,
                        int((seq_row0 + s_pair) * kHeads));
        }
      } else {
        for (int v = tid; v < kPairRows * E::kUnits; v += 128) {  // unit u of head row r (query row s_pair + r / 64)
          const int r = v / E::kUnits, u = v % E::kUnits, s = s_pair + r / kHeads, h = r % kHeads;
          const bool valid = s < s_hi && h < p.HI;
          const uint8_t* src = q_all + ((seq_row0 + s) * p.HI + h) * E::kRowBytes + u * 16;
          cp_async_16(sm.q[stage] + (u / 8) * kPairChunkBytes + swizzled(r, u % 8), valid ? src : q_all,
                      valid ? 16 : 0);
        }
      }
      {  // the weights by cp.async too: a plain load would stall the producer for an L2 round trip per pair
        const int s = s_pair + tid / kHeads, h = tid % kHeads;
        const bool valid = s < s_hi && h < p.HI;
        cp_async_4(&sm.w[stage][tid], valid ? p.weights + (seq_row0 + s) * p.HI + h : p.weights, valid ? 4 : 0);
      }
      mbar_arrive_cp_async(&sm.full[stage]);
    }
    return;
  }

  // ------------------------------------------------------------------------------------ math
  reg_alloc<224>();
  const int c0 = (lane % 4) * 2;  // this thread's columns c0, c0 + 1 of every 8-column block
  // This thread's keys: accumulator rows warp * 16 + lane / 4 (+ 8) of tiles 0 and 1.
  const int key0 = n0 + 128 * wg + warp * 16 + lane / 4;
  // Lane l of a quad writes (tile, query row) = (l % 4 / 2, l % 2) of keys key_n[half], both halves.
  const int t_out = (lane % 4) / 2, q_out = lane % 2;
  int key_n[2];
  float key_scale[2];
  bool key_in[2];
  // Position s sees key n iff n < visible_entries(q0 + s), i.e. s >= first_s = (n + 1) ratio - 1 - q0.
  int first_s[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    key_n[half] = key0 + 64 * t_out + 8 * half;
    key_in[half] = key_n[half] < p.N;
    key_scale[half] = key_in[half] ? p.key_scale(b, key_n[half]) : 0.f;
    const int64_t first_pos = int64_t(key_n[half] + 1) * p.ratio - 1;
    first_s[half] = int(max(int64_t(0), min(first_pos - q0, int64_t(INT_MAX))));
  }
  // This lane's score of key_n[0] in its row of the first pair (key_n[1] = key_n[0] + 8); 2 rows a pair.
  float* out = p.scores + (seq_row0 + s_first + q_out - p.row_begin) * p.N + key_n[0];
  mbar_wait(&sm.keys_full, 0);
  if constexpr (kQTma) fence_proxy_async();  // the keys' cp.async writes before wgmma reads them
  for (int i = 0; i < pairs; ++i) {
    const int stage = i % kStages;
    mbar_wait(&sm.full[stage], (i / kStages) & 1);
    // The cp.async writes (generic proxy) before wgmma reads them (async proxy); TMA writes are async.
    if constexpr (!kQTma) fence_proxy_async();
    float acc[2][64];
    issue_pair_products<kElemBytes>(acc, sm.keys, sm.q[stage], wg);
    float2 w[2][8];
    load_pair_weights(w, sm.w[stage], c0);
    wait_pair_products(acc);
    mbar_arrive(&sm.empty[stage]);

    // This lane's (tile, query row) = (t_out, q_out) of its keys key_n[half], summed over the 64 heads.
    float total[2];
    head_sums_selected(acc, w, t_out, q_out, total);
    const int s = s_first + 2 * i + q_out;
    if (s < s_hi) {
#pragma unroll
      for (int half = 0; half < 2; ++half)
        if (key_in[half]) out[8 * half] = s >= first_s[half] ? key_scale[half] * total[half] : -INFINITY;
    }
    out += 2 * int64_t(p.N);
  }
}

// q by TMA (unless LCATTN_INDEXER_Q_TMA=0) where q allows it: 64 heads (a pair's 128 head rows
// consecutive), a 16-byte aligned base, head rows counted in int32.
bool q_by_tma(const IndexerParams& p, const void* q) {
  return !env_is("LCATTN_INDEXER_Q_TMA", "0") && p.HI == kHeads && reinterpret_cast<uintptr_t>(q) % 16 == 0 &&
         int64_t(p.B) * p.S * kHeads <= INT32_MAX;
}

// q [B * S * 64 head rows, kDim elements] for TMA: boxes of 128 bytes x 128 rows, 128B swizzle (the
// layout of the tiles above); rows past the end read as zeros. False where no map was made (no driver
// entry point, or the driver refused it): the call takes cp.async.
bool q_tensor_map(CUtensorMap& map, const IndexerParams& p, const void* q, int elem_bytes) {
  const cuuint64_t dims[2] = {cuuint64_t(kDim), cuuint64_t(int64_t(p.B) * p.S * kHeads)};
  const cuuint64_t strides[1] = {cuuint64_t(kDim * elem_bytes)};
  const cuuint32_t box[2] = {cuuint32_t(128 / elem_bytes), cuuint32_t(kPairRows)}, steps[2] = {1, 1};
  return cutlass::call_cuTensorMapEncodeTiled(
             &map, elem_bytes == 2 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_UINT8, 2,
             const_cast<void*>(q), dims, strides, box, steps, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

template <int kElemBytes, bool kQTma>
cudaError_t launch(const IndexerParams& p, const CUtensorMap& q_map, cudaStream_t stream) {
  static PerDevice<cudaError_t> smem_limit;
  const auto kernel = indexer_scores_sm90_kernel<kElemBytes, kQTma>;
  const cudaError_t err = allow_dynamic_smem(smem_limit, reinterpret_cast<const void*>(kernel), kSmemBytes<kElemBytes>);
  if (err != cudaSuccess) return err;
  const int64_t chunks = chunk_of(p, p.row_end - 1) - chunk_of(p, p.row_begin) + 1;
  const dim3 grid(unsigned(ceil_div(p.N, kKeys)), unsigned(chunks));
  kernel<<<grid, kThreads, kSmemBytes<kElemBytes>, stream>>>(p, q_map);
  return cudaGetLastError();
}

template <int kElemBytes>
cudaError_t launch(const IndexerParams& p, cudaStream_t stream) {
  const void* q = kElemBytes == 2 ? static_cast<const void*>(p.q) : static_cast<const void*>(p.q_e4m3);
  CUtensorMap q_map = {};
  const bool tma = q_by_tma(p, q) && q_tensor_map(q_map, p, q, kElemBytes);  // else q_map unused
  return tma ? launch<kElemBytes, true>(p, q_map, stream) : launch<kElemBytes, false>(p, q_map, stream);
}

}  // namespace

bool indexer_sm90_supported(const IndexerParams& p) {
  if (p.DI != kDim || p.HI > kHeads || p.HI < 1 || p.N < 1 || p.row_end <= p.row_begin) return false;
  return chunk_of(p, p.row_end - 1) - chunk_of(p, p.row_begin) + 1 <= 65535;  // grid.y
}

cudaError_t indexer_scores_sm90(const IndexerParams& p, cudaStream_t stream) {
  if (!indexer_sm90_supported(p)) return cudaErrorInvalidValue;
  return p.keys_e4m3 ? launch<1>(p, stream) : launch<2>(p, stream);
}

}  // namespace lcattn
