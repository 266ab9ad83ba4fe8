// Where moe_experts keeps its intermediates in p.workspace: one layout for the CPU and CUDA paths.
#pragma once
#include <cstddef>

#include "lcattn/params.h"

namespace lcattn {

struct MoeExpertsPlan {
  bf16* x_perm;   // [T * k, D] token rows in expert order; reused for the down projection's output
  bf16* gate_up;  // [T * k, 2I] gate+up projection (gate_up_row order); null with p.fused_swiglu
  bf16* h;        // [T * k, I] SwiGLU of the gate+up projection
  int* offsets;   // [E + 1]
  int* rows;      // [T, k] row of x_perm holding slot (t, j)
  int* scratch;   // [E]
  void* gemm;     // grouped GEMM workspace (CUDA)
  size_t bytes;   // up to and excluding the GEMM workspace

  // With workspace null, only `bytes` is meaningful.
  MoeExpertsPlan(const MoeExpertsParams& p, void* workspace) {
    const size_t R = size_t(p.T) * p.k;
    char* base = static_cast<char*>(workspace);
    size_t at = 0;
    auto take = [&](size_t n) {
      char* here = base ? base + at : nullptr;
      at += (n + 255) / 256 * 256;
      return here;
    };
    x_perm = reinterpret_cast<bf16*>(take(R * p.D * sizeof(bf16)));
    gate_up = p.fused_swiglu ? nullptr : reinterpret_cast<bf16*>(take(R * 2 * p.I * sizeof(bf16)));
    h = reinterpret_cast<bf16*>(take(R * p.I * sizeof(bf16)));
    offsets = reinterpret_cast<int*>(take((p.E + 1) * sizeof(int)));
    rows = reinterpret_cast<int*>(take(R * sizeof(int)));
    scratch = reinterpret_cast<int*>(take(p.E * sizeof(int)));
    gemm = take(0);
    bytes = at;
  }

  PermuteParams permute(const MoeExpertsParams& p) const {
    return PermuteParams{p.x, p.indices, x_perm, offsets, rows, scratch, p.T, p.k, p.E, p.D};
  }
  GroupedGemmParams gate_up_gemm(const MoeExpertsParams& p) const {
    return GroupedGemmParams{x_perm,         p.w_gate_up,   offsets,   nullptr, p.fused_swiglu ? h : gate_up,
                             gemm,           p.E,           p.T * p.k, 2 * p.I, p.D,
                             p.fused_swiglu, p.swiglu_limit};
  }
  SwigluParams swiglu(const MoeExpertsParams& p) const {
    return SwigluParams{gate_up, h, int64_t(p.T) * p.k, p.I, p.swiglu_limit};
  }
  GroupedGemmParams down_gemm(const MoeExpertsParams& p) const {
    return GroupedGemmParams{h, p.w_down, offsets, nullptr, x_perm, gemm, p.E, p.T * p.k, p.D, p.I};
  }
  UnpermuteParams unpermute(const MoeExpertsParams& p) const {
    return UnpermuteParams{x_perm, rows, p.weights, p.out, p.T, p.k, p.D, p.T * p.k};
  }
};

}  // namespace lcattn
