// The free-form answer checker of consr_world (see checker.hpp for the rules).
#include "consr_world/checker.hpp"

#include <algorithm>
#include <cctype>
#include <stdexcept>

namespace consr_world {

namespace {

bool in(const std::string& w, std::initializer_list<const char*> set) {
  for (const char* s : set)
    if (w == s) return true;
  return false;
}

bool colour_word(const std::string& w, colour& c) {
  if (w == "violet") {
    c = colour::purple;
    return true;
  }
  return parse_colour(w, c);
}

bool shape_word(const std::string& w, shape& s) {
  if (parse_shape(w, s)) return true;
  if (in(w, {"disc", "discs", "disk", "disks", "dot", "dots"})) s = shape::circle;
  else if (in(w, {"rectangle", "rectangles"})) s = shape::square;
  else if (in(w, {"donut", "donuts", "doughnut", "doughnuts"})) s = shape::ring;
  else return false;
  return true;
}

int number_word(const std::string& w) {
  static const char* words[] = {"zero", "one", "two", "three", "four", "five",
                                "six",  "seven", "eight", "nine", "ten"};
  for (int i = 0; i <= 10; ++i)
    if (w == words[i]) return i;
  if (w == "single") return 1;
  if (!w.empty() && w.size() <= 6 && std::all_of(w.begin(), w.end(), [](char ch) { return ch >= '0' && ch <= '9'; }))
    return std::stoi(w);
  return -1;
}

bool is_no_word(const std::string& w) {
  return in(w, {"no", "not", "nope", "none", "nothing", "isnt", "arent", "doesnt", "dont", "cannot", "cant", "neither",
                "nor", "absent"});
}
bool is_adjective(const std::string& w) {
  return in(w, {"small", "large", "big", "tiny", "little", "huge", "medium", "bright", "dark", "light", "pale", "solid",
                "filled", "hollow", "outlined", "smaller", "larger", "bigger"});
}
bool is_yes_word(const std::string& w) { return in(w, {"yes", "yeah", "yep", "yup", "correct", "true"}); }

}  // namespace

std::vector<std::string> normalise_words(const std::string& text) {
  std::vector<std::string> out;
  std::string cur;
  const auto flush = [&] {
    if (!cur.empty()) out.push_back(cur);
    cur.clear();
  };
  for (std::size_t i = 0; i < text.size(); ++i) {
    const unsigned char ch = static_cast<unsigned char>(text[i]);
    if (std::isalnum(ch)) {
      cur.push_back(static_cast<char>(std::tolower(ch)));
    } else if (ch == '\'') {
      // dropped: "isn't" -> "isnt"
    } else if (ch == 0xE2 && i + 2 < text.size() && static_cast<unsigned char>(text[i + 1]) == 0x80 &&
               static_cast<unsigned char>(text[i + 2]) == 0x99) {
      i += 2;  // U+2019 right single quotation mark, also an apostrophe
    } else if (ch == '.' || ch == '!' || ch == '?' || ch == ';' || ch == '\n') {
      flush();
      // a decimal point inside a number is not a sentence end
      if (!(ch == '.' && i + 1 < text.size() && std::isdigit(static_cast<unsigned char>(text[i + 1])) && !out.empty() &&
            std::isdigit(static_cast<unsigned char>(out.back().back()))))
        if (out.empty() || out.back() != ".") out.push_back(".");
    } else {
      flush();
    }
  }
  flush();
  return out;
}

yes_no parse_yes_no(const std::string& answer) {
  const auto words = normalise_words(answer);
  bool any = false;
  for (const auto& w : words) {
    if (w == ".") {
      if (any) break;  // the first non-empty sentence decides
      continue;
    }
    any = true;
    if (is_yes_word(w)) return yes_no::yes;
    if (is_no_word(w)) return yes_no::no;
  }
  return any ? yes_no::yes : yes_no::unknown;
}

std::optional<colour> parse_colour_answer(const std::string& answer) {
  const auto words = normalise_words(answer);
  for (std::size_t i = 0; i < words.size(); ++i) {
    colour c;
    if (!colour_word(words[i], c)) continue;
    if (i > 0 && (words[i - 1] == "not" || words[i - 1] == "no" || words[i - 1] == "isnt")) continue;
    return c;
  }
  return std::nullopt;
}

std::optional<int> parse_count_answer(const std::string& answer) {
  const auto words = normalise_words(answer);
  for (const auto& w : words) {
    const int n = number_word(w);
    if (n >= 0) return n;
  }
  for (const auto& w : words)
    if (w == "no" || w == "none") return 0;
  return std::nullopt;
}

int parse_position_answer(const std::string& answer) {
  int v = -1, h = -1;
  bool centre = false;
  for (const auto& w : normalise_words(answer)) {
    if (v < 0 && (w == "top" || w == "upper")) v = 0;
    else if (v < 0 && (w == "bottom" || w == "lower")) v = 2;
    else if (h < 0 && w == "left") h = 0;
    else if (h < 0 && w == "right") h = 2;
    else if (in(w, {"center", "centre", "middle", "central", "centered", "centred"})) centre = true;
  }
  if (v < 0 && h < 0) return centre ? 4 : -1;
  return (v < 0 ? 1 : v) * grid + (h < 0 ? 1 : h);
}

std::optional<int> parse_digit_answer(const std::string& answer) {
  for (const auto& w : normalise_words(answer)) {
    const int n = number_word(w);
    if (n >= 0 && n <= 9 && w != "single") return n;
  }
  return std::nullopt;
}

description_check check_description(const std::string& text, const scene& s) {
  description_check out;
  const auto words = normalise_words(text);
  for (std::size_t i = 0; i < words.size(); ++i) {
    shape sh;
    if (!shape_word(words[i], sh)) continue;
    mention m;
    m.s = sh;
    // The colour: the nearest colour word of the noun phrase (colour words and size-like
    // adjectives directly before the shape word).
    for (std::size_t k = 1; k <= i; ++k) {
      const auto& w = words[i - k];
      colour c;
      if (colour_word(w, c)) {
        m.has_colour = true;
        m.c = c;
        break;
      }
      if (!is_adjective(w)) break;
    }
    bool negated = false;
    for (std::size_t k = 1; k <= 4 && k <= i; ++k) {
      const auto& w = words[i - k];
      shape other;
      if (w == "." || shape_word(w, other)) break;  // the words before belong to the previous mention
      if (in(w, {"no", "not", "without", "nor", "neither"})) negated = true;
    }
    if (negated) continue;
    const bool seen = std::any_of(out.mentions.begin(), out.mentions.end(), [&](const mention& x) {
      return x.s == m.s && x.has_colour == m.has_colour && (!m.has_colour || x.c == m.c);
    });
    if (seen) continue;
    m.hallucinated = m.has_colour ? !s.contains(object_type{m.s, m.c}) : s.count(m.s) == 0;
    out.hallucinated += m.hallucinated;
    out.mentions.push_back(m);
  }
  std::vector<int> types;
  for (const auto& o : s.objects)
    if (std::find(types.begin(), types.end(), o.type().index()) == types.end()) types.push_back(o.type().index());
  out.scene_types = static_cast<int>(types.size());
  for (int t : types) {
    const auto ot = object_type::from_index(t);
    out.recalled += std::any_of(out.mentions.begin(), out.mentions.end(),
                                [&](const mention& m) { return m.has_colour && m.s == ot.s && m.c == ot.c; });
  }
  return out;
}

check_result check(const question& q, const std::string& answer, const scene* s) {
  check_result r;
  // A number answer (count, reading): parsed as the number, correct when it is q.number.
  const auto number = [&](const std::optional<int>& n) {
    if (n) r.parsed = std::to_string(*n);
    r.correct = n && *n == q.number;
  };
  switch (q.type) {
    case question_type::existence: {
      const auto yn = parse_yes_no(answer);
      r.parsed = yn == yes_no::yes ? "yes" : yn == yes_no::no ? "no" : "unknown";
      r.correct = yn != yes_no::unknown && r.parsed == q.label;
      break;
    }
    case question_type::colour: {
      const auto c = parse_colour_answer(answer);
      if (c) r.parsed = name(*c);
      r.correct = c && *c == q.target.c;
      break;
    }
    case question_type::count:
      number(parse_count_answer(answer));
      break;
    case question_type::position: {
      const int cell = parse_position_answer(answer);
      if (cell >= 0) r.parsed = position_name(cell);
      r.correct = cell >= 0 && cell == q.cell;
      break;
    }
    case question_type::reading:
      number(parse_digit_answer(answer));
      break;
    case question_type::description: {
      if (!s) throw std::invalid_argument("consr_world::check: a description needs its scene");
      const auto d = check_description(answer, *s);
      r.parsed = std::to_string(d.mentions.size()) + " mentions, " + std::to_string(d.hallucinated) + " hallucinated, " +
                 std::to_string(d.recalled) + "/" + std::to_string(d.scene_types) + " recalled";
      r.correct = d.correct();
      break;
    }
  }
  return r;
}

}  // namespace consr_world
