// Block KV compressor on the CPU (SPEC 3): softmax pooling, RMSNorm, RoPE at i * ratio.
#include <algorithm>
#include <cmath>
#include <vector>

#include "lcattn/api.h"
#include "lcattn/shared_math.h"
#include "parallel.h"

namespace lcattn {
namespace {

// One entry of fp32 channels x [D] in the kv_fp8 form (KvFp8Layout) at out.
void store_kv_fp8(const float* x, const KvFp8Layout& l, uint8_t* out) {
  for (int t = 0; t < l.tiles(); ++t) {
    const int lo = t * KvFp8Layout::kTile, hi = std::min(lo + KvFp8Layout::kTile, l.nope());
    float amax = 0.f;
    for (int ch = lo; ch < hi; ++ch)
      amax = std::isnan(x[ch]) || std::isnan(amax) ? NAN : std::max(amax, std::fabs(x[ch]));
    const uint8_t byte = out[l.scale_offset() + t] = kv_fp8_scale_byte(amax);
    const float inv = kv_fp8_inverse_scale(byte);
    for (int ch = lo; ch < hi; ++ch) out[ch] = float_to_e4m3(x[ch] * inv);
  }
  bf16* rope = reinterpret_cast<bf16*>(out + l.rope_offset());
  for (int ch = 0; ch < l.rope_dim; ++ch) rope[ch] = float_to_bf16(x[l.nope() + ch]);
  std::fill(out + l.scale_offset() + l.tiles(), out + l.bytes(), uint8_t(0));
}

}  // namespace

void compress_kv_cpu(const CompressParams& p) {
  const int W = p.width(), R = p.ring(), c = p.c, ratio = p.ratio;
  for (int b = 0; b < p.B; ++b) {
    const int s0 = p.start(b), end = p.end(b);
    const int i_lo = s0 / ratio, i_hi = std::min(end / ratio, p.n_out);  // entries completed by this chunk
    parallel_for(std::max(0, i_hi - i_lo), [&](int64_t n) {
      const int i = i_lo + int(n);
      std::vector<float> pooled(c);
      for (int ch = 0; ch < c; ++ch) pooled[ch] = compress_pool_channel(p, b, i, ch);
      float ss = 0.f;
      for (float v : pooled) ss += v * v;
      const float inv_rms = 1.f / std::sqrt(ss / c + p.eps);
      for (int ch = 0; ch < c; ++ch) pooled[ch] *= inv_rms * p.norm_weight[ch];
      for (int k = 0; k < p.rope_dim / 2; ++k)
        rope_rotate_pair(&pooled[c - p.rope_dim + 2 * k], i * ratio, p.inv_freq[k], 1.f);
      if (p.out_type == EntryType::kv_fp8) {
        const KvFp8Layout l{c, p.rope_dim};
        store_kv_fp8(pooled.data(), l, static_cast<uint8_t*>(p.out) + (int64_t(b) * p.n_out + i) * l.bytes());
        return;
      }
      const int64_t o = (int64_t(b) * p.n_out + i) * c;
      float scale = 1.f;
      if (p.out_type == EntryType::e4m3) {
        float amax = 0.f;
        for (float v : pooled) amax = std::isnan(v) || std::isnan(amax) ? NAN : std::max(amax, std::fabs(v));
        scale = p.out_scales[int64_t(b) * p.n_out + i] = e4m3_scale(amax);
      }
      for (int ch = 0; ch < c; ++ch) {
        if (p.out_type == EntryType::e4m3)
          static_cast<e4m3*>(p.out)[o + ch] = float_to_e4m3(pooled[ch] / scale);
        else if (p.out_type == EntryType::bf16)
          static_cast<bf16*>(p.out)[o + ch] = float_to_bf16(pooled[ch]);
        else
          static_cast<float*>(p.out)[o + ch] = pooled[ch];
      }
    });
    // Only after every entry is pooled: keep the last `ring` positions for the next chunk.
    for (int s = std::max(s0, end - R); s < end; ++s) {
      const int64_t src = (int64_t(b) * p.S + (s - s0)) * W, dst = (int64_t(b) * R + s % R) * W;
      std::copy_n(p.kv + src, W, p.ring_kv + dst);
      std::copy_n(p.score + src, W, p.ring_score + dst);
    }
  }
}

}  // namespace lcattn
