// consr/detail/enum_names.hpp — the names of the option enums, one table per enum: to_string and
// parse_<enum> of each family header (dpo.hpp, reward.hpp, corruption/noise.hpp) read it.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "../error.hpp"

namespace consr {
namespace detail {

/// One name of an option enum; `note` follows the quoted name in parse errors (e.g. " (eq. 14)").
template <class E>
struct enum_name {
  E value;
  const char* name;
  const char* note = "";
};

/// The name of `value` in `names`, or "unknown" for a value outside the enum.
template <class E, std::size_t N>
constexpr const char* name_of(E value, const enum_name<E> (&names)[N]) noexcept {
  for (const enum_name<E>& n : names)
    if (n.value == value) return n.name;
  return "unknown";
}

/// The value named `text` in `names`. Otherwise throws consr::error from `fn` naming `arg`:
/// is "text" but must be "a", "b" or "c" (the names in table order, each with its note).
template <class E, std::size_t N>
E parse_name(std::string_view text, const enum_name<E> (&names)[N], const char* fn, const char* arg) {
  for (const enum_name<E>& n : names)
    if (text == n.name) return n.value;
  std::string expected;
  for (std::size_t i = 0; i < N; ++i) {
    if (i > 0) expected += i + 1 < N ? ", " : " or ";
    expected += '"';
    expected += names[i].name;
    expected += '"';
    expected += names[i].note;
  }
  throw_error(fn, arg, "is \"" + std::string(text) + "\" but must be " + expected);
}

}  // namespace detail
}  // namespace consr
