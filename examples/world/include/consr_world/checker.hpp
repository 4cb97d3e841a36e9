// consr_world/checker.hpp — deciding whether a free-form answer is right (issue 13).
//
// Every rule works on a normalised answer: lower case, apostrophes dropped ("isn't" -> "isnt"),
// every other non-alphanumeric character a space ("top-left" -> "top left"), then words.
//
//   existence   parse_yes_no: the first word of the first sentence that is a yes word (yes, yeah,
//               yep, yup, correct, true) or a no word (no, not, nope, none, nothing, isnt, arent,
//               doesnt, dont, cannot, cant, neither, nor, absent) decides: "Yes, there is" -> yes,
//               "There is no red circle." -> no, "No." -> no. A non-empty first sentence with neither
//               reads as yes (POPE's reference rule: "no" only when the sentence says no/not); an
//               empty answer is unknown, which is never correct and counts as a "no" in POPE metrics.
//   colour      the first colour word not directly preceded by "not"/"no" ("It is not red but blue"
//               -> blue); synonyms: violet -> purple.
//   count       the first number, digits or words ("three", "3 objects", "a single" -> 1, "zero");
//               when there is none, "no"/"none" -> 0 ("There are no circles").
//   position    the first vertical word (top/upper, bottom/lower) and the first horizontal word
//               (left, right) give the cell; with neither, "center"/"centre"/"middle"/"central"
//               -> center ("top-left", "upper left", "in the top left corner", "middle left" -> left,
//               "top center" -> top). Relative phrases ("right of the circle") are read literally.
//   reading     the first digit 0-9, as a digit or a word ("seven").
//   description CHAIR-style object mentions: every shape word (circle/disc/disk/dot, square/
//               rectangle, triangle, star, cross, ring/donut/doughnut; singular or plural) is a
//               mention; its colour is the nearest colour word of its noun phrase (colour words and
//               size-like adjectives — small, large, big, tiny, bright, dark, ... — directly before
//               it: "a large red circle", "a red small circle"); a mention with "no", "not",
//               "without", "nor" or "neither" among the four words before it is negated and not
//               counted ("there is no green triangle"). Mentions are de-duplicated per description
//               by (shape, colour or none). A coloured mention is hallucinated when no object of that
//               shape and colour is in the scene, a colour-less one when no object of that shape is.
//               Recall = distinct (shape, colour) types of the scene named with their colour /
//               distinct types of the scene. A description is correct when it has no hallucinated
//               mention and full recall. Not handled: colours after the noun ("a circle that is red"
//               counts as a colour-less circle), coreference, counts ("two circles" when there is one
//               is not a hallucination), misplaced positions.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "consr_world/questions.hpp"
#include "consr_world/world.hpp"

namespace consr_world {

/// Lower case, apostrophes dropped, other non-alphanumerics as spaces, split into words; a sentence
/// end ('.', '!', '?', ';' or a newline) becomes the word ".".
std::vector<std::string> normalise_words(const std::string& text);

enum class yes_no { yes, no, unknown };
yes_no parse_yes_no(const std::string& answer);
std::optional<colour> parse_colour_answer(const std::string& answer);
std::optional<int> parse_count_answer(const std::string& answer);
/// The cell 0..8, or -1 when the answer names no position.
int parse_position_answer(const std::string& answer);
std::optional<int> parse_digit_answer(const std::string& answer);

struct mention {
  shape s = shape::circle;
  bool has_colour = false;
  colour c = colour::red;
  bool hallucinated = false;
};

struct description_check {
  std::vector<mention> mentions;  // distinct, in order of first appearance
  int hallucinated = 0;           // hallucinated distinct mentions
  int recalled = 0;               // distinct scene types named with their colour
  int scene_types = 0;            // distinct scene types
  bool correct() const noexcept { return hallucinated == 0 && recalled == scene_types; }
};
description_check check_description(const std::string& text, const scene& s);

struct check_result {
  bool correct = false;
  std::string parsed;  // what the checker read: "yes"/"no"/"unknown", "red", "3", "top left", "7", ""
};

/// Checks a free-form answer against a question's ground truth (the label for existence, the
/// canonical answer for colour/count/position/reading). Descriptions need the scene (throws
/// std::invalid_argument when `s` is null).
check_result check(const question& q, const std::string& answer, const scene* s = nullptr);

}  // namespace consr_world
