// The ordering key of the CUDA top-k kernels.
#pragma once
#include <cstdint>

namespace lcattn {

// Order-preserving map of a float to an unsigned key; NaN and -inf map to 0 (never picked).
__device__ __forceinline__ uint32_t topk_key(float v) {
  if (isnan(v) || v == -INFINITY) return 0u;
  const uint32_t bits = __float_as_uint(v);
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

}  // namespace lcattn
