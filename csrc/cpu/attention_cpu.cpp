// Window + compressed entries + sink attention on the CPU (SPEC 5), fp32 math.
#include <algorithm>
#include <cmath>
#include <vector>

#include "lcattn/api.h"
#include "lcattn/shared_math.h"
#include "parallel.h"

namespace lcattn {

void attention_cpu(const AttentionParams& p) {
  parallel_for(int64_t(p.B) * p.S * p.H, [&](int64_t n) {
    const int h = int(n % p.H);
    const int64_t row = n / p.H;  // b * S + s
    const int b = int(row / p.S), s = int(row % p.S);
    const int pos = p.q_start[b] + s;
    // Keys of this query: the window, then the compressed entries.
    const AttentionKeys set = attention_keys(p, b, pos);
    std::vector<const bf16*> keys;
    const bf16* window = p.kv + (int64_t(b) * p.L + (set.window_lo - p.kv_start[b])) * p.D;
    for (int t = 0; t < set.n_window; ++t) keys.push_back(window + int64_t(t) * p.D);
    const bf16* pool = p.ckv + int64_t(b) * p.N * p.D;
    for (int j = 0; j < set.n_entries; ++j) {
      const int idx = p.indices ? p.indices[row * p.K + j] : j;
      if (idx >= 0 && idx < p.N) keys.push_back(pool + int64_t(idx) * p.D);
    }
    std::vector<float> q(p.D), acc(p.D, 0.f), logits(keys.size());
    for (int d = 0; d < p.D; ++d) q[d] = bf16_to_float(p.q[n * p.D + d]);
    float mx = -INFINITY;
    for (size_t u = 0; u < keys.size(); ++u) {
      float dot = 0.f;
      for (int d = 0; d < p.D; ++d) dot += q[d] * bf16_to_float(keys[u][d]);
      logits[u] = dot * p.scale;
      mx = std::max(mx, logits[u]);
    }
    // A query with no key, or whose every logit is -inf (an infinite q), is a query with no key:
    // output 0 and lse -inf, whatever the sink (as the reference). A NaN logit stays NaN.
    const float mx_ref = mx == -INFINITY ? 0.f : mx;
    float sum = 0.f;
    for (size_t u = 0; u < keys.size(); ++u) {
      const float e = std::exp(logits[u] - mx_ref);
      if (e == 0.f) continue;  // adds nothing, even for a key holding an infinity
      sum += e;
      for (int d = 0; d < p.D; ++d) acc[d] += e * bf16_to_float(keys[u][d]);
    }
    const float denom = sum == 0.f ? 1.f : sum + std::exp(p.sink[h] - mx_ref);
    for (int d = 0; d < p.D; ++d) acc[d] /= denom;
    for (int k = 0; k < p.rope_dim / 2; ++k) rope_rotate_pair(&acc[p.D - p.rope_dim + 2 * k], pos, p.inv_freq[k], -1.f);
    for (int d = 0; d < p.D; ++d) p.out[n * p.D + d] = float_to_bf16(acc[d]);
    p.lse[n] = sum == 0.f ? -INFINITY : mx + std::log(sum);
  });
}

}  // namespace lcattn
