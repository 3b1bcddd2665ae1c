#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace ssm {

// Every precondition the library checks at its API boundary fails with this type; the message names
// the argument and the mismatch, e.g. "selective_scan: B has extent 7 in dimension 1 (length), expected 9".
class error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
    std::ostringstream message;
    (message << ... << parts);
    throw error(message.str());
}

template <class... Parts>
void require(bool condition, const Parts&... parts) {
    if (!condition) fail(parts...);
}
}  // namespace detail
}  // namespace ssm
