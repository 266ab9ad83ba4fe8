// Does a cp.async with an L2 policy (evict-last) and a 256-byte L2 fetch copy right on this GPU? The
// gather of version 6's producer (attention_sm90_pair.cu: 128 threads, thread t unit t % 8 of rows
// 4 (t / 8) .. + 3, absent rows zero-filled from a valid address) with those hints, one 64-row tile
// of 512 bf16 a CTA, read back and compared with the host's copy. On a GPU machine, for n in 0..3:
//   nvcc -std=c++17 -O3 -DFORM=n -gencode arch=compute_90a,code=sm_90a -Icsrc/include -Icsrc/kernels \
//     scripts/cp_async_hint_probe.cu -o /tmp/hint && /tmp/hint && compute-sanitizer /tmp/hint
//   cuobjdump -sass /tmp/hint | grep LDGSTS
// Why (kernel notes, Version 6, L2 hints): FORM 0, both hints with the source size (the form version
// 6's evict-last key copies had), faulted with an illegal instruction on an H100 (2026-12-07), as a
// first try of the hint on version 4 had; ptxas (CUDA 13.0) compiles some of its copies to
// `LDGSTS.E.BYPASS.LTC256B.128 [Rn+UR0], desc[UR1][Rm.64]`. The other forms tell which part faults:
// on an H100 (2026-12-07) forms 0, 1 and 3, each with a policy, fault; form 2, the fetch alone, does not.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "attention_sm90_common.cuh"

using namespace lcattn;

constexpr int kThreads = 128, kTileBytes = kKeys * kDim * 2;  // kKeys (64 rows), kDim (512) from the kernels

// Byte offset of 16-byte unit u (of 64) of row r in a 128B-swizzled [8 chunks][64 rows][128 B] tile.
// The host's own reading of the swizzled layout (the check does not reuse the device's `swizzled`).
int tile_offset(int r, int u) { return (u / 8) * kChunkBytes + r * 128 + ((u % 8) ^ (r % 8)) * 16; }

// FORM (-DFORM=n): 0 the policy and the 256-byte fetch, with the source size; 1 the policy without the
// 256-byte fetch; 2 the 256-byte fetch without the policy; 3 both, without the source size (absent rows
// then copy `any`, so its check reports wrong bytes; what it tells is whether it faults).
#ifndef FORM
#define FORM 0
#endif
__device__ __forceinline__ void copy_form(uint8_t* tile, int r, int unit, const uint16_t* src, const void* any,
                                          uint64_t policy) {
  const uint32_t dst = smem_addr(tile + (unit / 8) * kChunkBytes + swizzled(r, unit % 8));
  const void* from = src ? src + unit * 8 : any;
  const int bytes = src ? 16 : 0;
  if (FORM == 0)
    asm volatile("cp.async.cg.shared.global.L2::cache_hint.L2::256B [%0], [%1], 16, %2, %3;\n" ::"r"(dst),
                 "l"(from), "r"(bytes), "l"(policy) : "memory");
  else if (FORM == 1)
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(dst), "l"(from),
                 "r"(bytes), "l"(policy) : "memory");
  else if (FORM == 2)
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(from), "r"(bytes)
                 : "memory");
  else
    asm volatile("cp.async.cg.shared.global.L2::cache_hint.L2::256B [%0], [%1], 16, %2;\n" ::"r"(dst),
                 "l"(from), "l"(policy) : "memory");
}

// out[cta]: the tile of rows idx[cta * 64 + r] of kv (-1: zeros), in the tile's byte order.
__global__ void __launch_bounds__(kThreads, 1) gather(const uint16_t* kv, const int* idx, uint8_t* out) {
  extern __shared__ __align__(1024) uint8_t tile[];
  const int t = threadIdx.x, unit = t % 8, row0 = 4 * (t / 8);
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;\n" : "=l"(policy));
  const uint16_t* rows[4];
  for (int r = 0; r < 4; ++r) {
    const int e = idx[blockIdx.x * kKeys + row0 + r];
    rows[r] = e >= 0 ? kv + int64_t(e) * kDim : nullptr;
  }
#pragma unroll
  for (int h = 0; h < 2; ++h)  // the two halves of the dims, as the producer fills them
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        copy_form(tile, row0 + r, (4 * h + c) * 8 + unit, rows[r], kv, policy);
      }
  asm volatile("cp.async.wait_all;\n" ::: "memory");
  __syncthreads();
  for (int i = t; i < kTileBytes / 16; i += kThreads)
    reinterpret_cast<uint4*>(out + int64_t(blockIdx.x) * kTileBytes)[i] = reinterpret_cast<const uint4*>(tile)[i];
}

int main() {
  const int entries = 4096, ctas = 264;
  std::vector<uint16_t> kv(size_t(entries) * kDim);
  std::vector<int> idx(ctas * kKeys);
  srand(7);
  for (auto& x : kv) x = uint16_t(rand());
  for (auto& i : idx) i = rand() % 5 == 0 ? -1 : rand() % entries;
  uint16_t* d_kv;
  int* d_idx;
  uint8_t* d_out;
  cudaMalloc(&d_kv, kv.size() * 2);
  cudaMalloc(&d_idx, idx.size() * 4);
  cudaMalloc(&d_out, size_t(ctas) * kTileBytes);
  cudaMemcpy(d_kv, kv.data(), kv.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(d_idx, idx.data(), idx.size() * 4, cudaMemcpyHostToDevice);
  cudaFuncSetAttribute(gather, cudaFuncAttributeMaxDynamicSharedMemorySize, kTileBytes);
  gather<<<ctas, kThreads, kTileBytes>>>(d_kv, d_idx, d_out);
  const cudaError_t err = cudaDeviceSynchronize();
  if (err != cudaSuccess) {
    printf("fault: %s\n", cudaGetErrorString(err));
    return 1;
  }
  std::vector<uint8_t> out(size_t(ctas) * kTileBytes);
  cudaMemcpy(out.data(), d_out, out.size(), cudaMemcpyDeviceToHost);
  long wrong = 0;
  for (int cta = 0; cta < ctas; ++cta)
    for (int r = 0; r < kKeys; ++r)
      for (int u = 0; u < kDim / 8; ++u) {
        const int e = idx[cta * kKeys + r];
        const uint8_t* got = out.data() + size_t(cta) * kTileBytes + tile_offset(r, u);
        for (int b = 0; b < 16; ++b) {
          const uint8_t want = e < 0 ? 0 : reinterpret_cast<const uint8_t*>(kv.data() + size_t(e) * kDim + u * 8)[b];
          wrong += got[b] != want;
        }
      }
  printf("%s: %ld wrong bytes of %zu\n", wrong ? "WRONG" : "ok", wrong, out.size());
  return wrong != 0;
}
