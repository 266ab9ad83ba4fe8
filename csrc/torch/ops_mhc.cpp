// Adapter of the mHC op (SPEC 7): the Sinkhorn-normalised mixing matrices.
#include "checks.h"

namespace lcattn {
namespace {

at::Tensor hc_sinkhorn(const at::Tensor& logits, int64_t iters, double eps) {
  constexpr const char* op = "hc_sinkhorn";
  LCATTN_CHECK(logits.dim() >= 2 && logits.size(-1) == logits.size(-2), op, "logits must be [..., n, n], got shape ",
               logits.sizes());
  const int64_t n = logits.size(-1);
  LCATTN_CHECK(n >= 1 && n <= kSinkhornMaxN, op, "n must lie in [1, ", kSinkhornMaxN, "], got ", n);
  check_int_arg(op, "iters", iters, 1, 65536);
  check_float_arg(op, "eps", eps, 0.0);
  check_dtype_device(op, "logits", logits, at::kFloat, logits);
  LCATTN_CHECK(logits.is_contiguous(), op, "logits must be contiguous, got strides ", logits.strides());
  at::Tensor out = at::empty_like(logits);
  SinkhornParams p{};
  p.logits = ptr<const float>(logits);
  p.out = ptr<float>(out);
  p.M = logits.numel() / (n * n);
  p.n = int(n);
  p.iters = int(iters);
  p.eps = float(eps);
  LCATTN_RUN(op, logits, hc_sinkhorn, p);
  return out;
}

void register_ops(torch::Library& m) { m.impl("hc_sinkhorn", &hc_sinkhorn); }

}  // namespace

LCATTN_REGISTER(register_ops)

}  // namespace lcattn
