// consr/consr.hpp — the whole host library in one include.
//
// Core vocabulary (views, traits, errors, numeric types) and one header per
// algorithm family. Backend adapters (consr/adapters/*.hpp) and the CUDA
// backend (consr/cuda/*.cuh, nvcc only) are included separately.
#pragma once

#include "config.hpp"
#include "error.hpp"
#include "numeric.hpp"
#include "traits.hpp"
#include "view.hpp"

#include "corruption.hpp"  // spec §3: diffusion noise, patch mask, mixup, resized crop
#include "dpo.hpp"         // spec §7: standard DPO and the ConSR loss, visual weights
#include "linear_logprobs.hpp"  // spec §4: log-probs from hidden states x projection, no N x V logits
#include "logprobs.hpp"    // spec §4: token log-probs forward/backward
#include "pairs.hpp"       // spec §6: preference-pair selection
#include "random.hpp"      // spec §3: Philox4x32-10 counter-based normals
#include "reductions.hpp"  // spec §2: segmented reductions over packed sequences
#include "reward.hpp"      // spec §5: sequence probabilities and the contrastive reward
