// Block KV compressor (SPEC 3), one-shot prefill of a sequence.
//   bench_compress [--tokens=131072] [--ratio=4] (ratio 4 is the overlapping CSA form)
#include "bench_common.h"

int main(int argc, char** argv) {
  const bench::Args args{argc, argv};
  const int T = args.get("tokens", 131072), ratio = args.get("ratio", 4), c = 512, rope = 64;
  const bool overlap = ratio == 4;
  const int width = overlap ? 2 * c : c, ring = overlap ? 2 * ratio : ratio, n_out = T / ratio;
  bench::Buffer<float> kv(size_t(T) * width), score(size_t(T) * width), ape(size_t(ratio) * width), norm(c),
      inv_freq(rope / 2), ring_kv(size_t(ring) * width), ring_score(size_t(ring) * width), out(size_t(n_out) * c);
  bench::Buffer<int> seq_lens(1), start_pos(1);
  for (auto* buf : {&kv, &score, &ape}) bench::fill(buf->host, 1.f);
  std::fill(norm.host.begin(), norm.host.end(), 1.f);
  for (int k = 0; k < rope / 2; ++k) inv_freq.host[k] = std::pow(160000.f, -2.f * k / rope);
  seq_lens.host[0] = T, start_pos.host[0] = 0;
  for (auto* buf : {&kv, &score, &ape, &norm, &inv_freq}) buf->upload();
  seq_lens.upload(), start_pos.upload();

  lcattn::CompressParams p{};
  p.B = 1, p.S = T, p.c = c, p.ratio = ratio, p.n_out = n_out, p.rope_dim = rope, p.eps = 1e-6f, p.overlap = overlap;
  p.kv = kv.host.data(), p.score = score.host.data(), p.seq_lens = seq_lens.host.data();
  p.start_pos = start_pos.host.data(), p.ape = ape.host.data(), p.norm_weight = norm.host.data();
  p.inv_freq = inv_freq.host.data(), p.ring_kv = ring_kv.host.data(), p.ring_score = ring_score.host.data();
  std::vector<float> ref(out.host.size());
  p.out = ref.data();
  lcattn::compress_kv_cpu(p);
  p.kv = kv.dev, p.score = score.dev, p.seq_lens = seq_lens.dev, p.start_pos = start_pos.dev, p.ape = ape.dev;
  p.norm_weight = norm.dev, p.inv_freq = inv_freq.dev, p.ring_kv = ring_kv.dev, p.ring_score = ring_score.dev;
  p.out = out.dev;
  const double ms = bench::time_ms([&] { return lcattn::compress_kv_cuda(p, nullptr); });
  out.download();
  const double err = bench::rel_err(out.host, ref);
  bench::csv_header();
  bench::csv_line("compress_kv", "T=" + std::to_string(T) + " ratio=" + std::to_string(ratio), ms, 0,
                  2.0 * T * width * 4 + double(n_out) * c * 4, err);
  return err < 1e-5 ? 0 : 1;
}
