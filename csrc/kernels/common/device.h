// Per-device state of the CUDA runtime, kept once per device and safe to reach from several host
// threads: attributes read once (the multiprocessor count, the compute capability) and kernel
// attributes set once (a kernel's dynamic shared-memory limit is an attribute on each device, so a
// process-wide "done" flag leaves the kernel unconfigured on a second GPU).
#pragma once
#include <cuda_runtime_api.h>

#include <mutex>

namespace lcattn {

constexpr int kMaxDevices = 64;

// Runs init(device) once per device and returns its first result on every later call.
template <class T>
class PerDevice {
 public:
  template <class Init>
  T get(int device, Init&& init) {
    if (device < 0 || device >= kMaxDevices) return init(device);
    std::call_once(once_[device], [&] { value_[device] = init(device); });
    return value_[device];
  }

 private:
  std::once_flag once_[kMaxDevices];
  T value_[kMaxDevices] = {};
};

// The multiprocessor count of `device` (0 if it cannot be read).
inline int device_sm_count(int device) {
  static PerDevice<int> cache;
  return cache.get(device, [](int d) {
    int sms = 0;
    return cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, d) == cudaSuccess ? sms : 0;
  });
}

// The compute capability of `device` as 10 * major + minor (0 if it cannot be read).
inline int device_capability(int device) {
  static PerDevice<int> cache;
  return cache.get(device, [](int d) {
    int major = 0, minor = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, d) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, d) != cudaSuccess)
      return 0;
    return 10 * major + minor;
  });
}

// Sets `kernel`'s dynamic shared-memory limit to `bytes` on the current device, once per device
// (each call site keeps its own `done`, one per kernel).
inline cudaError_t allow_dynamic_smem(PerDevice<cudaError_t>& done, const void* kernel, int bytes) {
  int device = 0;
  const cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  return done.get(
      device, [&](int) { return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes); });
}

}  // namespace lcattn
