// Carving one scratch buffer into the arrays of a plan: each array starts on a 256-byte boundary.
// With a null base only the total size is counted (the plan's `bytes`).
#pragma once
#include <cstddef>

namespace lcattn {

class WorkspaceCarver {
 public:
  explicit WorkspaceCarver(void* base) : base_(static_cast<char*>(base)) {}

  // The next `count` elements of T (null when counting).
  template <typename T>
  T* take(size_t count) {
    char* here = base_ ? base_ + at_ : nullptr;
    at_ += (count * sizeof(T) + 255) / 256 * 256;
    return reinterpret_cast<T*>(here);
  }
  size_t bytes() const { return at_; }

 private:
  char* base_;
  size_t at_ = 0;
};

}  // namespace lcattn
