// Adapter of compress_kv (SPEC 3).
#include <optional>
#include <utility>

#include "checks.h"

namespace lcattn {
namespace {

constexpr const char* op = "compress_kv";

void compress_kv(const at::Tensor& kv, const at::Tensor& score, const at::Tensor& seq_lens, const at::Tensor& start_pos,
                 const at::Tensor& ring_kv, const at::Tensor& ring_score, const at::Tensor& ape,
                 const at::Tensor& norm_weight, const at::Tensor& inv_freq, const at::Tensor& out, int64_t ratio,
                 bool overlap, double eps, const std::optional<at::Tensor>& out_scales) {
  LCATTN_CHECK(kv.dim() == 3, op, "kv must be [B, S, width], got shape ", kv.sizes());
  check_int_arg(op, "ratio", ratio, 1, INT32_MAX / 2);
  check_float_arg(op, "eps", eps, 0.0);
  const int64_t B = kv.size(0), S = kv.size(1), width = kv.size(2), coff = overlap ? 2 : 1;
  LCATTN_CHECK(width % coff == 0, op, "kv width must be even when overlap, got ", width);
  // The CUDA kernels' limits, kept on every device so that both accept the same inputs: a CTA row
  // per sequence (grid.y) and an entry's c floats in 48 KB of shared memory.
  check_int_arg(op, "B", B, 0, 65535);
  check_int_arg(op, "the entry width c", width / coff, 0, 12288);
  check_int_size(op, "S", S);
  const int64_t c = width / coff, ring = coff * ratio;
  check_tensor(op, "kv", kv, at::kFloat, {B, S, width}, kv);
  check_tensor(op, "score", score, at::kFloat, {B, S, width}, kv);
  check_tensor(op, "seq_lens", seq_lens, at::kInt, {B}, kv);
  check_tensor(op, "start_pos", start_pos, at::kInt, {B}, kv);
  check_tensor(op, "ring_kv", ring_kv, at::kFloat, {B, ring, width}, kv);
  check_tensor(op, "ring_score", ring_score, at::kFloat, {B, ring, width}, kv);
  check_tensor(op, "ape", ape, at::kFloat, {ratio, width}, kv);
  check_tensor(op, "norm_weight", norm_weight, at::kFloat, {c}, kv);
  LCATTN_CHECK(inv_freq.dim() == 1 && 2 * inv_freq.size(0) <= c, op,
               "inv_freq must be [rope_dim / 2] with rope_dim <= ", c, ", got shape ", inv_freq.sizes());
  check_tensor(op, "inv_freq", inv_freq, at::kFloat, {-1}, kv);
  const at::ScalarType type = out.scalar_type();
  LCATTN_CHECK(type == at::kFloat || type == at::kBFloat16 || type == at::kFloat8_e4m3fn || type == at::kByte, op,
               "out must be float32, bfloat16, float8_e4m3fn or uint8 (entries in the kv_fp8 form), got ",
               c10::toString(type));
  const KvFp8Layout kv_fp8{int(c), int(2 * inv_freq.size(0))};
  check_tensor(op, "out", out, type, {B, -1, type == at::kByte ? kv_fp8.bytes() : c}, kv);
  if (type == at::kByte) {  // the RoPE channels are stored as bf16 right after the e4m3 ones
    LCATTN_CHECK(c % 2 == 0, op, "kv_fp8 entries need an even width, got ", c);
    check_aligned_16(op, "out", out);
  }
  const bool e4m3 = type == at::kFloat8_e4m3fn;
  LCATTN_CHECK(e4m3 == out_scales.has_value(), op, "out_scales [B, N] go with an e4m3 out, and only with one");
  if (e4m3) check_tensor(op, "out_scales", *out_scales, at::kFloat, {B, out.size(1)}, kv);
  const std::pair<const char*, const at::Tensor*> written[] = {
      {"ring_kv", &ring_kv}, {"ring_score", &ring_score}, {"out", &out}, {"out_scales", e4m3 ? &*out_scales : nullptr}};
  const std::pair<const char*, const at::Tensor*> all[] = {{"kv", &kv},
                                                           {"score", &score},
                                                           {"seq_lens", &seq_lens},
                                                           {"start_pos", &start_pos},
                                                           {"ape", &ape},
                                                           {"norm_weight", &norm_weight},
                                                           {"inv_freq", &inv_freq},
                                                           written[0],
                                                           written[1],
                                                           written[2],
                                                           written[3]};
  for (const auto& [w_name, w] : written)
    for (const auto& [o_name, o] : all)
      if (w && o && w != o) check_no_overlap(op, w_name, *w, o_name, *o);
  ValueChecks checks(op);
  checks.add("seq_lens", seq_lens, 0, S);
  checks.add("start_pos", start_pos, 0, INT32_MAX - S);
  checks.run();

  CompressParams p{};
  p.kv = ptr<const float>(kv);
  p.score = ptr<const float>(score);
  p.seq_lens = ptr<const int>(seq_lens);
  p.start_pos = ptr<const int>(start_pos);
  p.ring_kv = ptr<float>(ring_kv);
  p.ring_score = ptr<float>(ring_score);
  p.ape = ptr<const float>(ape);
  p.norm_weight = ptr<const float>(norm_weight);
  p.inv_freq = ptr<const float>(inv_freq);
  p.out = out.data_ptr();
  p.out_scales = e4m3 ? ptr<float>(*out_scales) : nullptr;
  p.out_type =
      e4m3 ? EntryType::e4m3
           : (type == at::kByte ? EntryType::kv_fp8 : (type == at::kBFloat16 ? EntryType::bf16 : EntryType::f32));
  p.overlap = overlap;
  p.B = int(B);
  p.S = int(S);
  p.c = int(c);
  p.ratio = int(ratio);
  p.n_out = int(out.size(1));
  p.rope_dim = int(2 * inv_freq.size(0));
  p.eps = float(eps);
  LCATTN_RUN(op, kv, compress_kv, p);
}

void register_ops(torch::Library& m) { m.impl("compress_kv", &compress_kv); }

}  // namespace

LCATTN_REGISTER(register_ops)

}  // namespace lcattn
