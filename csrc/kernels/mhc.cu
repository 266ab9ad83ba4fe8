// The mHC mixing matrices (SPEC 7) on CUDA: one thread per matrix, all iterations in registers (as
// torch ops they are 2 * iters launches per site; in a decode step, hundreds).
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

}  // namespace

cudaError_t hc_sinkhorn_cuda(const SinkhornParams& p, cudaStream_t stream) {
  if (p.M == 0) return cudaSuccess;
  const unsigned blocks = unsigned((p.M + kSinkhornThreads - 1) / kSinkhornThreads);
  hc_sinkhorn_kernel<<<blocks, kSinkhornThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace lcattn
