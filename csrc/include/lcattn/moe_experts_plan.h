// Where moe_experts keeps its intermediates in p.workspace: one layout for the CPU and CUDA paths.
#pragma once
#include <cstddef>

#include "lcattn/params.h"
#include "lcattn/workspace.h"

namespace lcattn {

struct MoeExpertsPlan {
  bf16* x_perm;   // [T * k, D] token rows in expert order; reused for the down projection's output
  bf16* gate_up;  // [T * k, 2I] gate+up projection (gate_up_row order); null with p.fused_swiglu
  bf16* h;        // [T * k, I] SwiGLU of the gate+up projection
  int* offsets;   // [E + 1]
  int* rows;      // [T, k] row of x_perm holding slot (t, j)
  int* counts;    // [E] rows per expert
  void* gemm;     // grouped GEMM workspace (CUDA)
  size_t bytes;   // up to and excluding the GEMM workspace

  // With workspace null, only `bytes` is meaningful.
  MoeExpertsPlan(const MoeExpertsParams& p, void* workspace) {
    const size_t R = size_t(p.T) * p.k;
    WorkspaceCarver carve(workspace);
    x_perm = carve.take<bf16>(R * p.D);
    gate_up = p.fused_swiglu ? nullptr : carve.take<bf16>(R * 2 * p.I);
    h = carve.take<bf16>(R * p.I);
    offsets = carve.take<int>(p.E + 1);
    rows = carve.take<int>(R);
    counts = carve.take<int>(p.E);
    gemm = carve.take<char>(0);
    bytes = carve.bytes();
  }

  PermuteParams permute(const MoeExpertsParams& p) const {
    return PermuteParams{p.x, p.indices, x_perm, offsets, rows, counts, p.T, p.k, p.E, p.D};
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
