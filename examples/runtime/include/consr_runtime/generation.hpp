// consr_runtime/generation.hpp — sampling (temperature, top-p, stop tokens, batches, seeded) and
// teacher-forced per-token log-probs of a given response under a given (prompt, image): the
// primitive of ConSR's three scoring conditions (spec §5, eqs. 1–3).
//
// Reproducibility: every random draw is a pure function of (seed, the row's sample key, the step):
// a counter-based generator (`counter_uniform`), not a stateful stream. A row's tokens therefore do
// not depend on which other rows share its batch, on their order or on when they finish — as long
// as the row's logits are the same. (Batched logits equal one-by-one logits up to floating-point
// rounding; a draw that falls within rounding of a top-p or CDF boundary may then differ. Greedy
// decoding is exactly batch-independent unless two logits tie within rounding.)
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include <torch/types.h>

#include "consr_runtime/models.hpp"
#include "consr_runtime/tokenizer.hpp"

namespace consr_runtime {

/// One prompt: token ids with the image placeholders already expanded (one run per image), and
/// the processed images of this prompt in placeholder order (or none).
struct prompt_input {
  std::vector<std::int64_t> input_ids;
  image_inputs images;
};

/// Left-pads `prompts` into one batch: input_ids [B, L] (padding = `pad_token_id`), attention_mask
/// [B, L], and the images concatenated in row order along dim 0 (pixel_values, image_grid_thw,
/// image_sizes, features). All prompts
/// must carry images of the same kind (all pixel_values, all features, or none). Throws
/// runtime_error naming 'prompts' on an empty list, an empty prompt or mixed image kinds.
model_inputs collate(const std::vector<prompt_input>& prompts, std::int64_t pad_token_id);

/// A uniform double in [0, 1) that depends only on (seed, stream, counter): splitmix64-style
/// mixing of the three, 53 random bits. Used for sampling (stream = sample key, counter = step) and
/// for LoRA initialisation.
double counter_uniform(std::uint64_t seed, std::uint64_t stream, std::uint64_t counter);

/// Generation settings. Greedy when temperature == 0 (HF do_sample=False).
struct sampling_options {
  std::int64_t max_new_tokens = 128;  ///< ≥ 0
  double temperature = 1.0;           ///< ≥ 0; logits are divided by it before top-p
  double top_p = 1.0;                 ///< in (0, 1]; HF TopP: keep the smallest set of most likely tokens whose probability sums to ≥ top_p (at least one)
  std::vector<std::int64_t> stop_token_ids;  ///< e.g. <|im_end|>, <|endoftext|>: generation of a row ends on one
  std::uint64_t seed = 0;
  std::int64_t pad_token_id = 0;      ///< fills left padding (masked out; any id in the vocabulary)
};

/// The end-of-turn tokens both chat models stop on: the ids of "<|im_end|>" and "<|endoftext|>"
/// that `tok` has (facts §4), in that order.
std::vector<std::int64_t> chat_stop_token_ids(const tokenizer& tok);

/// Picks the next token from one row of logits [V] (any float dtype, any device): argmax (first
/// maximum) when temperature == 0, else a draw with uniform `u` ∈ [0, 1) from softmax(logits / T)
/// restricted to the top-p nucleus (computed in double; among equal probabilities the higher id
/// ranks first, as in HF's stable ascending sort — so on exact ties a tiny top_p keeps the last of
/// the tied maxima while greedy takes the first). Throws
/// runtime_error naming the option on temperature < 0, top_p ∉ (0, 1], or non-finite logits.
std::int64_t sample_token(const torch::Tensor& logits, double temperature, double top_p, double u);

/// Why a row stopped.
enum class finish_reason {
  stop_token,     ///< produced one of stop_token_ids (not included in token_ids)
  length,         ///< max_new_tokens reached
  context_full,   ///< max_position_embeddings reached
};

struct generation_result {
  std::vector<std::int64_t> token_ids;     ///< generated tokens, without the stop token
  std::optional<std::int64_t> stop_token;  ///< the stop token that ended the row, if any
  finish_reason reason = finish_reason::length;
};

/// Generates a continuation of every prompt, all rows in one batch with a shared KV cache
/// (finished rows are dropped from the batch). When the prompts have the same images and share
/// leading tokens that hold every image token (one image and several questions, or the revision
/// prompts of one item), that prefix is prefilled once and its KV cache copied to every row; the
/// result equals the unshared batch up to rounding. Row i draws its randomness from
/// (options.seed, sample_keys[i]); `sample_keys` defaults to 0, 1, ..., B−1 and must otherwise have
/// one key per prompt. Throws runtime_error naming the option or 'prompts' on bad input, or as the
/// model does (e.g. a prompt longer than the context).
std::vector<generation_result> generate(vision_language_model& model, const std::vector<prompt_input>& prompts,
                                        const sampling_options& options, const std::vector<std::uint64_t>& sample_keys = {});

/// `num_samples` samples of one prompt, batched, with the shared prefix computed once: the prompt
/// (and its image) is prefilled once and its KV cache copied to every sample's row. Sample k uses
/// key `first_key + k`, so a sample does not depend on how many are drawn at once. Equal to
/// `generate` over copies of the prompt up to rounding.
std::vector<generation_result> generate_samples(vision_language_model& model, const prompt_input& prompt,
                                                std::int64_t num_samples, const sampling_options& options,
                                                std::uint64_t first_key = 0);

/// Per-token log-probs of responses, concatenated: row i's tokens are
/// [offsets[i], offsets[i + 1]). `logprobs` is fp32 and carries autograd when grad mode is on.
struct response_logprobs_batch {
  torch::Tensor logprobs;                          ///< fp32 [Σ T_i]
  std::vector<std::int64_t> offsets;               ///< B + 1 entries
  std::vector<std::vector<std::int64_t>> token_ids;  ///< the scored tokens of each row
};

/// log_softmax(logits(hidden))[target] in fp32 for rows of final-normed hidden states [N, hidden]
/// and their N target ids, with autograd: through consr's memory-bounded linear log-probs
/// (`consr::libtorch::linear_token_logprobs`: vocabulary chunks, never the N × V logits) when the
/// output projection is a plain weight; through the logits when a LoRA adapter sits on lm_head, or
/// on CUDA when consr's CUDA kernels are not compiled into the program. Throws runtime_error naming
/// 'hidden' when its rows and the targets differ in number.
torch::Tensor token_logprobs_of(vision_language_model& model, const torch::Tensor& hidden,
                                const std::vector<std::int64_t>& targets);

/// Teacher forcing (facts §4, spec §5): for each row builds prompt + response (+ end_of_turn_id,
/// appended unless the response already ends with it or end_of_turn_id < 0 — the spec's decision
/// is to include it), runs one forward over the left-padded batch and returns
/// log_softmax(logits[t − 1])[id_t] in fp32 for every response position t. Only the response
/// positions go through lm_head. Throws runtime_error naming 'prompts' / 'responses' on an empty
/// prompt, a count mismatch or an id outside the vocabulary.
response_logprobs_batch teacher_forced_logprobs(vision_language_model& model, const std::vector<prompt_input>& prompts,
                                                const std::vector<std::vector<std::int64_t>>& responses,
                                                std::int64_t end_of_turn_id, std::int64_t pad_token_id = 0);

/// One scored response.
struct scored_response {
  std::vector<std::int64_t> token_ids;  ///< the scored tokens (response + end-of-turn)
  std::vector<float> logprobs;          ///< log π(token_t | prefix), one per token
};

/// teacher_forced_logprobs without autograd, in batches of at most `batch_size` rows.
std::vector<scored_response> score_responses(vision_language_model& model, const std::vector<prompt_input>& prompts,
                                             const std::vector<std::vector<std::int64_t>>& responses,
                                             std::int64_t end_of_turn_id, std::int64_t batch_size = 8,
                                             std::int64_t pad_token_id = 0);

/// score_responses for responses that all follow one prompt (ConSR's scoring: 15 candidates under
/// one condition), with the shared prefix computed once: the prompt (and its image) is prefilled
/// once, and each batch of at most `batch_size` responses is teacher-forced against copies of that
/// KV cache (`vision_language_model::extend_hidden`), so the prompt's tokens go through the decoder
/// once instead of once per response. Equal to score_responses over `responses.size()` copies of
/// `prompt` up to rounding. Throws runtime_error naming 'prompt' / 'responses' / 'batch_size' /
/// 'end_of_turn_id' as score_responses does, and 'responses' on an image token in a response.
std::vector<scored_response> score_responses_shared(vision_language_model& model, const prompt_input& prompt,
                                                    const std::vector<std::vector<std::int64_t>>& responses,
                                                    std::int64_t end_of_turn_id, std::int64_t batch_size = 8,
                                                    std::int64_t pad_token_id = 0);

}  // namespace consr_runtime
