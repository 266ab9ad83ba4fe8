// e4m3 values widened on the device, for kernels that keep fp8 data and compute in bf16.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

namespace lcattn {

// 8 e4m3 values (8 bytes, the first in the low byte) times `scale`, a power of two, as 8 bf16 (16
// bytes, the first in the low half): exact, as every e4m3 value and such a product is a bf16 value
// (e4m3 -> f16 -> f32 by cvt, then one rounding that changes nothing). NaN stays NaN.
__device__ __forceinline__ uint4 widen8_e4m3(uint2 raw, float scale) {
  uint32_t out[4];
  const uint32_t words[2] = {raw.x, raw.y};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __half2_raw pair =
        __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(words[i / 2] >> (16 * (i % 2))), __NV_E4M3);
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&pair));
    const __nv_bfloat162 b = __floats2bfloat162_rn(f.x * scale, f.y * scale);
    out[i] = *reinterpret_cast<const uint32_t*>(&b);
  }
  return make_uint4(out[0], out[1], out[2], out[3]);
}

}  // namespace lcattn
