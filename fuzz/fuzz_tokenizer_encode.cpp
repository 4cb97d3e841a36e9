// libFuzzer harness: the pre-tokenizer regex (PCRE2 with UTF + UCP), NFC normalisation, added-token
// matching and byte-level BPE of the Qwen2 tokenizer fixture, on arbitrary text. Valid UTF-8 must
// encode; the ids must decode; invalid UTF-8 must be refused with runtime_error.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "consr_runtime/error.hpp"
#include "consr_runtime/tokenizer.hpp"
#include "fuzz_common.hpp"

namespace {
const consr_runtime::tokenizer& fixture_tokenizer() {
  static const auto tok = consr_runtime::tokenizer::from_file(consr_fuzz::fixtures_dir() + "/tokenizer/tokenizer.json");
  return tok;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto& tok = fixture_tokenizer();
  const std::string text = consr_fuzz::as_string(data, size);
  std::vector<std::int64_t> ids;
  try {
    ids = tok.encode(text);
  } catch (const consr_runtime::runtime_error&) {
    return 0;  // invalid UTF-8
  }
  for (auto id : ids)
    if (id < 0 || id >= tok.vocab_size()) std::abort();
  (void)tok.decode(ids);
  return 0;
}
