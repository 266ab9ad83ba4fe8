// compute-sanitizer racecheck against named barriers: a kernel in the layout of the fused indexer
// top-k (indexer_topk_sm90.cu) whose shared accesses are all ordered by bar.sync, and which racecheck
// nevertheless flags once the two math warpgroups have run their own barriers a different number of
// times. On a GPU machine:
//   nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a -Icsrc/include -Icsrc/kernels \
//     scripts/racecheck_named_barriers.cu -o /tmp/rb
//   for v in 0 1 2 3 4; do compute-sanitizer --tool racecheck /tmp/rb $v | tail -1; done
// Three warpgroups: WG2 copies 3072 composites into shared memory (cp.async, an mbarrier) and exits,
// as the producer does; WG0 and WG1 (setmaxnreg 224) cut their half with kth_largest_composite<128>
// on their own histogram and barrier (ids 1, 2; 128 threads), meet at bar.sync 3, 256 and select
// the k-th of all 3072 with kth_largest_composite<256> on barrier 3, then mark, count and write the
// picks as the kernel's final loop does, for two rows. Variants:
//   0  each warpgroup cuts once                       -> expected and seen (H100, CUDA 13.0): clean
//   1  as 0 with the final selection's barriers gone  -> a real race: flagged (the tool sees these)
//   2  WG0 cuts twice, WG1 once (still all ordered)   -> flagged: the false positive
//   3  as 2, the cut a __noinline__ call taking its barrier id (as in the kernel) -> flagged
//   4  as 2, WG1 then pads its barrier 2 to WG0's count of barrier 1 -> still flagged
// Each variant also prints how many values are >= the k-th (k = 1024 where the selection is right).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "common/sm90.cuh"
#include "common/topk_select.cuh"

using namespace lcattn;
using namespace lcattn::sm90;

constexpr int kPer = 12, kN = 256 * kPer, kK = 1024;

struct Smem {
  uint64_t vals[kN];
  uint32_t hist[2][256];
  int select[2][4];
  int scan[8];
  int syncs[2];
  uint32_t picked[kN / 32 + 1];
  uint64_t full;
};

__device__ __noinline__ uint64_t cut_call(const uint64_t (&h)[kPer], int k, uint32_t* hist, int* state, int tid,
                                          int barrier) {
  return kth_largest_composite<128>(
      [&](auto&& f) {
        for (int j = 0; j < kPer; ++j) f(h[j]);
      },
      k, hist, state, tid, [&] { named_barrier_sync(barrier, 128); });
}

