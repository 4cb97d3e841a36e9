// consr_runtime/weights.hpp — copy a checkpoint's tensors into a torch::nn::Module by the hub's
// parameter names, accepting the legacy and the newer transformers prefixes.
#pragma once

#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "consr_runtime/error.hpp"
#include "consr_runtime/safetensors.hpp"

namespace consr_runtime {

/// Maps module names to checkpoint names: a module parameter named  <module_prefix><rest>  is looked
/// up as  <checkpoint_prefix><rest>  for each of `checkpoint_prefixes`, in order (the first present
/// wins). E.g. {"language_model.", {"model.language_model.", "language_model.model."}}.
/// An empty module_prefix matches every name; among the bindings whose prefix matches, the longest wins.
struct weight_binding {
  std::string module_prefix;
  std::vector<std::string> checkpoint_prefixes;
};

struct load_options {
  /// Checkpoint tensors matching any of these ECMAScript regexes (std::regex_search, as transformers'
  /// _keys_to_ignore_on_load_unexpected) may stay unconsumed.
  std::vector<std::string> ignore_extra;
  /// Module parameters / buffers matching any of these regexes (searched in the module name) are
  /// left as they are when the checkpoint has no tensor for them (e.g. a buffer computed at
  /// construction, or an output projection tied to the embedding).
  std::vector<std::string> ignore_missing;
};

/// Loads every parameter and buffer of `module` (recursively, named as `named_parameters()` /
/// `named_buffers()` name them) from `ck`, converting to the parameter's dtype and copying in place
/// (under NoGradGuard), so the module's registrations, devices and requires_grad stay as they are.
/// Everything is validated before anything is copied: on error `module` is unchanged.
/// Throws runtime_error naming (a) each module tensor that no binding covers or that is missing from
/// the checkpoint under every candidate name (listing the names tried), (b) each tensor whose shape
/// differs (both shapes), (c) each checkpoint tensor no module tensor consumed and no `ignore_extra`
/// regex matches, and (d) an invalid regex.
void load_weights(torch::nn::Module& module, const checkpoint& ck, const std::vector<weight_binding>& bindings,
                  const load_options& options = {});

}  // namespace consr_runtime
