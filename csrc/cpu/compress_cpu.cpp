// Block KV compressor on the CPU (SPEC 3): softmax pooling, RMSNorm, RoPE at i * m.
#include <algorithm>
#include <cmath>
#include <vector>

#include "lcattn/api.h"
#include "parallel.h"

namespace lcattn {

void compress_kv_cpu(const CompressParams& p) {
  const int W = p.width(), R = p.ring(), c = p.c, m = p.m;
  for (int b = 0; b < p.B; ++b) {
    const int s0 = p.start_pos[b], end = s0 + p.seq_lens[b];
    // Raw row of position s: from the chunk when it is new, else from the ring.
    auto row = [&](const float* chunk, const float* ring, int s) {
      return s >= s0 ? chunk + (int64_t(b) * p.S + (s - s0)) * W : ring + (int64_t(b) * R + s % R) * W;
    };
    const int i_lo = s0 / m, i_hi = std::min(end / m, p.n_out);  // entries completed by this chunk
    parallel_for(std::max(0, i_hi - i_lo), [&](int64_t n) {
      const int i = i_lo + int(n);
      std::vector<float> pooled(c);
      for (int ch = 0; ch < c; ++ch) {
        // Candidates (position, column): CSA pools A halves of block i-1 and B halves of block i.
        float mx = -INFINITY, sum = 0.f, acc = 0.f;
        auto visit = [&](int s, int col) {
          const float z = row(p.score, p.ring_score, s)[col] + p.ape[(s % m) * W + col];
          const float a = row(p.kv, p.ring_kv, s)[col];
          const float nm = std::max(mx, z);
          const float scale = std::exp(mx - nm), e = std::exp(z - nm);
          sum = sum * scale + e;
          acc = acc * scale + e * a;
          mx = nm;
        };
        if (p.overlap) {
          if (i > 0)
            for (int r = 0; r < m; ++r) visit((i - 1) * m + r, ch);
          for (int r = 0; r < m; ++r) visit(i * m + r, c + ch);
        } else {
          for (int r = 0; r < m; ++r) visit(i * m + r, ch);
        }
        pooled[ch] = acc / sum;
      }
      float ss = 0.f;
      for (float v : pooled) ss += v * v;
      const float inv_rms = 1.f / std::sqrt(ss / c + p.eps);
      for (int ch = 0; ch < c; ++ch) pooled[ch] *= inv_rms * p.norm_weight[ch];
      for (int k = 0; k < p.rope_dim / 2; ++k)
        rope_rotate_pair(&pooled[c - p.rope_dim + 2 * k], i * m, p.inv_freq[k], 1.f);
      const int64_t o = (int64_t(b) * p.n_out + i) * c;
      for (int ch = 0; ch < c; ++ch) {
        if (p.out_bf16)
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
