// Window + compressed entries + sink attention on CUDA (SPEC 5). The model's shapes (head dim 512,
// heads in groups of 64) run on the Hopper kernels of attention_sm90.cu; every other shape runs on
// the general kernel here: one block per (token, head), keys in chunks with an online softmax in fp32.
#include "attention_sm90.h"
#include "common/reduce.cuh"
#include "lcattn/api.h"
#include "lcattn/shared_math.h"

namespace lcattn {
namespace {

constexpr int kThreads = 128, kWarps = kThreads / 32, kChunk = 32;
constexpr int kMaxDimPerThread = 8;  // D <= 1024

// Key u of query (b, s) at position pos (attention_keys): window first, then compressed entries;
// null = none.
struct KeySet {
  const bf16* window;  // row of position `lo`
  const bf16* pool;    // [N, D] of this sequence
  const int* indices;  // [K] of this query, or null
  int n_window, n_total, N, D;
  __device__ const bf16* key(int u) const {
    if (u < n_window) return window + int64_t(u) * D;
    const int i = indices ? indices[u - n_window] : u - n_window;
    return i >= 0 && i < N ? pool + int64_t(i) * D : nullptr;
  }
};

// grid (B * S * H); dynamic smem: q [D] and the output row [D].
__global__ void __launch_bounds__(kThreads) attention_kernel(const AttentionParams p) {
  extern __shared__ float smem[];
  float* q = smem;
  float* o = q + p.D;
  __shared__ float logits[kChunk];
  __shared__ const bf16* keys[kChunk];
  const int64_t n = blockIdx.x, row = n / p.H;  // row = b * S + s
  const int h = int(n % p.H), b = int(row / p.S), s = int(row % p.S);
  const int pos = p.q_start[b] + s;
  const AttentionKeys set = attention_keys(p, b, pos);

  KeySet ks;
  ks.window = p.kv + (int64_t(b) * p.L + (set.window_lo - p.kv_start[b])) * p.D;
  ks.pool = p.ckv + int64_t(b) * p.N * p.D;
  ks.indices = p.indices ? p.indices + row * p.K : nullptr;
  ks.n_window = set.n_window;
  ks.N = p.N;
  ks.D = p.D;
  ks.n_total = set.n_window + set.n_entries;

  for (int d = threadIdx.x; d < p.D; d += kThreads) q[d] = bf16_to_float(p.q[n * p.D + d]);
  __syncthreads();

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float acc[kMaxDimPerThread] = {};
  float mx = -INFINITY, sum = 0.f;
  for (int k0 = 0; k0 < ks.n_total; k0 += kChunk) {
    for (int j = warp; j < kChunk; j += kWarps) {
      const bf16* key = k0 + j < ks.n_total ? ks.key(k0 + j) : nullptr;
      float dot = 0.f;
      if (key)
        for (int d = lane; d < p.D; d += 32) dot += q[d] * bf16_to_float(key[d]);
      dot = warp_sum(dot);
      if (lane == 0) {
        logits[j] = key ? dot * p.scale : -INFINITY;
        keys[j] = key;
      }
    }
    __syncthreads();
    float chunk_max = -INFINITY;
    // nan_max (fmaxf drops a NaN): a chunk of NaN logits must not be taken for one without keys.
    for (int j = 0; j < kChunk; ++j) chunk_max = nan_max(chunk_max, logits[j]);
    const float nm = nan_max(mx, chunk_max);
    if (nm != -INFINITY) {
      const float corr = expf(mx - nm);
      sum *= corr;
#pragma unroll
      for (int x = 0; x < kMaxDimPerThread; ++x) acc[x] *= corr;
      for (int j = 0; j < kChunk; ++j) {
        if (!keys[j]) continue;
        const float e = expf(logits[j] - nm);
        sum += e;
#pragma unroll
        for (int x = 0; x < kMaxDimPerThread; ++x) {
          const int d = threadIdx.x + x * kThreads;
          if (d < p.D) acc[x] += e * bf16_to_float(keys[j][d]);
        }
      }
      mx = nm;
    }
    __syncthreads();
  }
  // With no key at all (a window outside the buffer) the output is 0 and the lse -inf.
  const float denom = sum > 0.f ? sum + expf(p.sink[h] - mx) : 1.f;
#pragma unroll
  for (int x = 0; x < kMaxDimPerThread; ++x) {
    const int d = threadIdx.x + x * kThreads;
    if (d < p.D) o[d] = acc[x] / denom;
  }
  __syncthreads();
  for (int k = threadIdx.x; k < p.rope_dim / 2; k += kThreads)
    rope_rotate_pair(&o[p.D - p.rope_dim + 2 * k], pos, p.inv_freq[k], -1.f);
  __syncthreads();
  for (int d = threadIdx.x; d < p.D; d += kThreads) p.out[n * p.D + d] = float_to_bf16(o[d]);
  if (threadIdx.x == 0) p.lse[n] = !(sum <= 0.f) ? mx + logf(sum) : -INFINITY;  // NaN after a NaN logit
}

}  // namespace

cudaError_t attention_cuda(const AttentionParams& p, cudaStream_t stream) {
  if (p.B == 0 || p.S == 0 || p.H == 0) return cudaSuccess;
  if (attention_sm90_supported(p)) return attention_sm90(p, stream);
  if (p.ckv_fp8) return cudaErrorInvalidValue;  // only the Hopper kernel reads the kv_fp8 form
  if (p.D > kThreads * kMaxDimPerThread) return cudaErrorInvalidValue;
  attention_kernel<<<unsigned(int64_t(p.B) * p.S * p.H), kThreads, 2 * p.D * sizeof(float), stream>>>(p);
  return cudaGetLastError();
}

}  // namespace lcattn
