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

// fp8 e4m3 in its "fn" form (no infinities, 448 the largest value, 0x7f NaN), as its 8 raw bits.
using e4m3 = uint8_t;
constexpr float kE4m3Max = 448.f;

// Round to nearest even; magnitudes from 448 up saturate to 448, NaN stays NaN.
LCATTN_HD e4m3 float_to_e4m3(float f) {
  uint32_t bits;
  memcpy(&bits, &f, 4);
  const e4m3 sign = static_cast<e4m3>((bits >> 24) & 0x80u);
  bits &= 0x7fffffffu;
  if (bits > 0x7f800000u) return sign | 0x7fu;   // NaN
  if (bits >= 0x43e00000u) return sign | 0x7eu;  // >= 448
  if (bits < 0x3c800000u) {                      // under 2^-6: subnormal, a multiple of 2^-9
    // In 2^14 + |f| the last mantissa bit is worth 2^-9, so the add rounds |f| to nearest even.
    float a, t;
    memcpy(&a, &bits, 4);
    t = a + 16384.f;
    uint32_t tb;
    memcpy(&tb, &t, 4);
    return sign | static_cast<e4m3>(tb - 0x46800000u);
  }
  bits += 0x7ffffu + ((bits >> 20) & 1u);  // 23 mantissa bits to 3, nearest even
  bits -= 120u << 23;                      // exponent bias 127 -> 7
  return sign | static_cast<e4m3>(bits >> 20);
}

// The scale of a row quantized to e4m3 (ops.quantize_e4m3): its largest magnitude, at least 1e-4,
// maps to 448; the row is stored as float_to_e4m3(x / scale).
LCATTN_HD float e4m3_scale(float amax) { return (amax != amax ? amax : (amax > 1e-4f ? amax : 1e-4f)) / kE4m3Max; }

// The fp8 form of a compressed attention entry of D channels, the last rope_dim of them RoPE (the bytes
// of an entry of FlashMLA's fp8 cache for V4, kept together): the first D - rope_dim (even) "nope"
// channels as e4m3 in tiles of 64, each tile divided by a power of two stored as its UE8M0 byte
// (scale 2^(byte - 127)); the RoPE channels as bf16. An entry is
//   [nope e4m3 | RoPE bf16 | one scale byte per tile | zeros to a multiple of 8 bytes],
// 448 + 128 + 7 + 1 = 584 bytes for V4's D = 512 and 64 RoPE channels (1024 in bf16).
struct KvFp8Layout {
  static constexpr int kTile = 64;
  int D, rope_dim;
  LCATTN_HD int nope() const { return D - rope_dim; }
  LCATTN_HD int tiles() const { return (nope() + kTile - 1) / kTile; }
  LCATTN_HD int rope_offset() const { return nope(); }
  LCATTN_HD int scale_offset() const { return nope() + 2 * rope_dim; }
  LCATTN_HD int bytes() const { return (scale_offset() + tiles() + 7) / 8 * 8; }
};

// The UE8M0 byte of a tile whose largest magnitude is amax: the smallest power of two at least
// max(amax / 448, 1e-4), so the tile divided by it fits e4m3 (FlashMLA's rule). A tile holding NaN
// or infinity gets 255, UE8M0's NaN, and is stored as NaN.
LCATTN_HD uint8_t kv_fp8_scale_byte(float amax) {
  if (!(amax <= 3.4028235e38f)) return 255;  // NaN or +inf
  float v = amax / kE4m3Max;
  v = v > 1e-4f ? v : 1e-4f;  // a normal float from here on
  uint32_t bits;
  memcpy(&bits, &v, 4);
  return static_cast<uint8_t>((bits >> 23) + ((bits & 0x7fffffu) != 0u));  // exponent rounded up, + 127
}

// The scale of a UE8M0 byte, 2^(byte - 127) (NaN for 255): a tile's value is e4m3 value * scale.
// Built from its bits (the byte is a float's exponent field): a few instructions in the kernels
// that widen entries, where ldexpf took a dozen.
LCATTN_HD float kv_fp8_scale(uint8_t byte) {
  if (byte == 255) return NAN;
  const uint32_t bits = byte == 0 ? 0x00400000u : uint32_t(byte) << 23;  // 2^-127 is subnormal
  float v;
  memcpy(&v, &bits, 4);
  return v;
}

// 1 / scale of a UE8M0 byte (NaN for 255): the tile is stored as float_to_e4m3(x * kv_fp8_inverse_scale(byte)).
LCATTN_HD float kv_fp8_inverse_scale(uint8_t byte) { return byte == 255 ? NAN : ldexpf(1.f, 127 - int(byte)); }

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

// Whether ptr starts on a 16-byte boundary (where 16-byte vector loads and stores may go).
LCATTN_HD bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

}  // namespace lcattn
