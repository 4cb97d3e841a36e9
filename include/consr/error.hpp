// consr/error.hpp — the one exception type of the host API, the argument
// checks that raise it, and the status codes device launchers return.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

#include "config.hpp"

namespace consr {

/// Every host-side failure of consr is a `consr::error`. It derives from
/// std::invalid_argument because every failure the library can detect is a
/// caller's input that violates a documented precondition. `function()` and
/// `argument()` say where; `what()` is the full, human-readable message:
///   "consr::token_logprobs: argument 'labels': row 7 has label 152064 outside [0, 152064)"
class error : public std::invalid_argument {
 public:
  error(std::string function, std::string argument, const std::string& message)
      : std::invalid_argument(format(function, argument, message)),
        function_(std::move(function)),
        argument_(std::move(argument)) {}

  const std::string& function() const noexcept { return function_; }
  const std::string& argument() const noexcept { return argument_; }

 private:
  static std::string format(const std::string& function, const std::string& argument,
                            const std::string& message) {
    std::string s = function;
    if (!argument.empty()) s += ": argument '" + argument + "'";
    s += ": " + message;
    return s;
  }
  std::string function_;
  std::string argument_;
};

/// Status codes returned by device launchers (which never throw) and by
/// the `try_` variants of host functions. `status::success` is zero.
enum class status : int {
  success = 0,
  invalid_argument = 1,    ///< a shape, stride, option or size is invalid
  label_out_of_range = 2,  ///< a label outside [0, V) that is not ignore_index
  empty_sequence = 3,      ///< a length-normalized pair has an empty sequence
  device_error = 4,        ///< the device runtime reported an error
};

/// Human-readable name of a status code.
inline const char* to_string(status s) noexcept {
  switch (s) {
    case status::success: return "success";
    case status::invalid_argument: return "invalid argument";
    case status::label_out_of_range: return "label out of range";
    case status::empty_sequence: return "empty sequence";
    case status::device_error: return "device error";
  }
  return "unknown status";
}

namespace detail {

template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

[[noreturn]] inline void throw_error(const char* function, const char* argument, std::string message) {
  throw error(function, argument ? argument : "", message);
}

}  // namespace detail

/// Throws consr::error naming `function` and `argument` unless `cond` holds.
/// The message parts are streamed only when the check fails.
#define CONSR_CHECK_ARG(cond, function, argument, ...)                                   \
  do {                                                                                   \
    if (CONSR_UNLIKELY(!(cond)))                                                         \
      ::consr::detail::throw_error((function), (argument), ::consr::detail::concat(__VA_ARGS__)); \
  } while (0)

}  // namespace consr
