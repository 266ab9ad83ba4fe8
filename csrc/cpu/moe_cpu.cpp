// MoE on the CPU (SPEC 6): grouped GEMM in both layouts, routing, permute and unpermute.
#include <algorithm>
#include <cmath>
#include <vector>

#include "lcattn/api.h"
#include "lcattn/moe_experts_plan.h"
#include "lcattn/shared_math.h"
#include "parallel.h"

namespace lcattn {

namespace {

float dot(const bf16* x, const bf16* w, int K) {
  float acc = 0.f;
  for (int k = 0; k < K; ++k) acc += bf16_to_float(x[k]) * bf16_to_float(w[k]);
  return acc;
}

// y[r] = x[r] w^T (gated: swiglu of the interleaved gate and up products) for rows [0, rows) of one
// expert; fp32 accumulate.
void gemm_rows(const GroupedGemmParams& p, const bf16* x, const bf16* w, bf16* y, int rows) {
  const int cols = p.out_cols(), K = p.K;
  parallel_for(int64_t(rows) * cols, [&](int64_t n) {
    const int64_t r = n / cols, col = n % cols;
    const bf16* xr = x + r * K;
    const float v = p.gated ? swiglu(dot(xr, w + int64_t(gate_up_row(int(col), false)) * K, K),
                                     dot(xr, w + int64_t(gate_up_row(int(col), true)) * K, K), p.swiglu_limit)
                            : dot(xr, w + col * K, K);
    y[r * cols + col] = float_to_bf16(v);
  });
}

}  // namespace

void grouped_gemm_contiguous_cpu(const GroupedGemmParams& p) {
  for (int e = 0; e < p.E; ++e) {
    int64_t r0;
    int rows;
    p.expert_rows(e, r0, rows);
    gemm_rows(p, p.x + r0 * p.K, p.w + int64_t(e) * p.N * p.K, p.y + r0 * p.out_cols(), rows);
  }
}

void grouped_gemm_masked_cpu(const GroupedGemmParams& p) {
  const int64_t cols = p.out_cols();
  for (int e = 0; e < p.E; ++e) {
    int64_t begin;
    int rows;
    p.expert_rows(e, begin, rows);
    bf16* y = p.y + begin * cols;
    gemm_rows(p, p.x + begin * p.K, p.w + int64_t(e) * p.N * p.K, y, rows);
    std::fill(y + rows * cols, y + p.M * cols, bf16(0));
  }
}

void moe_route_cpu(const RouteParams& p) {
  parallel_for(p.T, [&](int64_t t) { route_token(p, t); });
}

void moe_permute_cpu(const PermuteParams& p) {
  const int64_t slots = int64_t(p.T) * p.k;
  std::vector<int> fill(p.E + 1, 0);
  for (int64_t n = 0; n < slots; ++n)
    if (p.routed(n)) ++fill[p.indices[n] + 1];
  for (int e = 0; e < p.E; ++e) fill[e + 1] += fill[e];
  std::copy(fill.begin(), fill.end(), p.offsets);
  for (int64_t n = 0; n < slots; ++n) p.rows[n] = p.routed(n) ? fill[p.indices[n]]++ : -1;
  parallel_for(slots, [&](int64_t n) {
    if (p.rows[n] >= 0) std::copy_n(p.x + (n / p.k) * p.D, p.D, p.x_perm + int64_t(p.rows[n]) * p.D);
  });
}

void moe_unpermute_cpu(const UnpermuteParams& p) {
  parallel_for(p.T, [&](int64_t t) {
    for (int d = 0; d < p.D; ++d) {
      float acc = 0.f;
      for (int j = 0; j < p.k; ++j) {
        const int row = p.rows[t * p.k + j];
        if (row < 0 || row >= p.R) continue;
        const float wt = p.weights ? p.weights[t * p.k + j] : 1.f;
        acc += wt * bf16_to_float(p.y[int64_t(row) * p.D + d]);
      }
      p.out[t * p.D + d] = float_to_bf16(acc);
    }
  });
}

void swiglu_cpu(const SwigluParams& p) {
  parallel_for(p.R, [&](int64_t r) {
    const bf16* g = p.gate_up + r * 2 * p.I;
    for (int i = 0; i < p.I; ++i)
      p.h[r * p.I + i] = float_to_bf16(
          swiglu(bf16_to_float(g[gate_up_row(i, false)]), bf16_to_float(g[gate_up_row(i, true)]), p.swiglu_limit));
  });
}

size_t moe_experts_workspace_bytes(const MoeExpertsParams& p, bool cuda) {
  const MoeExpertsPlan plan(p, nullptr);
  size_t gemm = 0;
#if defined(LCATTN_WITH_CUDA)
  if (cuda)
    gemm =
        std::max(grouped_gemm_workspace_bytes(plan.gate_up_gemm(p)), grouped_gemm_workspace_bytes(plan.down_gemm(p)));
#else
  (void)cuda;
#endif
  return plan.bytes + gemm;
}

void moe_experts_cpu(const MoeExpertsParams& p) {
  const MoeExpertsPlan plan(p, p.workspace);
  moe_permute_cpu(plan.permute(p));
  grouped_gemm_contiguous_cpu(plan.gate_up_gemm(p));
  if (!p.fused_swiglu) swiglu_cpu(plan.swiglu(p));
  grouped_gemm_contiguous_cpu(plan.down_gemm(p));
  moe_unpermute_cpu(plan.unpermute(p));
}

}  // namespace lcattn
