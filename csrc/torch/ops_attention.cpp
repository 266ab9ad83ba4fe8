// Adapters of sparse_attn and dense_attn (SPEC 5).
#include <cmath>
#include <optional>
#include <vector>

#include "checks.h"

namespace lcattn {
namespace {

// Entries in the kv_fp8 form x [..., l.bytes()] uint8 as bf16 [..., D] (ops.dequantize_kv_fp8): each
// e4m3 value times its tile's power of two, both and the product exact in bf16, written in place
// (one bf16 temporary of the values besides the result).
at::Tensor widen_kv_fp8(const at::Tensor& x, const KvFp8Layout& l) {
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = l.D;
  at::Tensor out = at::empty(sizes, x.options().dtype(at::kBFloat16));
  const int64_t nope = l.nope(), tiles = l.tiles(), tile = KvFp8Layout::kTile;
  const at::Tensor values = x.narrow(-1, 0, nope).view(at::kFloat8_e4m3fn).to(at::kBFloat16);
  const at::Tensor scales = x.narrow(-1, l.scale_offset(), tiles).view(at::kFloat8_e8m0fnu).to(at::kBFloat16);
  at::Tensor head = out.narrow(-1, 0, nope);
  if (nope % tile == 0) {  // V4: 7 whole tiles
    at::Tensor tiled = head.unflatten(-1, {tiles, tile});
    at::mul_out(tiled, values.unflatten(-1, {tiles, tile}), scales.unsqueeze(-1));
  } else {
    at::mul_out(head, values, scales.repeat_interleave(tile, -1).narrow(-1, 0, nope));
  }
  // (contiguous first: a view as bf16 needs an even storage offset, which a uint8 view need not have)
  out.narrow(-1, nope, l.rope_dim)
      .copy_(x.narrow(-1, l.rope_offset(), 2 * l.rope_dim).contiguous().view(at::kBFloat16));
  return out;
}

// Sets p.ckv_fp8 to ckv's kv_fp8 entries where the kernel reads them as they are (its shapes, entries
// on a 16-byte boundary); false where the caller widens them instead.
bool read_kv_fp8_directly(AttentionParams& p, const at::Tensor& ckv) {
#if defined(LCATTN_WITH_CUDA)
  if (ckv.is_cuda() && reinterpret_cast<uintptr_t>(ckv.data_ptr()) % 16 == 0 && attention_reads_kv_fp8(p)) {
    p.ckv_fp8 = ptr<const uint8_t>(ckv);
    return true;
  }
#endif
  (void)p;
  (void)ckv;
  return false;
}

// sparse_attn over kv_fp8 entries: the entries its queries read, as bf16, and the indices into them.
// With fewer selections than entries (decode) only the selected rows are widened: [B, S * K, D] with
// selection (s, j) at row s * K + j (an index outside [0, N) stays none); else the whole pool.
std::pair<at::Tensor, at::Tensor> widen_selected(const at::Tensor& ckv, const at::Tensor& indices,
                                                 const KvFp8Layout& l) {
  const int64_t B = ckv.size(0), N = ckv.size(1), S = indices.size(1), K = indices.size(2);
  if (S * K >= N) return {widen_kv_fp8(ckv, l), indices};
  const at::Tensor first = at::arange(B, indices.options().dtype(at::kLong)).mul(N).view({B, 1, 1});
  const at::Tensor rows = indices.clamp(0, N - 1).to(at::kLong).add(first).view(-1);
  const at::Tensor picked = ckv.view({B * N, l.bytes()}).index_select(0, rows).view({B, S * K, l.bytes()});
  const at::Tensor slots = at::arange(S * K, indices.options()).view({1, S, K});
  return {widen_kv_fp8(picked, l), at::where(indices.ge(0).logical_and(indices.lt(N)), slots, -1)};
}

// Checks what both forms share (the value ranges go to `checks`) and allocates (out, lse).
AttentionParams attention_params(const char* op, const at::Tensor& q, const at::Tensor& kv, const at::Tensor& kv_start,
                                 const at::Tensor& q_start, const at::Tensor& ckv, const at::Tensor& sink,
                                 const at::Tensor& inv_freq, std::optional<double> scale, int64_t window,
                                 ValueChecks& checks, at::Tensor& out, at::Tensor& lse) {
  LCATTN_CHECK(q.dim() == 4, op, "q must be [B, S, H, D], got shape ", q.sizes());
  const int64_t B = q.size(0), S = q.size(1), H = q.size(2), D = q.size(3);
  check_tensor(op, "q", q, at::kBFloat16, {B, S, H, D}, q);
  check_tensor(op, "kv", kv, at::kBFloat16, {B, -1, D}, q);
  check_tensor(op, "kv_start", kv_start, at::kInt, {B}, q);
  check_tensor(op, "q_start", q_start, at::kInt, {B}, q);
  check_tensor(op, "sink", sink, at::kFloat, {H}, q);
  check_tensor(op, "inv_freq", inv_freq, at::kFloat, {-1}, q);
  LCATTN_CHECK(D % 2 == 0 && D >= 2 && D <= 1024, op, "head dim must be even and in [2, 1024], got ", D);
  LCATTN_CHECK(2 * inv_freq.size(0) <= D, op, "rope_dim = 2 * len(inv_freq) must be <= head dim ", D, ", got ",
               2 * inv_freq.size(0));
  // bf16 entries, or uint8 ones in the kv_fp8 form (KvFp8Layout), which the caller widens.
  const KvFp8Layout kv_fp8{int(D), int(2 * inv_freq.size(0))};
  LCATTN_CHECK(ckv.scalar_type() == at::kBFloat16 || ckv.scalar_type() == at::kByte, op,
               "ckv must be bfloat16 or uint8 (entries in the kv_fp8 form), got ", c10::toString(ckv.scalar_type()));
  const bool fp8 = ckv.scalar_type() == at::kByte;
  check_tensor(op, "ckv", ckv, ckv.scalar_type(), {B, -1, fp8 ? kv_fp8.bytes() : D}, q);
  check_int_arg(op, "window", window, 1);
  check_int_size(op, "kv dim 1", kv.size(1));
  check_int_size(op, "ckv dim 1", ckv.size(1));
  LCATTN_CHECK(!scale || std::isfinite(*scale), op, "scale must be finite, got ", scale.value_or(0.0));
  LCATTN_CHECK(B * S * H < INT32_MAX, op, "B * S * H must be < 2^31, got ", B * S * H);
  checks.add("q_start", q_start, 0, INT32_MAX - S);
  // Rows before position 0 are never read, so the buffer may start before it.
  checks.add("kv_start", kv_start, -kv.size(1), INT32_MAX - kv.size(1));
  out = at::empty_like(q);
  lse = at::empty({B, S, H}, q.options().dtype(at::kFloat));
  AttentionParams p{};
  p.q = ptr<const bf16>(q);
  p.kv = ptr<const bf16>(kv);
  p.kv_start = ptr<const int>(kv_start);
  p.q_start = ptr<const int>(q_start);
  p.ckv = fp8 ? nullptr : ptr<const bf16>(ckv);
  p.sink = ptr<const float>(sink);
  p.inv_freq = ptr<const float>(inv_freq);
  p.out = ptr<bf16>(out);
  p.lse = ptr<float>(lse);
  p.B = int(B);
  p.S = int(S);
  p.H = int(H);
  p.D = int(D);
  p.L = int(kv.size(1));
  p.N = int(ckv.size(1));
  p.window = int(window);
  p.rope_dim = int(2 * inv_freq.size(0));
  p.scale = float(scale.value_or(std::pow(double(D), -0.5)));
  p.splits = 1;
  return p;
}

// On CUDA: how the keys of each query are split, and the scratch that needs (held by `workspace`).
void plan_splits(AttentionParams& p, const at::Tensor& q, at::Tensor& workspace) {
#if defined(LCATTN_WITH_CUDA)
  if (!q.is_cuda()) return;
  const int sms = device_sm_count(q.get_device());  // read once per device: decode calls this every step
  LCATTN_CHECK(sms > 0, "attention", "cannot read the multiprocessor count of ", q.device());
  const c10::cuda::CUDAGuard guard(q.device());  // attention_cluster_combines asks the current device
  p.splits = attention_splits(p, sms);
  p.cluster_combine = attention_cluster_combines(p, sms);
  p.fused_combine = attention_fuses_combine(p);
  if (const int64_t floats = attention_workspace_floats(p)) {
    workspace = at::empty({floats}, q.options().dtype(at::kFloat));
    p.workspace = workspace.data_ptr<float>();
  }
#endif
}

std::tuple<at::Tensor, at::Tensor> sparse_attn(const at::Tensor& q, const at::Tensor& kv, const at::Tensor& kv_start,
                                               const at::Tensor& q_start, const at::Tensor& ckv,
                                               const at::Tensor& indices, const at::Tensor& sink,
                                               const at::Tensor& inv_freq, std::optional<double> scale,
                                               int64_t window) {
  constexpr const char* op = "sparse_attn";
  at::Tensor out, lse;
  ValueChecks checks(op);
  AttentionParams p =
      attention_params(op, q, kv, kv_start, q_start, ckv, sink, inv_freq, scale, window, checks, out, lse);
  check_tensor(op, "indices", indices, at::kInt, {p.B, p.S, -1}, q);
  checks.add("indices", indices, -1, p.N - 1);
  checks.run();
  at::Tensor entries, selected = indices;  // kv_fp8 widened: the bf16 entries and the indices into them
  if (ckv.scalar_type() == at::kByte && !read_kv_fp8_directly(p, ckv)) {
    std::tie(entries, selected) = widen_selected(ckv, indices, KvFp8Layout{p.D, p.rope_dim});
    p.ckv = ptr<const bf16>(entries);
    p.N = int(entries.size(1));
  }
  p.indices = ptr<const int>(selected);
  p.K = int(indices.size(2));
  at::Tensor workspace;
  plan_splits(p, q, workspace);
  LCATTN_RUN(op, q, attention, p);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> dense_attn(const at::Tensor& q, const at::Tensor& kv, const at::Tensor& kv_start,
                                              const at::Tensor& q_start, const at::Tensor& ckv, const at::Tensor& sink,
                                              const at::Tensor& inv_freq, int64_t ratio, std::optional<double> scale,
                                              int64_t window) {
  constexpr const char* op = "dense_attn";
  at::Tensor out, lse;
  ValueChecks checks(op);
  AttentionParams p =
      attention_params(op, q, kv, kv_start, q_start, ckv, sink, inv_freq, scale, window, checks, out, lse);
  check_int_arg(op, "ratio (0 = window only)", ratio, 0);
  checks.run();
  p.ratio = int(ratio);
  at::Tensor entries;  // kv_fp8 widened: the bf16 entries
  if (ckv.scalar_type() == at::kByte && !read_kv_fp8_directly(p, ckv)) {
    entries = widen_kv_fp8(ckv, KvFp8Layout{p.D, p.rope_dim});
    p.ckv = ptr<const bf16>(entries);
  }
  at::Tensor workspace;
  plan_splits(p, q, workspace);
  LCATTN_RUN(op, q, attention, p);
  return {out, lse};
}

void register_ops(torch::Library& m) {
  m.impl("sparse_attn", &sparse_attn);
  m.impl("dense_attn", &dense_attn);
}

}  // namespace

LCATTN_REGISTER(register_ops)

}  // namespace lcattn
