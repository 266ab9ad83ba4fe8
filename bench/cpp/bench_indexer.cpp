// Lightning indexer scoring and top-k (SPEC 4) for a block of query rows.
//   bench_indexer [--tokens=1024] [--entries=32768] [--heads=64] [--dim=128] [--topk=512]
#include "bench_common.h"

int main(int argc, char** argv) {
  const bench::Args args{argc, argv};
  const int S = args.get("tokens", 1024), N = args.get("entries", 32768), HI = args.get("heads", 64),
            DI = args.get("dim", 128), K = args.get("topk", 512);
  bench::Buffer<lcattn::bf16> q(size_t(S) * HI * DI), keys(size_t(N) * DI);
  bench::Buffer<float> weights(size_t(S) * HI), scores(size_t(S) * N);
  bench::Buffer<int> q_start(1), indices(size_t(S) * K);
  bench::fill(q.host, 1.f);
  bench::fill(keys.host, 1.f);
  bench::fill(weights.host, 0.01f);
  q_start.host[0] = 4 * N - S;
  q.upload(), keys.upload(), weights.upload(), q_start.upload();

  lcattn::IndexerParams ip{};
  ip.B = 1, ip.S = S, ip.HI = HI, ip.DI = DI, ip.N = N, ip.ratio = 4, ip.row_begin = 0, ip.row_end = S;
  ip.q = q.host.data(), ip.weights = weights.host.data(), ip.keys = keys.host.data(), ip.q_start = q_start.host.data();
  std::vector<float> ref_scores(scores.host.size());
  ip.scores = ref_scores.data();
  lcattn::indexer_scores_cpu(ip);
  ip.q = q.dev, ip.weights = weights.dev, ip.keys = keys.dev, ip.q_start = q_start.dev, ip.scores = scores.dev;
  const double score_ms = bench::time_ms([&] { return lcattn::indexer_scores_cuda(ip, nullptr); });
  scores.download();
  const double score_err = bench::rel_err(scores.host, ref_scores);

  lcattn::TopkParams tp{scores.dev, indices.dev, S, N, K};
  const double topk_ms = bench::time_ms([&] { return lcattn::topk_cuda(tp, nullptr); });
  indices.download();
  // The picks must be the same sets as the CPU's (ties are unlikely on random data).
  std::vector<int> ref_indices(indices.host.size());
  lcattn::TopkParams cpu_tp{ref_scores.data(), ref_indices.data(), S, N, K};
  lcattn::topk_cpu(cpu_tp);
  size_t differing = 0;
  for (size_t i = 0; i < ref_indices.size(); ++i) differing += indices.host[i] != ref_indices[i];
  const double topk_err = double(differing) / ref_indices.size();

  const std::string shape =
      "S=" + std::to_string(S) + " N=" + std::to_string(N) + " HI=" + std::to_string(HI) + " DI=" + std::to_string(DI);
  bench::csv_header();
  bench::csv_line("indexer_scores", shape, score_ms, 2.0 * S * N * HI * DI,
                  2.0 * (double(S) * HI * DI + double(N) * DI) + 4.0 * S * N, score_err);
  bench::csv_line("topk", shape + " k=" + std::to_string(K), topk_ms, 0, 4.0 * S * N, topk_err);
  return score_err < 1e-4 && topk_err < 1e-3 ? 0 : 1;
}
