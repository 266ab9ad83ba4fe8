// Run-time switches read from the environment on each call (tests and benchmarks change them).
#pragma once
#include <cstdlib>
#include <cstring>

namespace lcattn {

// Whether the environment variable `name` is set to exactly `value`.
inline bool env_is(const char* name, const char* value) {
  const char* set = std::getenv(name);
  return set && std::strcmp(set, value) == 0;
}

}  // namespace lcattn
