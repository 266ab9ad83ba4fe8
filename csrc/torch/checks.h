// Input checks and device dispatch shared by every torch adapter, so that the CPU and CUDA
// paths accept exactly the same inputs. Errors read "[lcattn] <op>: <what>, got <value>".
#pragma once
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#if defined(LCATTN_WITH_CUDA)
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "common/device.h"
#endif

#include "lcattn/api.h"
#include "lcattn/switches.h"

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
  LCATTN_CHECK(t.dim() == int64_t(shape.size()), op, name, " must have rank ", shape.size(), ", got shape ", t.sizes());
  int64_t d = 0;
  for (int64_t want : shape) {
    LCATTN_CHECK(want < 0 || t.size(d) == want, op, name, " dim ", d, " must be ", want, ", got shape ", t.sizes());
    ++d;
  }
  LCATTN_CHECK(t.is_contiguous(), op, name, " must be contiguous, got strides ", t.strides());
}

// An integer argument the kernels take as an int: in [lo, hi] (hi at most INT32_MAX), so that it is
// not truncated on the way.
inline void check_int_arg(const char* op, const char* name, int64_t v, int64_t lo, int64_t hi = INT32_MAX) {
  LCATTN_CHECK(v >= lo && v <= hi, op, name, " must lie in [", lo, ", ", hi, "], got ", v);
}

// A size the kernels index with an int (a dimension or a product of dimensions).
inline void check_int_size(const char* op, const char* name, int64_t v) {
  LCATTN_CHECK(v <= INT32_MAX, op, name, " must be at most ", INT32_MAX, ", got ", v);
}

// A float argument: finite and at least lo.
inline void check_float_arg(const char* op, const char* name, double v, double lo) {
  LCATTN_CHECK(std::isfinite(v) && v >= lo, op, name, " must be finite and at least ", lo, ", got ", v);
}

// A tensor an op writes shares no memory with another of its tensors.
inline void check_no_overlap(const char* op, const char* written, const at::Tensor& w, const char* other,
                             const at::Tensor& o) {
  LCATTN_CHECK(at::get_overlap_status(w, o) == at::MemOverlapStatus::No, op, written, " and ", other,
               " must not share memory");
}

// A CUDA kernel reads t in 16-byte vectors: its data must start on a 16-byte boundary (a contiguous
// view at an odd storage offset does not), or the misaligned load would end the CUDA context.
inline void check_aligned_16(const char* op, const char* name, const at::Tensor& t) {
  LCATTN_CHECK(!t.is_cuda() || aligned16(t.data_ptr()), op, name,
               " must start on a 16-byte boundary on CUDA (storage offset ", t.storage_offset(), ")");
}

#if defined(LCATTN_WITH_CUDA)
// The CUDA kernels are built for sm_90a only (wgmma, setmaxnreg): on another GPU they cannot load.
inline void check_sm90(const char* op, const at::Tensor& t) {
  const int cc = device_capability(t.get_device());
  LCATTN_CHECK(cc == 90, op, "the lcattn CUDA kernels are built for sm_90a (H100, H200) only; ", t.device(),
               " has compute capability ", cc / 10, ".", cc % 10);
}

inline bool capturing_cuda_graph() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}
#endif

// Whether ops check the values of their index tensors: yes unless LCATTN_CHECK_VALUES=0 (read per
// call), and never for CUDA tensors while a CUDA graph is being captured (a check would sync).
// Unchecked, the kernels still never read or write outside their buffers: an index out of its
// range means "none" (no key, no expert, a zero row) and positions and lengths are clamped.
inline bool value_checks_on(const at::Tensor& t) {
  if (env_is("LCATTN_CHECK_VALUES", "0")) return false;
#if defined(LCATTN_WITH_CUDA)
  if (t.is_cuda() && capturing_cuda_graph()) return false;
#endif
  return true;
}

// Range checks of an op's integer tensors: every value of each lies in its [lo, hi]. The (min, max)
// of all of them come back in one device-to-host copy when run() is called (one sync per op, not
// two per tensor); value_checks_on says when they run.
class ValueChecks {
 public:
  explicit ValueChecks(const char* op) : op_(op) {}

  void add(const char* name, const at::Tensor& t, int64_t lo, int64_t hi) {
    if (t.numel() == 0 || !value_checks_on(t)) return;
    const auto [mn, mx] = at::aminmax(t);
    bounds_.push_back(mn);
    bounds_.push_back(mx);
    ranges_.push_back({name, lo, hi});
  }

  // Throws for the first tensor, in the order added, with a value out of its range.
  void run() const {
    if (ranges_.empty()) return;
    std::vector<at::Tensor> bounds = bounds_;
    for (const at::Tensor& b : bounds_) {
      if (b.scalar_type() != bounds_[0].scalar_type()) {  // mixed widths: compare as int64
        for (at::Tensor& c : bounds) c = c.to(at::kLong);
        break;
      }
    }
    const at::Tensor host = at::stack(bounds).cpu().to(at::kLong);
    const int64_t* v = host.data_ptr<int64_t>();
    for (size_t i = 0; i < ranges_.size(); ++i) {
      const Range& r = ranges_[i];
      LCATTN_CHECK(v[2 * i] >= r.lo && v[2 * i + 1] <= r.hi, op_, r.name, " values must lie in [", r.lo, ", ", r.hi,
                   "], got [", v[2 * i], ", ", v[2 * i + 1], "]");
    }
  }

 private:
  struct Range {
    const char* name;
    int64_t lo, hi;
  };
  const char* op_;
  std::vector<at::Tensor> bounds_;  // (min, max) of each checked tensor, in its dtype and on its device
  std::vector<Range> ranges_;
};

// One tensor's range check (one sync on CUDA).
inline void check_values(const char* op, const char* name, const at::Tensor& t, int64_t lo, int64_t hi) {
  ValueChecks checks(op);
  checks.add(name, t, lo, hi);
  checks.run();
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
#define LCATTN_RUN(op, ref, fn, ...)                                                              \
  do {                                                                                            \
    if ((ref).is_cuda()) {                                                                        \
      check_sm90(op, ref);                                                                        \
      const c10::cuda::CUDAGuard guard((ref).device());                                           \
      const cudaError_t err = fn##_cuda(__VA_ARGS__, c10::cuda::getCurrentCUDAStream().stream()); \
      LCATTN_CHECK(err == cudaSuccess, op, "CUDA launch failed: ", cudaGetErrorString(err));      \
    } else {                                                                                      \
      fn##_cpu(__VA_ARGS__);                                                                      \
    }                                                                                             \
  } while (0)
#else
#define LCATTN_RUN(op, ref, fn, ...)                                             \
  do {                                                                           \
    LCATTN_CHECK(!(ref).is_cuda(), op, "this lcattn build has no CUDA kernels"); \
    fn##_cpu(__VA_ARGS__);                                                       \
  } while (0)
#endif

// Registers the adapters of one file, `register_fn(torch::Library&)`, for CPU and (when built) CUDA.
#if defined(LCATTN_WITH_CUDA)
#define LCATTN_REGISTER(register_fn)                     \
  TORCH_LIBRARY_IMPL(lcattn, CPU, m) { register_fn(m); } \
  TORCH_LIBRARY_IMPL(lcattn, CUDA, m) { register_fn(m); }
#else
#define LCATTN_REGISTER(register_fn) \
  TORCH_LIBRARY_IMPL(lcattn, CPU, m) { register_fn(m); }
#endif
