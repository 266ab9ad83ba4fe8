// Shared pieces of the C++ microbenchmarks: device buffers, random inputs, argument parsing,
// CUDA-event timing and the CSV line. Each program verifies its kernel once against the CPU
// implementation on the same params, then times it.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "lcattn/api.h"

#define BENCH_CHECK(call)                                                                           \
  do {                                                                                              \
    const cudaError_t err_ = (call);                                                                \
    if (err_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(err_)); \
      std::exit(1);                                                                                 \
    }                                                                                               \
  } while (0)

namespace bench {

// A host vector with a device copy of the same size.
template <typename T>
struct Buffer {
  std::vector<T> host;
  T* dev = nullptr;
  explicit Buffer(size_t n) : host(n) { BENCH_CHECK(cudaMalloc(&dev, std::max<size_t>(n, 1) * sizeof(T))); }
  ~Buffer() { cudaFree(dev); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void upload() { BENCH_CHECK(cudaMemcpy(dev, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice)); }
  void download() { BENCH_CHECK(cudaMemcpy(host.data(), dev, host.size() * sizeof(T), cudaMemcpyDeviceToHost)); }
};

inline std::mt19937& rng() {
  static std::mt19937 gen(1234);
  return gen;
}

inline void fill(std::vector<float>& v, float scale) {
  std::normal_distribution<float> dist(0.f, scale);
  for (float& x : v) x = dist(rng());
}

inline void fill(std::vector<lcattn::bf16>& v, float scale) {
  std::normal_distribution<float> dist(0.f, scale);
  for (auto& x : v) x = lcattn::float_to_bf16(dist(rng()));
}

// --name=value integer options.
struct Args {
  int argc;
  char** argv;
  int get(const char* name, int fallback) const {
    const std::string prefix = std::string("--") + name + "=";
    for (int i = 1; i < argc; ++i)
      if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) return std::atoi(argv[i] + prefix.size());
    return fallback;
  }
};

// Median milliseconds of `reps` launches after 3 warm-up launches.
template <typename Launch>
double time_ms(Launch launch, int reps = 20) {
  for (int i = 0; i < 3; ++i) BENCH_CHECK(launch());
  BENCH_CHECK(cudaDeviceSynchronize());
  cudaEvent_t start, stop;
  BENCH_CHECK(cudaEventCreate(&start));
  BENCH_CHECK(cudaEventCreate(&stop));
  std::vector<float> times(reps);
  for (float& t : times) {
    BENCH_CHECK(cudaEventRecord(start));
    BENCH_CHECK(launch());
    BENCH_CHECK(cudaEventRecord(stop));
    BENCH_CHECK(cudaEventSynchronize(stop));
    BENCH_CHECK(cudaEventElapsedTime(&t, start, stop));
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  return times[reps / 2];
}

// ||a - b|| / ||b|| over the finite entries of b, plus a count of entries whose finiteness differs.
template <typename A, typename B>
double rel_err(const std::vector<A>& a, const std::vector<B>& b) {
  auto val = [](auto x) -> double {
    if constexpr (std::is_same_v<decltype(x), lcattn::bf16>)
      return lcattn::bf16_to_float(x);
    else
      return double(x);
  };
  double num = 0, den = 0;
  size_t mismatched = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    const double x = val(a[i]), y = val(b[i]);
    if (!std::isfinite(y) || !std::isfinite(x)) {
      mismatched += (std::isfinite(x) != std::isfinite(y)) || (std::isinf(y) && x != y);
      continue;
    }
    num += (x - y) * (x - y);
    den += y * y;
  }
  return mismatched ? INFINITY : std::sqrt(num / std::max(den, 1e-300));
}

inline void csv_header() { std::printf("kernel,shape,ms,tflops,tbps,rel_err_vs_cpu\n"); }

inline void csv_line(const char* kernel, const std::string& shape, double ms, double flops, double bytes, double err) {
  std::printf("%s,%s,%.4f,%.2f,%.3f,%.2e\n", kernel, shape.c_str(), ms, flops / ms / 1e9, bytes / ms / 1e9, err);
}

}  // namespace bench
