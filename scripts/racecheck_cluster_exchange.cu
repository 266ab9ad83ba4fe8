// compute-sanitizer racecheck against the exchange of attention's decode in clusters of two
// (attention_sm90.cu, kClusterCombine) alone. On a GPU machine:
//   nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a -Icsrc/include -Icsrc/kernels \
//     scripts/racecheck_cluster_exchange.cu -o /tmp/rx
//   for v in 0 1 2 3 4; do compute-sanitizer --tool racecheck /tmp/rx $v | tail -1; done
// One cluster of two CTAs of 64 threads. Warp 0 of each CTA copies 32 floats from global memory into
// its shared buffer with cp.async, arriving on an mbarrier when they land; warp 1 waits on it and reads
// them. Then, as in the kernel, rank 1 stores 32 floats into rank 0's buffer with st.shared::cluster and
// arrives on rank 0's `ready` mbarrier (release, cluster scope), which rank 0 waits on (acquire) before
// it reads the buffer; every thread of rank 0 waits for that before it exits. Variants:
//   0  a cluster barrier between the reads of the copied values and the remote stores (every thread
//      arrives; warp 1 after its reads)                        -> ordered
//   1  no cluster barrier there: rank 1 may store into rank 0's buffer before rank 0's copies land or
//      are read                                                 -> a real race
//   2  as 0, with the copy by ordinary loads and stores instead of cp.async -> ordered
//   3  two cluster barriers and no mbarrier at cluster scope: warp 0 waits for its own copies
//      (cp.async.wait_all) before the first; rank 1 stores, then every thread meets the second, after
//      which rank 0 reads                                       -> ordered
//   4  as 3 without the first cluster barrier                   -> a real race
// Each variant prints the sum of what rank 0 read last (32 x 1000 + 496 = 32,496).
// Outcome (H100, compute-sanitizer of CUDA 13.0): variants 0-2 each report the same 32 "potential
// invalid __shared__ write ... in a block that might have already exited", one per remote store, and
// read 32,496: racecheck does not follow the mbarrier wait at cluster scope that keeps rank 0 alive,
// so it cannot tell the ordered exchange from the race. Variants 3 and 4 both report nothing (and read
// 32,496): racecheck sees no race in the two-barrier form, not even the real one.
#include <cstdio>
#include <cstdlib>

#include "common/sm90.cuh"

using namespace lcattn::sm90;

template <int V>
__global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(64, 1) probe(const float* src, float* out) {
  __shared__ alignas(16) float buf[32];
  __shared__ alignas(8) uint64_t full, ready;
  const int rank = blockIdx.x % 2, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    mbar_init(&full, 32);
    mbar_init(&ready, 32);
    fence_barrier_init();
  }
  cluster_sync();  // both CTAs' barriers set up
  float seen = 0.f;
  if (warp == 0) {
    if (V == 2) {
      buf[lane] = src[lane];
      mbar_arrive(&full);
    } else {
      asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_addr(buf + lane)), "l"(src + lane)
                   : "memory");
      mbar_arrive_cp_async(&full);
      if (V >= 3) cp_async_wait_all();
    }
  } else {
    mbar_wait(&full, 0);
    seen = buf[lane];
  }
  if (V != 1 && V != 4) cluster_sync();  // both CTAs are done with their buffers
  auto store_into_rank0 = [&] {
    asm volatile("st.shared::cluster.f32 [%0], %1;\n" ::"r"(cluster_map(smem_addr(buf + lane), 0)), "f"(1000.f + lane)
                 : "memory");
  };
  if (V >= 3) {
    if (rank == 1 && warp == 1) store_into_rank0();
    if (rank == 1) {  // arrives and leaves: rank 0 waits for its stores
      cluster_arrive();
      return;
    }
    cluster_sync();
    if (warp == 1) atomicAdd(out, buf[lane]);
    return;
  }
  if (rank == 1 && warp == 1) {
    store_into_rank0();
    mbar_arrive_cluster(cluster_map(smem_addr(&ready), 0));
  }
  if (rank == 0) {  // every thread of rank 0 stays until the stores have arrived
    mbar_wait_cluster(&ready, 0);
    if (warp == 1) atomicAdd(out, buf[lane]);
  }
}

int main(int argc, char** argv) {
  const int v = argc > 1 ? atoi(argv[1]) : 0;
  float *src, *out;
  cudaMalloc(&src, 32 * sizeof(float));
  cudaMalloc(&out, sizeof(float));
  cudaMemset(src, 0, 32 * sizeof(float));
  cudaMemset(out, 0, sizeof(float));
  if (v == 0) probe<0><<<2, 64>>>(src, out);
  if (v == 1) probe<1><<<2, 64>>>(src, out);
  if (v == 2) probe<2><<<2, 64>>>(src, out);
  if (v == 3) probe<3><<<2, 64>>>(src, out);
  if (v == 4) probe<4><<<2, 64>>>(src, out);
  float host = 0.f;
  const cudaError_t err = cudaMemcpy(&host, out, sizeof(float), cudaMemcpyDeviceToHost);
  printf("variant %d: %s, sum read %.0f\n", v, cudaGetErrorString(err), host);
  return 0;
}
