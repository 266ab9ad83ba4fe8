// compute-sanitizer racecheck against bar.arrive / bar.sync hand-offs: the row maxima exchange of
// attention version 6 (attention_sm90_pair.cu) alone. On a GPU machine:
//   nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a -Icsrc/include -Icsrc/kernels \
//     scripts/racecheck_pair_exchange.cu -o /tmp/rp
//   for v in 0 1 2; do compute-sanitizer --tool racecheck /tmp/rp $v | tail -1; done
// Two warpgroups, one CTA, 8 rounds. Per round, as the kernel's pair loop:
//   WG0: lanes 4j write max0[row] -> bar.arrive 1 -> bar.sync 2 -> every lane reads max1[row]
//        -> bar.arrive 3 -> bar.sync 4
//   WG1: bar.sync 1 -> every lane reads max0[row] -> lanes 4j write max1[row] -> bar.arrive 2
//        -> bar.arrive 4 -> bar.sync 3
// (256 threads on each barrier: each access is ordered by the barrier between its writer and readers,
// and a write two barriers after the last read of the round before.) Variants:
//   0  as above                                     -> clean if racecheck follows arrive -> sync
//   1  without barrier 2 (WG0's read of max1 races with WG1's write) -> a real race: to be flagged
//   2  as 0, every barrier a bar.sync of both warpgroups (no arrive), WG1 meeting 3 before 4 as WG0
//      does                                          -> clean
// Each variant prints the sum of what WG0 read (the same in 0 and 2).
#include <cstdio>
#include <cstdlib>

#include "common/sm90.cuh"

using namespace lcattn::sm90;

constexpr int kRounds = 8;

template <int V>
__global__ void __launch_bounds__(256, 1) probe(float* out) {
  __shared__ float max0[64], max1[64];
  const int wg = threadIdx.x / 128, tid = threadIdx.x % 128, lane = threadIdx.x % 32;
  const int row = (tid / 32) * 16 + lane / 4;
  auto arrive = [](int id) {
    if (V == 2)
      named_barrier_sync(id, 256);
    else
      named_barrier_arrive(id, 256);
  };
  float seen = 0.f;
  for (int r = 0; r < kRounds; ++r) {
    if (wg == 0) {
      if (lane % 4 == 0) max0[row] = float(r * 64 + row);
      arrive(1);
      if (V != 1) named_barrier_sync(2, 256);
      seen += max1[row];
      arrive(3);
      named_barrier_sync(4, 256);
    } else {
      named_barrier_sync(1, 256);
      const float m = max0[row];
      if (lane % 4 == 0) max1[row] = m + 1.f;
      if (V != 1) arrive(2);
      if (V == 2) {  // every barrier a sync of both: barrier 3 before 4, as WG0 meets them
        named_barrier_sync(3, 256);
        named_barrier_sync(4, 256);
      } else {
        arrive(4);
        named_barrier_sync(3, 256);
      }
    }
  }
  if (wg == 0) atomicAdd(out, seen);
}

int main(int argc, char** argv) {
  const int v = argc > 1 ? atoi(argv[1]) : 0;
  float* out;
  cudaMalloc(&out, sizeof(float));
  cudaMemset(out, 0, sizeof(float));
  if (v == 0) probe<0><<<1, 256>>>(out);
  if (v == 1) probe<1><<<1, 256>>>(out);
  if (v == 2) probe<2><<<1, 256>>>(out);
  float host = 0.f;
  const cudaError_t err = cudaMemcpy(&host, out, sizeof(float), cudaMemcpyDeviceToHost);
  printf("variant %d: %s, sum read %.0f\n", v, cudaGetErrorString(err), host);
  return 0;
}
