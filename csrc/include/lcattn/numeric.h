// Scalar helpers shared by the CPU and CUDA code: bf16 storage, RoPE angles.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define LCATTN_HD __host__ __device__ __forceinline__
#else
#define LCATTN_HD inline
#endif

namespace lcattn {

// bf16 is stored as its 16 raw bits, so these headers need neither ATen nor cuda_bf16.h.
using bf16 = uint16_t;

LCATTN_HD float bf16_to_float(bf16 v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even, NaN stays NaN.
LCATTN_HD bf16 float_to_bf16(float f) {
  uint32_t bits;
  memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<bf16>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<bf16>(bits >> 16);
}

// RoPE angle of a position: pos * inv_freq rounded once in fp32, as torch builds its tables.
LCATTN_HD float rope_angle(int pos, float inv_freq) { return static_cast<float>(pos) * inv_freq; }

// Rotates (x0, x1) by the angle whose cosine and sine are co and si.
LCATTN_HD void rotate_pair(float& x0, float& x1, float co, float si) {
  const float a = x0, b = x1;
  x0 = a * co - b * si;
  x1 = a * si + b * co;
}

// RoPE (SPEC 1) rotates the interleaved pair (x[0], x[1]) of the rope channels by the angle of pos;
// sign = -1 undoes the rotation.
LCATTN_HD void rope_rotate_pair(float* x, int pos, float inv_freq, float sign) {
  const float a = rope_angle(pos, inv_freq);
  rotate_pair(x[0], x[1], cosf(a), sign * sinf(a));
}

LCATTN_HD int ceil_div(int a, int b) { return (a + b - 1) / b; }

}  // namespace lcattn
