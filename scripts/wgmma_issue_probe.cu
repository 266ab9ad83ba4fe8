// Does issuing a wgmma hold its warp until the tensor pipe takes the instruction? The indexer's sums
// (FFMA) cost as much under the next pair's products as after them (kernel notes, Indexer scoring,
// version 17), though ptxas placed them between those products' QGMMAs. One warpgroup a CTA, one CTA
// an SM; a round is the indexer's products for a pair (two m64 tiles x 4 k-steps of e4m3
// m64n128k32, from shared memory in the kernel's 128B-swizzled layout) and/or FFMAS FFMAs a thread
// (8 independent chains). Its last line sets mode 2 against the e4m3 rate, which a real product
// cannot pass:
//   mode 0: the 8 products issued, then the FFMAs as a loop (after the 8 QGMMAs in the SASS), the wait
//   mode 1: the FFMAs alone, as a loop
//   mode 2: the products and the wait alone
//   mode 3: the products and the FFMAs unrolled, then the wait: ptxas puts FFMAs between the first
//           QGMMAs (in the SASS here: 1 QGMMA, 98 FFMA, 1, 106, 1, 46, 5 at 256), as in version 17
//   mode 4: the FFMAs alone, unrolled
// If an issue does not hold the warp, mode 0 takes about the larger of modes 1 and 2 a round, mode 3
// the larger of 2 and 4; if it does, about their sums. On a GPU machine, from the repository root:
//   nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a -Icsrc/include -Icsrc/kernels \
//     scripts/wgmma_issue_probe.cu -o /tmp/wgmma_issue && /tmp/wgmma_issue
#include <cstdio>

#include "common/sm90.cuh"

using namespace lcattn::sm90;

constexpr int kRounds = 4096, kThreads = 128;

// kFfmas FFMAs in 8 chains; unrolled, ptxas places them among the products as it likes; as a loop (8
// a trip) they stay after the products that precede it in the source.
template <int kFfmas, bool kLoop>
__device__ __forceinline__ void ffmas(float (&f)[8]) {
  if constexpr (kLoop) {
#pragma unroll 1
    for (int i = 0; i < kFfmas / 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) asm volatile("fma.rn.f32 %0, %0, 0f3F800000, 0f3A83126F;" : "+f"(f[j]));
  } else {
#pragma unroll
    for (int i = 0; i < kFfmas / 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) asm volatile("fma.rn.f32 %0, %0, 0f3F800000, 0f3A83126F;" : "+f"(f[j]));
  }
}

// An e4m3 byte of magnitude in [0.5, 1) (exponent field 6) and a sign, from a hash of i.
__device__ __forceinline__ uint8_t nonzero_e4m3(int i) {
  const uint32_t h = uint32_t(i) * 2654435761u;
  return uint8_t(0x30 | ((h >> 13) & 0x07) | ((h >> 9) & 0x80));
}

template <int kMode, int kFfmas>
__global__ void __launch_bounds__(kThreads, 1) probe(float* out) {
  __shared__ alignas(1024) uint8_t keys[256 * 128];  // the kernel's 256 keys x 128 e4m3 dims
  __shared__ alignas(1024) uint8_t q[128 * 128];     // a pair's 128 head rows x 128 dims
  // Operands of magnitude 0.5-1 and either sign (no zeros, no NaN): a first run on zeroed operands
  // timed the products in a quarter of the time the e4m3 rate needs.
  for (int i = threadIdx.x; i < int(sizeof(keys)); i += kThreads) keys[i] = nonzero_e4m3(i);
  for (int i = threadIdx.x; i < int(sizeof(q)); i += kThreads) q[i] = nonzero_e4m3(i + 7919);
  fence_proxy_async();  // the generic stores before the async proxy reads them
  __syncthreads();
  float acc[2][64] = {}, f[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) f[j] = float(threadIdx.x + j);
  const uint64_t q_desc = smem_desc(q, 16, 1024);
  auto product = [&](int i) {  // tile i / 4, k-step i % 4, as the indexer's tile_products
    const int t = i / 4, ks = i % 4;
    wgmma_m64n128k32_e4m3_ss(acc[t], desc_advance(smem_desc(keys + 64 * t * 128, 16, 1024), 32 * ks),
                             desc_advance(q_desc, 32 * ks), ks > 0);
  };
  for (int r = 0; r < kRounds; ++r) {
    if constexpr (kMode != 1 && kMode != 4) wgmma_fence();
    if constexpr (kMode == 0 || kMode == 2 || kMode == 3) {
#pragma unroll
      for (int i = 0; i < 8; ++i) product(i);
    }
    if constexpr (kMode != 1 && kMode != 4) wgmma_commit();
    if constexpr (kMode == 0 || kMode == 1) ffmas<kFfmas, true>(f);
    if constexpr (kMode == 3 || kMode == 4) ffmas<kFfmas, false>(f);
    if constexpr (kMode != 1 && kMode != 4) {
      wgmma_wait<0>();
      fence_registers(acc[0]);
      fence_registers(acc[1]);
    }
  }
  float sum = acc[0][threadIdx.x % 64] + acc[1][0];
#pragma unroll
  for (int j = 0; j < 8; ++j) sum += f[j];
  out[blockIdx.x * kThreads + threadIdx.x] = sum;
}

template <int kMode, int kFfmas>
float ns_a_round(float* out, int sms) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  probe<kMode, kFfmas><<<sms, kThreads>>>(out);  // warm-up
  cudaEventRecord(start);
  probe<kMode, kFfmas><<<sms, kThreads>>>(out);
  cudaEventRecord(stop);
  cudaEventSynchronize(stop);
  float ms = 0.f;
  cudaEventElapsedTime(&ms, start, stop);
  return ms * 1e6f / kRounds;
}

template <int kFfmas>
void row(float* out, int sms, int clock_khz) {
  const float t[5] = {ns_a_round<0, kFfmas>(out, sms), ns_a_round<1, kFfmas>(out, sms), ns_a_round<2, kFfmas>(out, sms),
                      ns_a_round<3, kFfmas>(out, sms), ns_a_round<4, kFfmas>(out, sms)};
  printf("%6d", kFfmas);
  for (float ns : t) printf("  %7.1f ns %6.0f cyc", ns, ns * clock_khz * 1e-6f);
  printf("\n");
}

int main() {
  int sms = 0, clock_khz = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0);
  float* out = nullptr;
  cudaMalloc(&out, sizeof(float) * sms * kThreads);
  printf("a round, %d CTAs of one warpgroup, cycles at %d MHz\n", sms, clock_khz / 1000);
  printf(
      "FFMAS  mode 0 (issue, FFMA loop)   mode 1 (FFMA loop)       mode 2 (products)        "
      "mode 3 (ptxas's order)   mode 4 (FFMA unrolled)\n");
  row<64>(out, sms, clock_khz);
  row<128>(out, sms, clock_khz);
  row<256>(out, sms, clock_khz);
  row<512>(out, sms, clock_khz);
  // The products alone against the e4m3 rate: 8 m64n128k32 a round, 8,192 FLOP a cycle an SM (H100 and
  // H200 at their spec rates), so at least 512 cycles a round.
  const float ns = ns_a_round<2, 64>(out, sms);
  printf("mode 2: %.0f FLOP a cycle an SM (the e4m3 rate: 8192)\n", 8 * 2.f * 64 * 128 * 32 / (ns * clock_khz * 1e-6f));
  const cudaError_t err = cudaDeviceSynchronize();
  if (err != cudaSuccess) printf("CUDA error: %s\n", cudaGetErrorString(err));
  return err != cudaSuccess;
}
