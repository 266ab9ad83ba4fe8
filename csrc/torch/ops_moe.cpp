// Adapters of the MoE ops (SPEC 6): grouped GEMM in both layouts, routing, permute, unpermute.
#include <cstdlib>
#include <string>

#include "checks.h"

namespace lcattn {
namespace {

// offsets[0] == 0, nondecreasing, offsets[E] == M. On CUDA this reads the offsets back (one
// sync); skipped when value_checks_on is false: the kernels clamp rows to [0, M) anyway.
void check_offsets(const char* op, const at::Tensor& offsets, int64_t M) {
  if (!value_checks_on(offsets)) return;
  const at::Tensor o = offsets.cpu();
  const int* v = o.data_ptr<int>();
  const int64_t E = o.numel() - 1;
  LCATTN_CHECK(v[0] == 0 && v[E] == M, op, "offsets must start at 0 and end at M = ", M, ", got ", v[0], " and ", v[E]);
  for (int64_t e = 0; e < E; ++e)
    LCATTN_CHECK(v[e] <= v[e + 1], op, "offsets must be nondecreasing, got offsets[", e, "] = ", v[e], " > offsets[",
                 e + 1, "] = ", v[e + 1]);
}

// The Hopper GEMM moves 16-byte rows (TMA): its dims (N and K of the grouped GEMMs, D and I of
// moe_experts) multiples of 8 on every device, so CPU and CUDA accept the same shapes.
void check_gemm_dims(const char* op, const char* a, int64_t A, const char* b, int64_t B) {
  LCATTN_CHECK(A % 8 == 0 && B % 8 == 0, op, a, " and ", b, " must be multiples of 8, got ", a, " = ", A, ", ", b,
               " = ", B);
}

void check_aligned(const char* op, const char* name, const at::Tensor& t) {
  LCATTN_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, op, name,
               " must start at a 16-byte aligned address (a tensor of its own, not an offset view)");
}

#if defined(LCATTN_WITH_CUDA)
// LCATTN_GROUPED_GEMM_TILE (a tuning override the kernel library reads) must name a tile: a typo
// would silently run the heuristic's.
void check_tile_override(const char* op) {
  const char* tile = std::getenv("LCATTN_GROUPED_GEMM_TILE");
  if (!tile) return;
  const std::string name(tile);
  LCATTN_CHECK(name == "n32" || name == "n64" || name == "n128" || name == "n256", op,
               "LCATTN_GROUPED_GEMM_TILE must be n32, n64, n128 or n256, got '", name, "'");
}
#endif

// The GEMM's per-expert problems (CUDA) live in a workspace owned by the caller's allocator.
void run_grouped_gemm(const char* op, const at::Tensor& x, GroupedGemmParams& p, bool masked) {
  at::Tensor workspace;
#if defined(LCATTN_WITH_CUDA)
  if (x.is_cuda()) {
    check_tile_override(op);
    const c10::cuda::CUDAGuard guard(x.device());
    workspace = at::empty({int64_t(grouped_gemm_workspace_bytes(p))}, x.options().dtype(at::kByte));
    p.workspace = workspace.data_ptr();
  }
#endif
  if (masked)
    LCATTN_RUN(op, x, grouped_gemm_masked, p);
  else
    LCATTN_RUN(op, x, grouped_gemm_contiguous, p);
}

GroupedGemmParams gemm_params(const at::Tensor& x, const at::Tensor& w, const at::Tensor& y, int64_t E, int64_t M) {
  GroupedGemmParams p{};
  p.x = ptr<const bf16>(x);
  p.w = ptr<const bf16>(w);
  p.y = ptr<bf16>(y);
  p.E = int(E);
  p.M = int(M);
  p.N = int(w.size(1));
  p.K = int(w.size(2));
  return p;
}

at::Tensor grouped_gemm_contiguous(const at::Tensor& x, const at::Tensor& w, const at::Tensor& offsets) {
  constexpr const char* op = "grouped_gemm_contiguous";
  LCATTN_CHECK(x.dim() == 2, op, "x must be [M, K], got shape ", x.sizes());
  LCATTN_CHECK(w.dim() == 3, op, "w must be [E, N, K], got shape ", w.sizes());
  const int64_t M = x.size(0), K = x.size(1), E = w.size(0), N = w.size(1);
  check_int_arg(op, "E (w dim 0)", E, 0, INT32_MAX - 1);  // E + 1 offsets, counted in an int
  check_tensor(op, "x", x, at::kBFloat16, {M, K}, x);
  check_tensor(op, "w", w, at::kBFloat16, {E, N, K}, x);
  check_tensor(op, "offsets", offsets, at::kInt, {E + 1}, x);
  check_gemm_dims(op, "N", N, "K", K);
  check_aligned(op, "x", x);
  check_aligned(op, "w", w);
  check_offsets(op, offsets, M);
  at::Tensor y = at::empty({M, N}, x.options());
  GroupedGemmParams p = gemm_params(x, w, y, E, M);
  p.offsets = ptr<const int>(offsets);
  run_grouped_gemm(op, x, p, false);
  return y;
}

at::Tensor grouped_gemm_masked(const at::Tensor& x, const at::Tensor& w, const at::Tensor& counts,
                               int64_t expected_rows) {
  constexpr const char* op = "grouped_gemm_masked";
  LCATTN_CHECK(x.dim() == 3, op, "x must be [E, M, K], got shape ", x.sizes());
  LCATTN_CHECK(w.dim() == 3, op, "w must be [E, N, K], got shape ", w.sizes());
  const int64_t E = x.size(0), M = x.size(1), K = x.size(2), N = w.size(1);
  check_int_arg(op, "E (x dim 0)", E, 0, INT32_MAX - 1);
  check_tensor(op, "x", x, at::kBFloat16, {E, M, K}, x);
  check_tensor(op, "w", w, at::kBFloat16, {E, N, K}, x);
  check_tensor(op, "counts", counts, at::kInt, {E}, x);
  check_gemm_dims(op, "N", N, "K", K);
  check_aligned(op, "x", x);
  check_aligned(op, "w", w);
  check_values(op, "counts", counts, 0, M);
  check_int_arg(op, "expected_rows", expected_rows, 0, E * M);
  at::Tensor y = at::empty({E, M, N}, x.options());
  GroupedGemmParams p = gemm_params(x, w, y, E, M);
  p.expected_rows = expected_rows;
  p.counts = ptr<const int>(counts);
  run_grouped_gemm(op, x, p, true);
  return y;
}

std::tuple<at::Tensor, at::Tensor> moe_route(const at::Tensor& logits, int64_t k, double route_scale,
                                             const std::optional<at::Tensor>& bias,
                                             const std::optional<at::Tensor>& tid2eid,
                                             const std::optional<at::Tensor>& token_ids) {
  constexpr const char* op = "moe_route";
  LCATTN_CHECK(logits.dim() == 2, op, "logits must be [T, E], got shape ", logits.sizes());
  const int64_t T = logits.size(0), E = logits.size(1);
  check_tensor(op, "logits", logits, at::kFloat, {T, E}, logits);
  LCATTN_CHECK(k >= 1 && k <= E, op, "k must lie in [1, E = ", E, "], got ", k);
  check_int_size(op, "T * k", T * k);
  check_float_arg(op, "route_scale", route_scale, 0.0);
  if (bias) check_tensor(op, "bias", *bias, at::kFloat, {E}, logits);
  LCATTN_CHECK(tid2eid.has_value() == token_ids.has_value(), op, "tid2eid and token_ids go together");
  LCATTN_CHECK(!(tid2eid && bias), op, "hash routing (tid2eid) takes no bias");
  int64_t V = 0;
  if (tid2eid) {
    V = tid2eid->size(0);
    check_tensor(op, "tid2eid", *tid2eid, at::kInt, {V, k}, logits);
    check_tensor(op, "token_ids", *token_ids, at::kLong, {T}, logits);
    ValueChecks checks(op);
    checks.add("tid2eid", *tid2eid, 0, E - 1);
    checks.add("token_ids", *token_ids, 0, V - 1);
    checks.run();
  }
  at::Tensor weights = at::empty({T, k}, logits.options());
  at::Tensor indices = at::empty({T, k}, logits.options().dtype(at::kInt));
  RouteParams p{};
  p.logits = ptr<const float>(logits);
  p.bias = optional_ptr(bias);
  p.tid2eid = tid2eid ? ptr<const int>(*tid2eid) : nullptr;
  p.token_ids = token_ids ? ptr<const int64_t>(*token_ids) : nullptr;
  p.weights = ptr<float>(weights);
  p.indices = ptr<int>(indices);
  p.T = int(T);
  p.E = int(E);
  p.k = int(k);
  p.V = int(V);
  p.route_scale = float(route_scale);
  LCATTN_RUN(op, logits, moe_route, p);
  return {weights, indices};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> moe_permute(const at::Tensor& x, const at::Tensor& indices,
                                                           int64_t num_experts) {
  constexpr const char* op = "moe_permute";
  LCATTN_CHECK(x.dim() == 2, op, "x must be [T, D], got shape ", x.sizes());
  check_int_arg(op, "num_experts", num_experts, 1, 65536);
  const int64_t T = x.size(0), D = x.size(1);
  check_tensor(op, "x", x, at::kBFloat16, {T, D}, x);
  check_tensor(op, "indices", indices, at::kInt, {T, -1}, x);
  check_values(op, "indices", indices, 0, num_experts - 1);
  const int64_t k = indices.size(1);
  check_int_size(op, "T * k", T * k);
  at::Tensor x_perm = at::empty({T * k, D}, x.options());
  at::Tensor offsets = at::empty({num_experts + 1}, x.options().dtype(at::kInt));
  at::Tensor rows = at::empty({T, k}, x.options().dtype(at::kInt));
  at::Tensor counts = at::empty({num_experts}, x.options().dtype(at::kInt));
  PermuteParams p{};
  p.x = ptr<const bf16>(x);
  p.indices = ptr<const int>(indices);
  p.x_perm = ptr<bf16>(x_perm);
  p.offsets = ptr<int>(offsets);
  p.rows = ptr<int>(rows);
  p.counts = ptr<int>(counts);
  p.T = int(T);
  p.k = int(k);
  p.E = int(num_experts);
  p.D = int(D);
  LCATTN_RUN(op, x, moe_permute, p);
  return {x_perm, offsets, rows};
}

at::Tensor moe_unpermute(const at::Tensor& y, const at::Tensor& rows, const std::optional<at::Tensor>& weights) {
  constexpr const char* op = "moe_unpermute";
  LCATTN_CHECK(y.dim() == 2, op, "y must be [R, D], got shape ", y.sizes());
  LCATTN_CHECK(rows.dim() == 2, op, "rows must be [T, k], got shape ", rows.sizes());
  const int64_t R = y.size(0), D = y.size(1), T = rows.size(0), k = rows.size(1);
  check_tensor(op, "y", y, at::kBFloat16, {R, D}, y);
  check_tensor(op, "rows", rows, at::kInt, {T, k}, y);
  if (weights) check_tensor(op, "weights", *weights, at::kFloat, {T, k}, y);
  check_int_size(op, "y dim 0", R);
  check_int_size(op, "T * k", T * k);
  check_values(op, "rows", rows, 0, R - 1);
  at::Tensor out = at::empty({T, D}, y.options());
  UnpermuteParams p{};
  p.y = ptr<const bf16>(y);
  p.rows = ptr<const int>(rows);
  p.weights = optional_ptr(weights);
  p.out = ptr<bf16>(out);
  p.T = int(T);
  p.k = int(k);
  p.D = int(D);
  p.R = int(R);
  LCATTN_RUN(op, y, moe_unpermute, p);
  return out;
}

at::Tensor moe_experts(const at::Tensor& x, const std::optional<at::Tensor>& weights, const at::Tensor& indices,
                       const at::Tensor& w_gate_up, const at::Tensor& w_down, double swiglu_limit) {
  constexpr const char* op = "moe_experts";
  LCATTN_CHECK(x.dim() == 2, op, "x must be [T, D], got shape ", x.sizes());
  LCATTN_CHECK(indices.dim() == 2, op, "indices must be [T, k], got shape ", indices.sizes());
  LCATTN_CHECK(w_gate_up.dim() == 3, op, "w_gate_up must be [E, 2I, D], got shape ", w_gate_up.sizes());
  const int64_t T = x.size(0), D = x.size(1), k = indices.size(1), E = w_gate_up.size(0);
  const int64_t I = w_gate_up.size(1) / 2;
  check_int_arg(op, "E (w_gate_up dim 0)", E, 0, INT32_MAX - 1);
  check_tensor(op, "x", x, at::kBFloat16, {T, D}, x);
  check_tensor(op, "indices", indices, at::kInt, {T, k}, x);
  if (weights) check_tensor(op, "weights", *weights, at::kFloat, {T, k}, x);
  LCATTN_CHECK(w_gate_up.size(1) % 2 == 0, op, "w_gate_up dim 1 must be even (gate and up rows), got ",
               w_gate_up.size(1));
  check_tensor(op, "w_gate_up", w_gate_up, at::kBFloat16, {E, 2 * I, D}, x);
  check_tensor(op, "w_down", w_down, at::kBFloat16, {E, D, I}, x);
  check_gemm_dims(op, "D", D, "I", I);
  check_aligned(op, "w_gate_up", w_gate_up);
  check_aligned(op, "w_down", w_down);
  check_int_size(op, "T * k", T * k);
  check_float_arg(op, "swiglu_limit", swiglu_limit, 0.0);
  check_values(op, "indices", indices, 0, E - 1);
  at::Tensor out = at::empty({T, D}, x.options());
  MoeExpertsParams p{};
  p.x = ptr<const bf16>(x);
  p.weights = optional_ptr(weights);
  p.indices = ptr<const int>(indices);
  p.w_gate_up = ptr<const bf16>(w_gate_up);
  p.w_down = ptr<const bf16>(w_down);
  p.out = ptr<bf16>(out);
  p.T = int(T);
  p.k = int(k);
  p.E = int(E);
  p.D = int(D);
  p.I = int(I);
  p.swiglu_limit = float(swiglu_limit);
  p.fused_swiglu = env_is("LCATTN_MOE_FUSED_SWIGLU", "1");
  at::Tensor workspace;
  {
#if defined(LCATTN_WITH_CUDA)
    std::optional<c10::cuda::CUDAGuard> guard;
    if (x.is_cuda()) {
      guard.emplace(x.device());
      check_tile_override(op);
    }
#endif
    workspace = at::empty({int64_t(moe_experts_workspace_bytes(p, x.is_cuda()))}, x.options().dtype(at::kByte));
  }
  p.workspace = workspace.data_ptr();
  LCATTN_RUN(op, x, moe_experts, p);
  return out;
}

void register_ops(torch::Library& m) {
  m.impl("grouped_gemm_contiguous", &grouped_gemm_contiguous);
  m.impl("grouped_gemm_masked", &grouped_gemm_masked);
  m.impl("moe_route", &moe_route);
  m.impl("moe_permute", &moe_permute);
  m.impl("moe_unpermute", &moe_unpermute);
  m.impl("moe_experts", &moe_experts);
}

}  // namespace

LCATTN_REGISTER(register_ops)

}  // namespace lcattn
