// libFuzzer harness: tokenizer.json (consr_runtime::tokenizer::from_file: model, merges, vocab,
// normalizer, pre-tokenizer, decoder, added tokens). A tokenizer that loads must encode and decode.
#include <cstddef>
#include <cstdint>

#include "consr_runtime/error.hpp"
#include "consr_runtime/tokenizer.hpp"
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = consr_fuzz::write_scratch("tokenizer.json", data, size);
  try {
    const auto tok = consr_runtime::tokenizer::from_file(path);
    const auto ids = tok.encode("Hello, world! 你好 <|im_start|>user\n123  \t x\u00e9");
    (void)tok.decode(ids);
    (void)tok.decode(ids, /*skip_special=*/true);
    (void)tok.vocab_size();
  } catch (const consr_runtime::runtime_error&) {
  }
  return 0;
}
