// The mHC ops (SPEC 7) on CUDA.
// hc_sinkhorn: one thread per matrix, all iterations in registers (as torch ops they are 2 * iters
// launches per site; in a decode step, hundreds).
// hc_mix (hc_post, hc_collapse): one block per token at a time, each thread 16 bytes of every stream at
// once, so the n streams (and the sublayer's output) are read once and the sums written once. As torch
// ops, cuBLAS's batched n x n by n x D products alone took 2.47 ms at 8192 tokens of 4 x 4096 bf16 on
// the H100, about 15x this traffic at the copy rate, and the collapse wrote and read an fp32 product.
#include <cstdint>

#include "common/device.h"
#include "lcattn/api.h"
#include "lcattn/shared_math.h"

namespace lcattn {
namespace {

constexpr int kSinkhornThreads = 128;

__global__ void __launch_bounds__(kSinkhornThreads) hc_sinkhorn_kernel(const SinkhornParams p) {
  const int64_t m = int64_t(blockIdx.x) * kSinkhornThreads + threadIdx.x;
  if (m < p.M) hc_sinkhorn(p, m);
}

// V consecutive elements as floats: 16 bytes at once for V > 1 (the address is 16-byte aligned).
template <int V>
__device__ __forceinline__ void load_vec(const bf16* v, float* f) {
  if constexpr (V == 8) {
    const uint4 u = *reinterpret_cast<const uint4*>(v);
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      f[2 * k] = __uint_as_float(w[k] << 16);
      f[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    }
  } else {
    static_assert(V == 1, "bf16 vectors are 8 elements");
    f[0] = bf16_to_float(*v);
  }
}

template <int V>
__device__ __forceinline__ void load_vec(const float* v, float* f) {
  if constexpr (V == 4) {
    const float4 u = *reinterpret_cast<const float4*>(v);
    f[0] = u.x, f[1] = u.y, f[2] = u.z, f[3] = u.w;
  } else {
    static_assert(V == 1, "fp32 vectors are 4 elements");
    f[0] = *v;
  }
}

template <int V>
__device__ __forceinline__ void store_vec(bf16* v, const float* f) {
  if constexpr (V == 8) {
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) w[k] = uint32_t(float_to_bf16(f[2 * k])) | uint32_t(float_to_bf16(f[2 * k + 1])) << 16;
    *reinterpret_cast<uint4*>(v) = make_uint4(w[0], w[1], w[2], w[3]);
  } else {
    v[0] = float_to_bf16(f[0]);
  }
}

template <int V>
__device__ __forceinline__ void store_vec(float* v, const float* f) {
  if constexpr (V == 4)
    *reinterpret_cast<float4*>(v) = make_float4(f[0], f[1], f[2], f[3]);
  else
    v[0] = f[0];
}

constexpr int kHcMixThreads = 256;

// T the streams' element, N >= n (4: n is 4), V elements per thread and step (D % V == 0), Post: m = n
// sums with post_j * out (hc_post), else m = 1 sum without it (hc_collapse).
template <class T, int N, int V, bool Post>
__global__ void __launch_bounds__(kHcMixThreads) hc_mix_kernel(const HcMixParams p) {
  constexpr int M = Post ? N : 1;                                 // bound on m
  __shared__ float weights[kHcMaxStreams * (kHcMaxStreams + 1)];  // post [m] when Post, then comb [n, m]
  const int n = N == 4 ? 4 : p.n, m = Post ? n : 1, D = p.D, units = D / V;
  const int post_len = Post ? m : 0;
  const T* streams = static_cast<const T*>(p.streams);
  const T* out = static_cast<const T*>(p.out);
  T* y = static_cast<T*>(p.y);
  for (int64_t t = blockIdx.x; t < p.T; t += gridDim.x) {
    __syncthreads();  // the previous token's weights are read
    for (int k = threadIdx.x; k < post_len + n * m; k += blockDim.x)
      weights[k] = k < post_len ? p.post[t * m + k] : p.comb[t * n * m + (k - post_len)];
    __syncthreads();
    for (int u = threadIdx.x; u < units; u += blockDim.x) {
      float x[N][V], o[V];
#pragma unroll
      for (int i = 0; i < N; ++i)
        if (i < n) load_vec<V>(streams + (t * n + i) * D + u * V, x[i]);
      if constexpr (Post) load_vec<V>(out + t * D + u * V, o);
#pragma unroll
      for (int j = 0; j < M; ++j) {
        if (j >= m) break;
        float r[V];
#pragma unroll
        for (int e = 0; e < V; ++e) {
          float xe[N];
#pragma unroll
          for (int i = 0; i < N; ++i) xe[i] = x[i][e];
          r[e] = hc_mix_element<N>(Post ? weights : nullptr, weights + post_len, n, m, j, Post ? o[e] : 0.f, xe);
        }
        store_vec<V>(y + (t * m + j) * D + u * V, r);
      }
    }
  }
}

template <class T, int V, bool Post>
cudaError_t launch_hc_mix(const HcMixParams& p, cudaStream_t stream) {
  const unsigned blocks = unsigned(p.T < (1 << 20) ? p.T : (1 << 20));
  if (p.n == 4)
    hc_mix_kernel<T, 4, V, Post><<<blocks, kHcMixThreads, 0, stream>>>(p);
  else
    hc_mix_kernel<T, kHcMaxStreams, V, Post><<<blocks, kHcMixThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <class T, int V>
cudaError_t launch_hc_mix(const HcMixParams& p, cudaStream_t stream) {
  return p.post ? launch_hc_mix<T, V, true>(p, stream) : launch_hc_mix<T, V, false>(p, stream);
}

}  // namespace

cudaError_t hc_sinkhorn_cuda(const SinkhornParams& p, cudaStream_t stream) {
  if (p.M == 0) return cudaSuccess;
  const unsigned blocks = unsigned((p.M + kSinkhornThreads - 1) / kSinkhornThreads);
  hc_sinkhorn_kernel<<<blocks, kSinkhornThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t hc_mix_cuda(const HcMixParams& p, cudaStream_t stream) {
  if (p.T == 0 || p.D == 0) return cudaSuccess;
  const int vec = p.bf16_streams ? 8 : 4;  // elements in 16 bytes
  const bool vectors = p.D % vec == 0 && aligned16(p.streams) && (!p.out || aligned16(p.out)) && aligned16(p.y);
  if (p.bf16_streams) return vectors ? launch_hc_mix<bf16, 8>(p, stream) : launch_hc_mix<bf16, 1>(p, stream);
  return vectors ? launch_hc_mix<float, 4>(p, stream) : launch_hc_mix<float, 1>(p, stream);
}

}  // namespace lcattn
