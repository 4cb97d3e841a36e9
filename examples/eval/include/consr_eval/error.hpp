// consr_eval/error.hpp — the one exception type of the evaluation library.
#pragma once

#include <stdexcept>
#include <string>

namespace consr_eval {

/// Every failure of consr_eval (a missing model or adapter directory, a malformed questions file,
/// an image that does not decode, an option out of range) is an `error` whose message starts with
/// the function and names the argument, file, line or question concerned, e.g.
///   "consr_eval::load_questions: argument 'path': '/d/val.jsonl' line 3: not valid JSON: ..."
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace consr_eval
