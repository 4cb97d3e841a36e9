// consr/detail/enum_names.hpp — the names of the option enums: each family header (dpo_types.hpp,
// reward.hpp, visual_weights.hpp, corruption/noise.hpp) gives its table by an enum_names overload;
// consr::to_string and parse_<enum> (through parse_enum) read it.
#pragma once

#include <cstddef>
#include <iterator>
#include <string>
#include <string_view>
#include <type_traits>

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

/// Every name of an option enum E, in the order parse errors list them, with the function that
/// parses them and its argument (for the error). A family header declares, next to its enum,
///   constexpr detail::enum_table<E, N> enum_names(E) noexcept { return {parser, argument, {...}}; }
/// found by argument-dependent lookup; consr::to_string(E) and parse_enum<E> read it.
template <class E, std::size_t N>
struct enum_table {
  const char* parser;    ///< e.g. "consr::parse_reward_space"
  const char* argument;  ///< e.g. "space"
  enum_name<E> names[N];
};

/// True for an enum with an enum_names overload.
template <class E, class = void>
inline constexpr bool has_enum_names_v = false;
template <class E>
inline constexpr bool has_enum_names_v<E, std::void_t<decltype(enum_names(E{}))>> = true;

/// The value of E named `text`. Otherwise throws consr::error from the table's parser naming its
/// argument: is "text" but must be "a", "b" or "c" (the names in table order, each with its note).
template <class E>
E parse_enum(std::string_view text) {
  constexpr auto table = enum_names(E{});
  for (const enum_name<E>& n : table.names)
    if (text == n.name) return n.value;
  std::string expected;
  const std::size_t count = std::size(table.names);
  for (std::size_t i = 0; i < count; ++i) {
    if (i > 0) expected += i + 1 < count ? ", " : " or ";
    expected += '"';
    expected += table.names[i].name;
    expected += '"';
    expected += table.names[i].note;
  }
  throw_error(table.parser, table.argument, "is \"" + std::string(text) + "\" but must be " + expected);
}

/// Throws consr::error from `fn` naming `arg` unless `value` is one of E's named values
/// ("is not a <type> value (N)": a value cast from an integer outside the enum).
template <class E>
void check_enum_value(E value, const char* fn, const char* arg, const char* type) {
  for (const enum_name<E>& n : enum_names(E{}).names)
    if (n.value == value) return;
  throw_error(fn, arg, "is not a " + std::string(type) + " value (" + std::to_string(static_cast<int>(value)) + ")");
}

}  // namespace detail

/// The name of an option enum's value (noise_schedule, reward_space, weight_side, dpo_loss_type,
/// loss_reduction), as parse_<enum> reads it; "unknown" for a value outside the enum.
template <class E, std::enable_if_t<detail::has_enum_names_v<E>, int> = 0>
constexpr const char* to_string(E value) noexcept {
  for (const detail::enum_name<E>& n : enum_names(E{}).names)
    if (n.value == value) return n.name;
  return "unknown";
}
}  // namespace consr
