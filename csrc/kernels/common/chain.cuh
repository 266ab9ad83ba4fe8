// Kernels that run one after another on a stream, each launched while the one before it finishes
// (programmatic dependent launch, sm_90): the next kernel's CTAs are placed and wait on the device
// instead of the host launching it only after the one before has ended, which saves a launch
// latency (a few us) between short kernels. Graph capture keeps the edges.
#pragma once
#include <cuda_runtime.h>

#include <utility>

namespace lcattn {

// First thing in a chained kernel: lets the next kernel of the stream be placed, then waits until
// the kernel before has ended and its writes are visible (it returns at once when there is none).
__device__ __forceinline__ void chain_start() {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
}

// kernel<<<grid, threads, smem_bytes, stream>>>(args...), allowed to start before the stream's
// previous kernel has ended; the kernel must begin with chain_start().
template <typename... Params, typename... Args>
cudaError_t launch_chained(void (*kernel)(Params...), dim3 grid, int threads, size_t smem_bytes, cudaStream_t stream,
                           Args&&... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = dim3(unsigned(threads));
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace lcattn
