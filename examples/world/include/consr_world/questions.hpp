// consr_world/questions.hpp — questions with ground truth about a scene (issue 13).
//
// Types (canonical answers are short, answer-only: "Yes.", "No.", "Red.", "3.", "Top left.", "7."):
//   existence   "Is there a red circle in the image?"  -> "Yes." / "No."; balanced: per POPE split
//               (random, popular, adversarial) `existence_per_split` positives and as many negatives.
//               Negatives as POPE samples them: random = any absent type; popular = the absent types
//               most frequent overall (prior_statistics().popularity); adversarial = the absent types
//               that co-occur most with the present ones (sum of co-occurrence shares) — for an
//               anchor, its companion when the companion did not come.
//   colour      "What colour is the square?"          (only for a shape unique in the scene)
//   count       "How many objects are there?" or "How many circles are there?" (may be 0) -> "3."
//   position    "Where is the blue square?"           (only for a colour+shape unique in the scene)
//   reading     "What digit is written in the image?" (only when the image has a digit) -> "7."
//   description "Describe the image in detail."      -> describe(scene)
#pragma once

#include <string>
#include <vector>

#include "consr_world/world.hpp"

namespace consr_world {

enum class question_type { existence, colour, count, position, reading, description };
inline constexpr int num_question_types = 6;
const char* name(question_type t) noexcept;
bool parse_question_type(const std::string& word, question_type& out);

enum class pope_split { random, popular, adversarial };
const char* name(pope_split p) noexcept;
bool parse_pope_split(const std::string& word, pope_split& out);

struct question {
  std::string id;        // "<split>-<index6>-<q>"
  std::string scene;     // "<split>-<index6>"
  std::string image;     // "images/<split>/<index6>.png"
  std::string prompt;
  std::string answer;    // canonical
  question_type type = question_type::existence;
  // existence only
  std::string label;       // "yes" / "no"
  std::string pope;        // "random" / "popular" / "adversarial"
  // the structured ground truth the checker uses
  object_type target{};    // existence, position: the object; colour/count: target.s
  bool count_all = false;  // count: "How many objects"
  int number = 0;          // count: the count; reading: the digit
  int cell = -1;           // position: the cell
};

struct question_options {
  bool enabled[num_question_types] = {true, true, true, true, true, true};
  int existence_per_split = 1;    // positives (and as many negatives) per POPE split and image
  int max_per_image = 0;          // 0: no cap; otherwise keep this many (yes/no pairs stay together)
};

/// The questions about one scene; deterministic in (scene key, options).
std::vector<question> make_questions(const scene& s, const question_options& options = {});

}  // namespace consr_world
