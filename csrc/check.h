// SQFX_CHECK(cond, parts...): throws std::runtime_error (a Python RuntimeError)
// whose message is exactly the streamed parts. Torch's STD_TORCH_CHECK starts
// its message with the function name and the source path on the build machine,
// which mean nothing to a user and leak the build environment.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace sqfx {
template <typename... Args>
[[noreturn]] void fail(const Args&... parts) {
  std::ostringstream out;
  ((out << parts), ...);
  throw std::runtime_error(out.str());
}
}  // namespace sqfx

#define SQFX_CHECK(cond, ...)                       \
  do {                                              \
    if (__builtin_expect(!(cond), 0)) ::sqfx::fail(__VA_ARGS__); \
  } while (0)
