// Sparse attention (SPEC 5): window + selected compressed entries + sink.
//   bench_attention [--batch=1] [--tokens=256] [--heads=64] [--topk=512] [--entries=8192] [--window=128]
#include "bench_common.h"

int main(int argc, char** argv) {
  const bench::Args args{argc, argv};
  const int B = args.get("batch", 1), S = args.get("tokens", 256), H = args.get("heads", 64), K = args.get("topk", 512),
            N = args.get("entries", 8192), W = args.get("window", 128);
  const int D = 512, rope = 64, L = S + W - 1, pos = 4 * N - S;
  bench::Buffer<lcattn::bf16> q(size_t(B) * S * H * D), kv(size_t(B) * L * D), ckv(size_t(B) * N * D);
  bench::Buffer<lcattn::bf16> out(size_t(B) * S * H * D);
  bench::Buffer<int> kv_start(B), q_start(B), indices(size_t(B) * S * K);
  bench::Buffer<float> sink(H), inv_freq(rope / 2), lse(size_t(B) * S * H);
  bench::fill(q.host, 1.f);
  bench::fill(kv.host, 1.f);
  bench::fill(ckv.host, 1.f);
  bench::fill(sink.host, 1.f);
  for (int k = 0; k < rope / 2; ++k) inv_freq.host[k] = std::pow(160000.f, -2.f * k / rope);
  for (int b = 0; b < B; ++b) q_start.host[b] = pos, kv_start.host[b] = pos - (W - 1);
  std::vector<int> perm(N);
  for (size_t row = 0; row < size_t(B) * S; ++row) {  // K distinct entries per query
    for (int i = 0; i < N; ++i) perm[i] = i;
    std::shuffle(perm.begin(), perm.end(), bench::rng());
    std::copy_n(perm.begin(), K, indices.host.begin() + row * K);
  }
  for (auto* buf : {&q, &kv, &ckv}) buf->upload();
  for (auto* buf : {&kv_start, &q_start, &indices}) buf->upload();
  sink.upload();
  inv_freq.upload();

  lcattn::AttentionParams p{};
  p.B = B, p.S = S, p.H = H, p.D = D, p.L = L, p.N = N, p.K = K, p.window = W, p.rope_dim = rope;
  p.scale = 1.f / std::sqrt(float(D));
  p.splits = 1;
  auto point = [&](bool device) {
    p.q = device ? q.dev : q.host.data();
    p.kv = device ? kv.dev : kv.host.data();
    p.ckv = device ? ckv.dev : ckv.host.data();
    p.kv_start = device ? kv_start.dev : kv_start.host.data();
    p.q_start = device ? q_start.dev : q_start.host.data();
    p.indices = device ? indices.dev : indices.host.data();
    p.sink = device ? sink.dev : sink.host.data();
    p.inv_freq = device ? inv_freq.dev : inv_freq.host.data();
  };
  point(false);
  std::vector<lcattn::bf16> ref_out(out.host.size());
  std::vector<float> ref_lse(lse.host.size());
  p.out = ref_out.data();
  p.lse = ref_lse.data();
  lcattn::attention_cpu(p);

  point(true);
  p.out = out.dev;
  p.lse = lse.dev;
  int sms = 0;
  BENCH_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  p.splits = lcattn::attention_splits(p, sms);
  p.cluster_combine = lcattn::attention_cluster_combines(p, sms);
  p.fused_combine = lcattn::attention_fuses_combine(p);
  bench::Buffer<float> workspace(size_t(lcattn::attention_workspace_floats(p)));
  p.workspace = workspace.dev;
  const double ms = bench::time_ms([&] { return lcattn::attention_cuda(p, nullptr); });
  out.download();
  lse.download();
  const double err = std::max(bench::rel_err(out.host, ref_out), bench::rel_err(lse.host, ref_lse));
  const double flops = 4.0 * H * D * (K + W) * S * B;
  const double bytes = 2.0 * (2.0 * B * S * H * D + double(B) * S * (K + W) * D);
  bench::csv_header();
  bench::csv_line("sparse_attn",
                  "B=" + std::to_string(B) + " S=" + std::to_string(S) + " H=" + std::to_string(H) +
                      " K=" + std::to_string(K) + "+" + std::to_string(W),
                  ms, flops, bytes, err);
  return err < 2e-2 ? 0 : 1;
}
