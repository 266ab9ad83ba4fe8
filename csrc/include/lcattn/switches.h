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

// The integer value of the environment variable `name`, or `otherwise` when it is unset or not a
// number.
inline long env_int(const char* name, long otherwise) {
  const char* set = std::getenv(name);
  if (!set || !*set) return otherwise;
  char* end = nullptr;
  const long v = std::strtol(set, &end, 10);
  return *end == '\0' ? v : otherwise;
}

}  // namespace lcattn
