// consr_world/world.hpp — a deterministic synthetic visual world with ground truth (issue 13).
//
// Every image is a pure function of (seed, split, index): a counter-based generator (splitmix64
// over a key derived from the three) draws the scene, and the renderer uses only integer
// arithmetic, so the pixels are the same on every compiler, standard library and machine.
//
// A scene: a 112 x 112 RGB image, a 3 x 3 grid of cells (about 37 px), 1 to 5 objects (at most
// one per cell), each a shape x colour x size, on a textured background (base tint, stripes,
// low-contrast clutter lines, per-pixel noise); about 20 % of the images also carry a printed
// digit 0-9 (built-in 5 x 7 bitmap font, scaled x3) in a corner cell kept free of objects.
//
// The language prior (what a model can learn to hallucinate from): the object types below are
// sampled with weights (anchors 3, every other type 1) and each "companion rule" adds the
// companion of an anchor that is present with probability 0.8 (see companion_rules()). So a red
// circle usually comes with a blue square, a yellow star with a green triangle, a purple ring with
// an orange cross and a white cross with a purple circle. POPE's "popular" and "adversarial"
// negatives are ranked with the frequency and co-occurrence statistics of prior_statistics().
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace consr_world {

// ---- vocabulary ---------------------------------------------------------------------------------

enum class shape : std::uint8_t { circle, square, triangle, star, cross, ring };
enum class colour : std::uint8_t { red, green, blue, yellow, purple, orange, white };
enum class size_class : std::uint8_t { small, large };
enum class split : std::uint8_t { train, validation, test };

inline constexpr int num_shapes = 6;
inline constexpr int num_colours = 7;
inline constexpr int num_object_types = num_shapes * num_colours;  // shape x colour
inline constexpr int image_size = 112;
inline constexpr int grid = 3;
inline constexpr int num_cells = grid * grid;
inline constexpr int max_objects = 5;

const char* name(shape s) noexcept;         // "circle"
const char* plural(shape s) noexcept;       // "circles"
const char* name(colour c) noexcept;        // "red"
const char* name(size_class s) noexcept;    // "small"
const char* name(split s) noexcept;         // "train", "validation", "test"
/// Cell 0..8 (row-major) -> "top left", "top", "top right", "left", "center", "right",
/// "bottom left", "bottom", "bottom right".
const char* position_name(int cell) noexcept;
/// The phrase a description uses: "at the top left", "on the left", "in the center", ...
const char* position_phrase(int cell) noexcept;
/// The RGB of a colour (before the small per-object jitter).
std::array<std::uint8_t, 3> rgb(colour c) noexcept;

bool parse_shape(const std::string& word, shape& out);     // singular or plural
bool parse_colour(const std::string& word, colour& out);
bool parse_split(const std::string& word, split& out);

/// An object type: shape x colour (size is an attribute, not part of the type).
struct object_type {
  shape s = shape::circle;
  colour c = colour::red;
  int index() const noexcept { return static_cast<int>(s) * num_colours + static_cast<int>(c); }
  static object_type from_index(int i) noexcept {
    return {static_cast<shape>(i / num_colours), static_cast<colour>(i % num_colours)};
  }
  std::string text() const;  // "red circle"
  friend bool operator==(object_type a, object_type b) noexcept { return a.s == b.s && a.c == b.c; }
  friend bool operator!=(object_type a, object_type b) noexcept { return !(a == b); }
};

// ---- the co-occurrence prior --------------------------------------------------------------------

struct companion_rule {
  object_type anchor;
  object_type companion;
  double probability;  // P(companion added | anchor present and companion not yet present)
};
/// The documented prior: four anchor -> companion rules, probability 0.8 each.
const std::vector<companion_rule>& companion_rules();
/// The sampling weight of an object type (anchors 3, the rest 1).
double type_weight(object_type t) noexcept;

/// Frequency and co-occurrence of the object types, measured once on 20,000 scenes drawn with a
/// fixed internal seed (deterministic; independent of the user's seed).
struct prior_stats {
  std::vector<double> frequency;                 // [type]: share of scenes containing the type
  std::vector<std::vector<double>> cooccurrence; // [a][b]: share of scenes containing both
  std::vector<int> popularity;                   // type indices, most frequent first
  int scenes = 0;
};
const prior_stats& prior_statistics();

// ---- scenes -------------------------------------------------------------------------------------

struct object {
  shape s = shape::circle;
  colour c = colour::red;
  size_class size = size_class::small;
  int cell = 0;     // 0..8, row-major on the 3 x 3 grid
  int cx = 0, cy = 0;  // centre in pixels (cell centre plus a small jitter)
  object_type type() const noexcept { return {s, c}; }
};

struct scene {
  split which = split::train;
  std::uint32_t index = 0;
  std::uint64_t key = 0;          // the counter-based generator's key for this image
  std::vector<object> objects;    // sorted by cell
  int digit = -1;                 // -1: no digit
  int digit_cell = -1;            // a corner cell (0, 2, 6, 8) when digit >= 0
  std::string id() const;         // "<split>-<index 6 digits>"
  std::string image_path() const; // "images/<split>/<index 6 digits>.png"
  bool contains(object_type t) const noexcept;
  int count(shape s) const noexcept;
};

/// The key of (seed, split, index): distinct splits and indices give unrelated streams.
std::uint64_t scene_key(std::uint64_t seed, split which, std::uint32_t index) noexcept;
/// Draws the scene of (seed, split, index).
scene make_scene(std::uint64_t seed, split which, std::uint32_t index);

/// An 8-bit RGB image, rows top to bottom, 3 bytes per pixel.
struct image {
  int width = image_size;
  int height = image_size;
  std::vector<std::uint8_t> rgb;
};
/// Renders a scene (a pure function of the scene, its key included).
image render(const scene& s);

/// The canonical description: "There are three objects. A large red circle at the top left. ..."
/// plus "The digit 7 is written in the bottom right corner." when there is a digit.
std::string describe(const scene& s);
/// "one" .. "ten" for 1..10, the digits otherwise.
std::string number_word(int n);

// ---- the random generator -----------------------------------------------------------------------

/// splitmix64 used as a counter-based generator: output k is mix(key + k * golden), a pure function
/// of (key, k). Integer draws use the high bits (no modulo bias worth speaking of, no <random>).
struct rng {
  std::uint64_t state;
  explicit rng(std::uint64_t key) noexcept : state(key) {}
  std::uint64_t next() noexcept;
  /// Uniform in [0, n) (n >= 1).
  std::uint32_t below(std::uint32_t n) noexcept;
  /// Uniform in [0, 1).
  double uniform() noexcept;
  bool chance(double p) noexcept { return uniform() < p; }
};
std::uint64_t mix64(std::uint64_t x) noexcept;

}  // namespace consr_world
