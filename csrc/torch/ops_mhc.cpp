// Adapters of the mHC ops (SPEC 7): the Sinkhorn-normalised mixing matrices and the new residual
// streams of a site.
#include <algorithm>
#include <vector>

#include "checks.h"

namespace lcattn {
namespace {

at::Tensor hc_sinkhorn(const at::Tensor& logits, int64_t iters, double eps) {
  constexpr const char* op = "hc_sinkhorn";
  LCATTN_CHECK(logits.dim() >= 2 && logits.size(-1) == logits.size(-2), op, "logits must be [..., n, n], got shape ",
               logits.sizes());
  const int64_t n = logits.size(-1);
  LCATTN_CHECK(n >= 1 && n <= kHcMaxStreams, op, "n must lie in [1, ", kHcMaxStreams, "], got ", n);
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

// Per token, weighted sums of the streams [..., n, D] (bf16 or fp32), in the streams' type
// (HcMixParams): hc_post, with out [..., D] (the streams' type), post [..., n] and comb [..., n, n]
// fp32 -> [..., n, D]; the collapse (out and post null), with pre [..., n] fp32 as comb -> [..., D].
at::Tensor hc_mix(const char* op, const at::Tensor& streams, const at::Tensor* out, const at::Tensor* post,
                  const at::Tensor& comb) {
  const bool collapse = !post;
  LCATTN_CHECK(streams.dim() >= 2, op, "streams must be [..., n, D], got shape ", streams.sizes());
  LCATTN_CHECK(streams.scalar_type() == at::kBFloat16 || streams.scalar_type() == at::kFloat, op,
               "streams must be BFloat16 or Float, got ", c10::toString(streams.scalar_type()));
  const int64_t n = streams.size(-2), D = streams.size(-1), m = collapse ? 1 : n;
  LCATTN_CHECK(n >= 1 && n <= kHcMaxStreams, op, "n must lie in [1, ", kHcMaxStreams, "], got ", n);
  check_int_size(op, "D", D);
  const at::IntArrayRef lead = streams.sizes().slice(0, streams.dim() - 2);
  auto expect = [&](const char* name, const at::Tensor& t, at::ScalarType dtype, std::vector<int64_t> tail) {
    std::vector<int64_t> shape(lead.begin(), lead.end());
    shape.insert(shape.end(), tail.begin(), tail.end());
    check_dtype_device(op, name, t, dtype, streams);
    LCATTN_CHECK(t.sizes() == at::IntArrayRef(shape), op, name, " must have shape ", at::IntArrayRef(shape), ", got ",
                 t.sizes());
    LCATTN_CHECK(t.is_contiguous(), op, name, " must be contiguous, got strides ", t.strides());
  };
  expect("streams", streams, streams.scalar_type(), {n, D});
  if (out) expect("out", *out, streams.scalar_type(), {D});
  if (post) expect("post", *post, at::kFloat, {m});
  if (collapse)
    expect("pre", comb, at::kFloat, {n});
  else
    expect("comb", comb, at::kFloat, {n, m});
  std::vector<int64_t> shape(lead.begin(), lead.end());
  if (!collapse) shape.push_back(m);
  shape.push_back(D);
  at::Tensor y = at::empty(shape, streams.options());
  HcMixParams p{};
  p.streams = streams.data_ptr();
  p.out = out ? out->data_ptr() : nullptr;
  p.post = post ? ptr<const float>(*post) : nullptr;
  p.comb = ptr<const float>(comb);
  p.y = y.data_ptr();
  p.T = streams.numel() / std::max<int64_t>(n * D, 1);
  p.n = int(n);
  p.D = int(D);
  p.bf16_streams = streams.scalar_type() == at::kBFloat16;
  LCATTN_RUN(op, streams, hc_mix, p);
  return y;
}

at::Tensor hc_post(const at::Tensor& streams, const at::Tensor& out, const at::Tensor& post, const at::Tensor& comb) {
  return hc_mix("hc_post", streams, &out, &post, comb);
}

at::Tensor hc_collapse(const at::Tensor& streams, const at::Tensor& pre) {
  return hc_mix("hc_collapse", streams, nullptr, nullptr, pre);
}

void register_ops(torch::Library& m) {
  m.impl("hc_sinkhorn", &hc_sinkhorn);
  m.impl("hc_post", &hc_post);
  m.impl("hc_collapse", &hc_collapse);
}

}  // namespace

LCATTN_REGISTER(register_ops)

}  // namespace lcattn
