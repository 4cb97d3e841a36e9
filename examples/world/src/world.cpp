// The vocabulary, the generator, the prior and the scenes of consr_world (see world.hpp).
#include "consr_world/world.hpp"

#include <algorithm>
#include <cstdio>
#include <numeric>

namespace consr_world {

namespace {
constexpr const char* shape_names[num_shapes] = {"circle", "square", "triangle", "star", "cross", "ring"};
constexpr const char* shape_plurals[num_shapes] = {"circles", "squares", "triangles", "stars", "crosses", "rings"};
constexpr const char* colour_names[num_colours] = {"red", "green", "blue", "yellow", "purple", "orange", "white"};
constexpr const char* position_names[num_cells] = {"top left", "top",    "top right",   "left",        "center",
                                                   "right",    "bottom left", "bottom", "bottom right"};
constexpr const char* position_phrases[num_cells] = {
    "at the top left",    "at the top", "at the top right",   "on the left",        "in the center",
    "on the right",       "at the bottom left", "at the bottom", "at the bottom right"};
constexpr std::uint8_t colour_rgb[num_colours][3] = {
    {225, 35, 35},   // red
    {30, 175, 60},   // green
    {40, 85, 235},   // blue
    {245, 225, 35},  // yellow
    {150, 55, 205},  // purple
    {250, 140, 20},  // orange
    {245, 245, 245}, // white
};
constexpr std::uint64_t golden = 0x9E3779B97F4A7C15ull;
}  // namespace

const char* name(shape s) noexcept { return shape_names[static_cast<int>(s)]; }
const char* plural(shape s) noexcept { return shape_plurals[static_cast<int>(s)]; }
const char* name(colour c) noexcept { return colour_names[static_cast<int>(c)]; }
const char* name(size_class s) noexcept { return s == size_class::small ? "small" : "large"; }
const char* name(split s) noexcept {
  switch (s) {
    case split::train: return "train";
    case split::validation: return "validation";
    default: return "test";
  }
}
const char* position_name(int cell) noexcept { return position_names[cell]; }
const char* position_phrase(int cell) noexcept { return position_phrases[cell]; }
std::array<std::uint8_t, 3> rgb(colour c) noexcept {
  const auto* p = colour_rgb[static_cast<int>(c)];
  return {p[0], p[1], p[2]};
}

bool parse_shape(const std::string& word, shape& out) {
  for (int i = 0; i < num_shapes; ++i)
    if (word == shape_names[i] || word == shape_plurals[i]) {
      out = static_cast<shape>(i);
      return true;
    }
  return false;
}
bool parse_colour(const std::string& word, colour& out) {
  for (int i = 0; i < num_colours; ++i)
    if (word == colour_names[i]) {
      out = static_cast<colour>(i);
      return true;
    }
  return false;
}
bool parse_split(const std::string& word, split& out) {
  if (word == "train") out = split::train;
  else if (word == "validation") out = split::validation;
  else if (word == "test") out = split::test;
  else return false;
  return true;
}

std::string object_type::text() const { return std::string(name(c)) + " " + name(s); }

// ---- generator ----------------------------------------------------------------------------------

std::uint64_t mix64(std::uint64_t z) noexcept {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
std::uint64_t rng::next() noexcept { return mix64(state += golden); }
std::uint32_t rng::below(std::uint32_t n) noexcept {
  const std::uint64_t hi = next() >> 32;
  return static_cast<std::uint32_t>((hi * n) >> 32);
}
double rng::uniform() noexcept { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }

std::uint64_t scene_key(std::uint64_t seed, split which, std::uint32_t index) noexcept {
  // Three rounds of mixing: the split tag and the index enter through different constants, so
  // (seed, split, index) -> key has no structure a neighbour could share.
  std::uint64_t k = mix64(seed + golden);
  k = mix64(k ^ (0xA24BAED4963EE407ull * (static_cast<std::uint64_t>(which) + 1)));
  k = mix64(k + 0x9FB21C651E98DF25ull * (static_cast<std::uint64_t>(index) + 1));
  return k;
}

// ---- the prior ----------------------------------------------------------------------------------

const std::vector<companion_rule>& companion_rules() {
  static const std::vector<companion_rule> rules = {
      {{shape::circle, colour::red}, {shape::square, colour::blue}, 0.8},
      {{shape::star, colour::yellow}, {shape::triangle, colour::green}, 0.8},
      {{shape::ring, colour::purple}, {shape::cross, colour::orange}, 0.8},
      {{shape::cross, colour::white}, {shape::circle, colour::purple}, 0.8},
  };
  return rules;
}

double type_weight(object_type t) noexcept {
  for (const auto& r : companion_rules())
    if (r.anchor == t) return 3.0;
  return 1.0;
}

namespace {

struct draw_tables {
  std::vector<double> cumulative;  // cumulative type weights
  draw_tables() {
    double acc = 0;
    for (int i = 0; i < num_object_types; ++i) {
      acc += type_weight(object_type::from_index(i));
      cumulative.push_back(acc);
    }
  }
};
const draw_tables& tables() {
  static const draw_tables t;
  return t;
}

object_type draw_type(rng& r) {
  const auto& cum = tables().cumulative;
  const double u = r.uniform() * cum.back();
  const auto it = std::upper_bound(cum.begin(), cum.end(), u);
  return object_type::from_index(static_cast<int>(std::min<std::ptrdiff_t>(it - cum.begin(), num_object_types - 1)));
}

bool has_type(const std::vector<object_type>& v, object_type t) {
  return std::find(v.begin(), v.end(), t) != v.end();
}

}  // namespace

scene make_scene(std::uint64_t seed, split which, std::uint32_t index) {
  scene s;
  s.which = which;
  s.index = index;
  s.key = scene_key(seed, which, index);
  rng r(s.key);

  const int n = 1 + static_cast<int>(r.below(max_objects));
  if (r.chance(0.2)) {
    s.digit = static_cast<int>(r.below(10));
    constexpr int corners[4] = {0, 2, 6, 8};
    s.digit_cell = corners[r.below(4)];
  }

  // Object types: n weighted draws, then the companion rules.
  std::vector<object_type> types;
  for (int i = 0; i < n; ++i) types.push_back(draw_type(r));
  for (const auto& rule : companion_rules()) {
    if (!has_type(types, rule.anchor) || has_type(types, rule.companion)) continue;
    if (!r.chance(rule.probability)) continue;
    if (static_cast<int>(types.size()) < max_objects) {
      types.push_back(rule.companion);
      continue;
    }
    // Full scene: the companion replaces an object that is neither an anchor nor a companion.
    std::vector<int> replaceable;
    for (int i = 0; i < static_cast<int>(types.size()); ++i) {
      bool keep = false;
      for (const auto& q : companion_rules()) keep = keep || types[i] == q.anchor || types[i] == q.companion;
      if (!keep) replaceable.push_back(i);
    }
    if (!replaceable.empty()) types[replaceable[r.below(static_cast<std::uint32_t>(replaceable.size()))]] = rule.companion;
  }

  // Cells: a shuffle of the cells not holding the digit.
  std::vector<int> cells;
  for (int c = 0; c < num_cells; ++c)
    if (c != s.digit_cell) cells.push_back(c);
  for (int i = static_cast<int>(cells.size()) - 1; i > 0; --i)
    std::swap(cells[i], cells[r.below(static_cast<std::uint32_t>(i + 1))]);

  const int cell_px = image_size / grid;  // 37
  for (std::size_t i = 0; i < types.size(); ++i) {
    object o;
    o.s = types[i].s;
    o.c = types[i].c;
    o.size = r.chance(0.5) ? size_class::large : size_class::small;
    o.cell = cells[i];
    const int jitter = o.size == size_class::large ? 2 : 5;
    const int row = o.cell / grid, col = o.cell % grid;
    o.cx = col * cell_px + cell_px / 2 + 1 + static_cast<int>(r.below(2 * jitter + 1)) - jitter;
    o.cy = row * cell_px + cell_px / 2 + 1 + static_cast<int>(r.below(2 * jitter + 1)) - jitter;
    s.objects.push_back(o);
  }
  std::sort(s.objects.begin(), s.objects.end(), [](const object& a, const object& b) { return a.cell < b.cell; });
  return s;
}

const prior_stats& prior_statistics() {
  static const prior_stats stats = [] {
    prior_stats p;
    p.scenes = 20000;
    std::vector<double> freq(num_object_types, 0.0);
    std::vector<std::vector<double>> co(num_object_types, std::vector<double>(num_object_types, 0.0));
    for (int i = 0; i < p.scenes; ++i) {
      const scene s = make_scene(0x5EEDC0DE5EEDC0DEull, split::train, static_cast<std::uint32_t>(i));
      std::vector<int> present;
      for (const auto& o : s.objects) {
        const int t = o.type().index();
        if (std::find(present.begin(), present.end(), t) == present.end()) present.push_back(t);
      }
      for (int a : present) {
        freq[a] += 1;
        for (int b : present)
          if (a != b) co[a][b] += 1;
      }
    }
    for (auto& f : freq) f /= p.scenes;
    for (auto& row : co)
      for (auto& v : row) v /= p.scenes;
    p.frequency = std::move(freq);
    p.cooccurrence = std::move(co);
    p.popularity.resize(num_object_types);
    std::iota(p.popularity.begin(), p.popularity.end(), 0);
    std::stable_sort(p.popularity.begin(), p.popularity.end(),
                     [&](int a, int b) { return p.frequency[a] > p.frequency[b]; });
    return p;
  }();
  return stats;
}

// ---- scenes -------------------------------------------------------------------------------------

std::string scene::id() const {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s-%06u", name(which), static_cast<unsigned>(index));
  return buf;
}
std::string scene::image_path() const {
  char buf[64];
  std::snprintf(buf, sizeof buf, "images/%s/%06u.png", name(which), static_cast<unsigned>(index));
  return buf;
}
bool scene::contains(object_type t) const noexcept {
  for (const auto& o : objects)
    if (o.type() == t) return true;
  return false;
}
int scene::count(shape sh) const noexcept {
  int n = 0;
  for (const auto& o : objects) n += o.s == sh;
  return n;
}

std::string number_word(int n) {
  static const char* words[] = {"zero", "one", "two", "three", "four", "five",
                                "six",  "seven", "eight", "nine", "ten"};
  if (n >= 0 && n <= 10) return words[n];
  return std::to_string(n);
}

std::string describe(const scene& s) {
  const int n = static_cast<int>(s.objects.size());
  std::string out = n == 1 ? "There is one object." : "There are " + number_word(n) + " objects.";
  for (const auto& o : s.objects) {
    out += " A ";
    out += name(o.size);
    out += " ";
    out += name(o.c);
    out += " ";
    out += name(o.s);
    out += " ";
    out += position_phrase(o.cell);
    out += ".";
  }
  if (s.digit >= 0) {
    out += " The digit " + std::to_string(s.digit) + " is written in the " + position_name(s.digit_cell) + " corner.";
  }
  return out;
}

}  // namespace consr_world
