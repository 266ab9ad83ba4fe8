// Lightning indexer scoring, top-k selection and row gather on the CPU (SPEC 4).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "lcattn/api.h"
#include "lcattn/indexer_topk.h"
#include "lcattn/shared_math.h"
#include "parallel.h"

namespace lcattn {

void indexer_scores_cpu(const IndexerParams& p) {
  parallel_for(p.row_end - p.row_begin, [&](int64_t n) {
    const int64_t r = p.row_begin + n;
    const int b = int(r / p.S), s = int(r % p.S);
    const int pos = p.q_start[b] + s;
    const int visible = visible_entries(pos, p.ratio, p.N);
    std::vector<float> q(size_t(p.HI) * p.DI);
    for (size_t x = 0; x < q.size(); ++x) q[x] = bf16_to_float(p.q[r * p.HI * p.DI + x]);
    const float* w = p.weights + r * p.HI;
    float* out = p.scores + n * p.N;
    for (int i = 0; i < p.N; ++i) {
      if (i >= visible) {
        out[i] = -INFINITY;
        continue;
      }
      const bf16* key = p.keys + (int64_t(b) * p.N + i) * p.DI;
      float total = 0.f;
      for (int j = 0; j < p.HI; ++j) {
        float dot = 0.f;
        for (int d = 0; d < p.DI; ++d) dot += q[j * p.DI + d] * bf16_to_float(key[d]);
        total += w[j] * relu(dot);
      }
      out[i] = p.key_scale(b, i) * total;
    }
  });
}

void topk_cpu(const TopkParams& p) {
  parallel_for(p.R, [&](int64_t r) {
    const float* row = p.scores + r * p.N;
    std::vector<std::pair<float, int>> cand;
    for (int i = 0; i < p.N; ++i)
      if (!std::isnan(row[i]) && row[i] != -INFINITY) cand.emplace_back(row[i], i);
    const size_t keep = std::min<size_t>(p.k, cand.size());
    std::nth_element(cand.begin(), cand.begin() + keep, cand.end(),
                     [](const auto& x, const auto& y) { return x.first > y.first; });
    std::vector<int> picked(keep);
    for (size_t j = 0; j < keep; ++j) picked[j] = cand[j].second;
    std::sort(picked.begin(), picked.end());
    int* out = p.indices + r * p.k;
    for (int j = 0; j < p.k; ++j) out[j] = j < int(keep) ? picked[j] : -1;
  });
}

void indexer_topk_cpu(const IndexerTopkParams& p) {
  indexer_topk_blocks(p, [](const IndexerParams& scoring, const TopkParams& topk) {
    indexer_scores_cpu(scoring);
    topk_cpu(topk);
    return true;
  });
}

void gather_rows_cpu(const GatherParams& p) {
  parallel_for(int64_t(p.B) * p.S * p.K, [&](int64_t n) {
    const int b = int(n / (int64_t(p.S) * p.K));
    const int idx = p.indices[n];
    char* dst = p.out + n * p.row_bytes;
    if (idx < 0 || idx >= p.N)
      std::memset(dst, 0, p.row_bytes);
    else
      std::memcpy(dst, p.pool + (int64_t(b) * p.N + idx) * p.row_bytes, p.row_bytes);
  });
}

}  // namespace lcattn