template <int V>
__global__ void __launch_bounds__(384, 1) probe(const uint64_t* src, uint64_t* kth_out, int* out) {
  extern __shared__ uint8_t raw[];
  Smem& sm = *reinterpret_cast<Smem*>(raw);
  const int t = threadIdx.x, wg = t / 128, tid = t % 128, lane = t % 32;
  if (t == 0) {
    mbar_init(&sm.full, 128);
    fence_barrier_init();
  }
  __syncthreads();
  if (wg == 2) {
    reg_dealloc<56>();
    for (int i = tid; i < kN; i += 128) cp_async_8(&sm.vals[i], src + i);
    mbar_arrive_cp_async(&sm.full);
    return;
  }
  reg_alloc<224>();
  mbar_wait(&sm.full, 0);
  // The cuts: each warpgroup's half, on its own histogram and barrier.
  uint64_t h[kPer];
  for (int j = 0; j < kPer; ++j) h[j] = tid + 128 * j < kN / 2 ? sm.vals[wg * kN / 2 + tid + 128 * j] : 0;
  int syncs = 0;
  for (int c = 0; c < (V >= 2 && wg == 0 ? 2 : 1); ++c) {
    const int k = kK / 2 - 64 * c;
    const uint64_t x = V == 3 ? cut_call(h, k, sm.hist[wg], sm.select[wg], tid, 1 + wg)
                              : kth_largest_composite<128>(
                                    [&](auto&& f) {
                                      for (int j = 0; j < kPer; ++j) f(h[j]);
                                    },
                                    k, sm.hist[wg], sm.select[wg], tid,
                                    [&] {
                                      named_barrier_sync(1 + wg, 128);
                                      ++syncs;
                                    });
    if (tid == 0) kth_out[2 + wg] = x;
  }
  if (V == 4) {
    if (tid == 0) sm.syncs[wg] = syncs;
    named_barrier_sync(3, 256);
    for (int i = syncs; i < sm.syncs[1 - wg]; ++i) named_barrier_sync(1 + wg, 128);
  }
  named_barrier_sync(3, 256);
  // The final selection of both warpgroups, two rows.
  for (int r = 0; r < 2; ++r) {
    uint64_t v[kPer];
    for (int j = 0; j < kPer; ++j) v[j] = sm.vals[t + 256 * j] ^ uint64_t(r);
    const uint64_t kth = kth_largest_composite<256>(
        [&](auto&& f) {
          for (int j = 0; j < kPer; ++j) f(v[j]);
        },
        kK, sm.hist[0], sm.select[0], t,
        [&] {
          if (V != 1) named_barrier_sync(3, 256);
        });
    if (t == 0) kth_out[r] = kth;
    const int words = kN / 32 + 1, per = ((words + 255) / 256) | 1;
    for (int x = t; x < words; x += 256) sm.picked[x] = 0u;
    named_barrier_sync(3, 256);
    for (int j = 0; j < kPer; ++j)
      if (v[j] >= kth) {
        const int n = topk_composite_index(v[j]);
        atomicOr(&sm.picked[n / 32], 1u << (n % 32));
      }
    named_barrier_sync(3, 256);
    const int w_begin = min(words, t * per), w_end = min(words, w_begin + per);
    int mine = 0;
    for (int x = w_begin; x < w_end; ++x) mine += __popc(sm.picked[x]);
    int before = mine;
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, before, o);
      if (lane >= o) before += y;
    }
    if (lane == 31) sm.scan[t / 32] = before;
    named_barrier_sync(3, 256);
    before -= mine;
    for (int x = 0; x < t / 32; ++x) before += sm.scan[x];
    for (int x = w_begin; x < w_end; ++x)
      for (uint32_t bits = sm.picked[x]; bits != 0u; bits &= bits - 1u)
        if (before < kK) out[r * kK + before++] = 32 * x + __ffs(bits) - 1;
    named_barrier_sync(3, 256);
  }
}

template <int V>
void run(const uint64_t* d_src, const std::vector<uint64_t>& values) {
  uint64_t* d_kth;
  int* d_out;
  cudaMalloc(&d_kth, 4 * sizeof(uint64_t));
  cudaMalloc(&d_out, 2 * kK * sizeof(int));
  cudaFuncSetAttribute(probe<V>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(sizeof(Smem)));
  probe<V><<<4, 384, sizeof(Smem)>>>(d_src, d_kth, d_out);
  const cudaError_t err = cudaDeviceSynchronize();
  uint64_t kth[4];
  cudaMemcpy(kth, d_kth, sizeof(kth), cudaMemcpyDeviceToHost);
  int at_or_above = 0;
  for (uint64_t x : values) at_or_above += x >= kth[0];
  printf("variant %d: %s, values >= the k-th: %d (k %d)\n", V, cudaGetErrorString(err), at_or_above, kK);
  cudaFree(d_kth);
  cudaFree(d_out);
}

int main(int argc, char** argv) {
  const int variant = argc > 1 ? atoi(argv[1]) : -1;
  std::vector<uint64_t> values(kN);  // keys 1-64 (many ties), distinct indices: distinct composites
  uint32_t x = 12345;
  for (int i = 0; i < kN; ++i) {
    x = x * 1664525u + 1013904223u;
    values[i] = uint64_t((x >> 20) % 64 + 1) << 32 | (0xFFFFFFFFu - uint32_t(i));  // as topk_composite
  }
  uint64_t* d;
  cudaMalloc(&d, kN * sizeof(uint64_t));
  cudaMemcpy(d, values.data(), kN * sizeof(uint64_t), cudaMemcpyHostToDevice);
  if (variant < 0 || variant == 0) run<0>(d, values);
  if (variant < 0 || variant == 1) run<1>(d, values);
  if (variant < 0 || variant == 2) run<2>(d, values);
  if (variant < 0 || variant == 3) run<3>(d, values);
  if (variant < 0 || variant == 4) run<4>(d, values);
  return 0;
}
