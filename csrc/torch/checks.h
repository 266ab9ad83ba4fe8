// Input checks and device dispatch shared by every torch adapter, so that the CPU and CUDA
// paths accept exactly the same inputs. Errors read "[lcattn] <op>: <what>, got <value>".
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>

#include <initializer_list>
#include <string>

#if defined(LCATTN_WITH_CUDA)
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "lcattn/api.h"

namespace lcattn {

#define LCATTN_CHECK(cond, op, ...) TORCH_CHECK(cond, "[lcattn] ", op, ": ", __VA_ARGS__)

inline void check_dtype_device(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype,
                               const at::Tensor& like) {
  LCATTN_CHECK(t.scalar_type() == dtype, op, name, " must be ", c10::toString(dtype), ", got ",
               c10::toString(t.scalar_type()));
  LCATTN_CHECK(t.device() == like.device(), op, name, " must be on ", like.device(), ", got ", t.device());
}

// dtype, device (that of `like`), rank, dims (-1 = any) and contiguity of one tensor.
inline void check_tensor(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype,
                         std::initializer_list<int64_t> shape, const at::Tensor& like) {
  check_dtype_device(op, name, t, dtype, like);
  LCATTN_CHECK(t.dim() == int64_t(shape.size()), op, name, " must have rank ", shape.size(), ", got shape ",
               t.sizes());
  int64_t d = 0;
  for (int64_t want : shape) {
    LCATTN_CHECK(want < 0 || t.size(d) == want, op, name, " dim ", d, " must be ", want, ", got shape ",
                 t.sizes());
    ++d;
  }
  LCATTN_CHECK(t.is_contiguous(), op, name, " must be contiguous, got strides ", t.strides());
}

#if defined(LCATTN_WITH_CUDA)
inline bool capturing_cuda_graph() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}
#endif

// Every value of an integer tensor lies in [lo, hi]. On CUDA this reads two numbers back
// (one sync), and is skipped while a CUDA graph is being captured: the kernels themselves
// never read outside their buffers, whatever the values.
inline void check_values(const char* op, const char* name, const at::Tensor& t, int64_t lo, int64_t hi) {
  if (t.numel() == 0) return;
#if defined(LCATTN_WITH_CUDA)
  if (t.is_cuda() && capturing_cuda_graph()) return;
#endif
  const auto [mn, mx] = at::aminmax(t);
  const int64_t vmin = mn.item<int64_t>(), vmax = mx.item<int64_t>();
  LCATTN_CHECK(vmin >= lo && vmax <= hi, op, name, " values must lie in [", lo, ", ", hi, "], got [", vmin,
               ", ", vmax, "]");
}

inline const float* optional_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<float>() : nullptr;
}

template <typename T>
T* ptr(const at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

}  // namespace lcattn

// Runs fn_cpu(args...) or fn_cuda(args..., stream) by the device of `ref`.
#if defined(LCATTN_WITH_CUDA)
#define LCATTN_RUN(op, ref, fn, ...)                                                                  \
  do {                                                                                                \
    if ((ref).is_cuda()) {                                                                            \
      const c10::cuda::CUDAGuard guard((ref).device());                                               \
      const cudaError_t err = fn##_cuda(__VA_ARGS__, c10::cuda::getCurrentCUDAStream().stream());      \
      LCATTN_CHECK(err == cudaSuccess, op, "CUDA launch failed: ", cudaGetErrorString(err));          \
    } else {                                                                                          \
      fn##_cpu(__VA_ARGS__);                                                                          \
    }                                                                                                 \
  } while (0)
#else
#define LCATTN_RUN(op, ref, fn, ...)                                                        \
  do {                                                                                      \
    LCATTN_CHECK(!(ref).is_cuda(), op, "this lcattn build has no CUDA kernels");            \
    fn##_cpu(__VA_ARGS__);                                                                  \
  } while (0)
#endif

// Registers the adapters of one file, `register_fn(torch::Library&)`, for CPU and (when built) CUDA.
#if defined(LCATTN_WITH_CUDA)
#define LCATTN_REGISTER(register_fn)                        \
  TORCH_LIBRARY_IMPL(lcattn, CPU, m) { register_fn(m); }  \
  TORCH_LIBRARY_IMPL(lcattn, CUDA, m) { register_fn(m); }
#else
#define LCATTN_REGISTER(register_fn) \
  TORCH_LIBRARY_IMPL(lcattn, CPU, m) { register_fn(m); }
#endif
