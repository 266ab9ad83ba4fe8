// Grouped GEMM for MoE (SPEC 6), contiguous layout, the same number of rows for every expert.
//   bench_moe [--experts=256] [--rows=64] [--n=4096] [--k=4096]
#include "bench_common.h"

int main(int argc, char** argv) {
  const bench::Args args{argc, argv};
  const int E = args.get("experts", 256), R = args.get("rows", 64), N = args.get("n", 4096), K = args.get("k", 4096);
  const int M = E * R;
  bench::Buffer<lcattn::bf16> x(size_t(M) * K), w(size_t(E) * N * K), y(size_t(M) * N);
  bench::Buffer<int> offsets(E + 1);
  bench::fill(x.host, 1.f);
  bench::fill(w.host, 1.f / std::sqrt(float(K)));
  for (int e = 0; e <= E; ++e) offsets.host[e] = e * R;
  x.upload(), w.upload(), offsets.upload();

  lcattn::GroupedGemmParams p{};
  p.E = E, p.M = M, p.N = N, p.K = K;
  p.x = x.host.data(), p.w = w.host.data(), p.offsets = offsets.host.data();
  std::vector<lcattn::bf16> ref(y.host.size());
  p.y = ref.data();
  lcattn::grouped_gemm_contiguous_cpu(p);
  p.x = x.dev, p.w = w.dev, p.offsets = offsets.dev, p.y = y.dev;
  bench::Buffer<char> workspace(lcattn::grouped_gemm_workspace_bytes(p));
  p.workspace = workspace.dev;
  const double ms = bench::time_ms([&] { return lcattn::grouped_gemm_contiguous_cuda(p, nullptr); });
  y.download();
  const double err = bench::rel_err(y.host, ref);
  bench::csv_header();
  bench::csv_line(
      "grouped_gemm_contiguous",
      "E=" + std::to_string(E) + " rows=" + std::to_string(R) + " N=" + std::to_string(N) + " K=" + std::to_string(K),
      ms, 2.0 * M * N * K, 2.0 * (double(M) * K + double(E) * N * K + double(M) * N), err);
  return err < 1e-2 ? 0 : 1;
}
