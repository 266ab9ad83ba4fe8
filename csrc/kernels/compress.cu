// Block KV compressor (SPEC 3) on CUDA: one block per completed entry, then the ring update.
#include "common/reduce.cuh"
#include "lcattn/api.h"
#include "lcattn/shared_math.h"

namespace lcattn {
namespace {

// One entry of fp32 channels x [D] (shared memory) in the kv_fp8 form (KvFp8Layout) at out: warp w
// takes tiles w, w + warps, ... (their amax, UE8M0 byte and e4m3 values), then every thread the RoPE
// channels and the zero padding.
__device__ void store_kv_fp8(const float* x, const KvFp8Layout& l, uint8_t* out) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int t = warp; t < l.tiles(); t += warps) {
    const int lo = t * KvFp8Layout::kTile, hi = min(lo + KvFp8Layout::kTile, l.nope());
    float amax = 0.f;
    for (int ch = lo + lane; ch < hi; ch += 32) amax = nan_max(amax, fabsf(x[ch]));
    const uint8_t byte = kv_fp8_scale_byte(warp_max(amax));
    if (lane == 0) out[l.scale_offset() + t] = byte;
    const float inv = kv_fp8_inverse_scale(byte);
    for (int ch = lo + lane; ch < hi; ch += 32) out[ch] = float_to_e4m3(x[ch] * inv);
  }
  bf16* rope = reinterpret_cast<bf16*>(out + l.rope_offset());
  for (int ch = threadIdx.x; ch < l.rope_dim; ch += blockDim.x) rope[ch] = float_to_bf16(x[l.nope() + ch]);
  for (int at = l.scale_offset() + l.tiles() + threadIdx.x; at < l.bytes(); at += blockDim.x) out[at] = 0;
}

// grid (entries per chunk, B); dynamic smem: c floats.
__global__ void compress_entries_kernel(const CompressParams p) {
  extern __shared__ float pooled[];
  __shared__ float scratch[32];
  const int b = blockIdx.y, ratio = p.ratio, c = p.c;
  const int s0 = p.start(b), end = p.end(b);
  const int i = s0 / ratio + blockIdx.x;
  if (i >= end / ratio || i >= p.n_out) return;
  float ss = 0.f;
  for (int ch = threadIdx.x; ch < c; ch += blockDim.x) {
    pooled[ch] = compress_pool_channel(p, b, i, ch);
    ss += pooled[ch] * pooled[ch];
  }
  const float inv_rms = rsqrtf(block_sum(ss, scratch) / c + p.eps);
  for (int ch = threadIdx.x; ch < c; ch += blockDim.x) pooled[ch] *= inv_rms * p.norm_weight[ch];
  __syncthreads();
  for (int k = threadIdx.x; k < p.rope_dim / 2; k += blockDim.x)
    rope_rotate_pair(&pooled[c - p.rope_dim + 2 * k], i * ratio, p.inv_freq[k], 1.f);
  __syncthreads();
  if (p.out_type == EntryType::kv_fp8) {
    const KvFp8Layout l{c, p.rope_dim};
    store_kv_fp8(pooled, l, static_cast<uint8_t*>(p.out) + (int64_t(b) * p.n_out + i) * l.bytes());
    return;
  }
  const int64_t o = (int64_t(b) * p.n_out + i) * c;
  float scale = 1.f;
  if (p.out_type == EntryType::e4m3) {
    float amax = 0.f;
    for (int ch = threadIdx.x; ch < c; ch += blockDim.x) amax = nan_max(amax, fabsf(pooled[ch]));
    scale = e4m3_scale(block_max(amax, scratch));
    if (threadIdx.x == 0) p.out_scales[int64_t(b) * p.n_out + i] = scale;
  }
  for (int ch = threadIdx.x; ch < c; ch += blockDim.x) {
    if (p.out_type == EntryType::e4m3)
      static_cast<e4m3*>(p.out)[o + ch] = float_to_e4m3(pooled[ch] / scale);
    else if (p.out_type == EntryType::bf16)
      static_cast<bf16*>(p.out)[o + ch] = float_to_bf16(pooled[ch]);
    else
      static_cast<float*>(p.out)[o + ch] = pooled[ch];
  }
}

// grid (ring, B): keeps the last `ring` positions of the chunk for the next one.
__global__ void compress_ring_kernel(const CompressParams p) {
  const int b = blockIdx.y, R = p.ring(), W = p.width();
  const int s0 = p.start(b), end = p.end(b);
  const int s = max(s0, end - R) + blockIdx.x;
  if (s >= end) return;
  const int64_t src = (int64_t(b) * p.S + (s - s0)) * W, dst = (int64_t(b) * R + s % R) * W;
  for (int x = threadIdx.x; x < W; x += blockDim.x) {
    p.ring_kv[dst + x] = p.kv[src + x];
    p.ring_score[dst + x] = p.score[src + x];
  }
}

}  // namespace

cudaError_t compress_kv_cuda(const CompressParams& p, cudaStream_t stream) {
  if (p.B == 0 || p.S == 0) return cudaSuccess;
  // A chunk of S rows completes at most (S + ratio - 1) / ratio entries.
  const dim3 grid(ceil_div(p.S + p.ratio - 1, p.ratio), p.B);
  compress_entries_kernel<<<grid, 256, p.c * sizeof(float), stream>>>(p);
  compress_ring_kernel<<<dim3(p.ring(), p.B), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace lcattn
