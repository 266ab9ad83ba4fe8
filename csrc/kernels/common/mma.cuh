// Tensor-core helpers: mma.sync m16n8k16 with bf16 inputs and fp32 accumulators (sm_80+).
// Fragment layout (lane = 4 * g + t): A rows g and g + 8, columns 2t, 2t + 1 (+ 8);
// B (k x n, stored n-major) column g, rows 2t, 2t + 1 (+ 8); C rows g (c[0], c[1]) and g + 8
// (c[2], c[3]), columns 2t, 2t + 1.
#pragma once
#include <cstdint>

namespace lcattn {

__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                               uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t load_pair(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

}  // namespace lcattn
