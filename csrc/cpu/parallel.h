// Parallel loop for the CPU implementations: OpenMP when the build has it, serial otherwise.
#pragma once
#include <cstdint>

namespace lcattn {

template <typename F>
void parallel_for(int64_t n, F&& body) {
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) body(i);
}

}  // namespace lcattn
