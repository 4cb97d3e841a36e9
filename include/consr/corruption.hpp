// consr/corruption.hpp — image corruptions of the contrastive reward (spec §3;
// paper §3.1–3.2, Appendix C Table 7): closed-form diffusion noise, random
// patch masking, mixup and random resized crop, on host views.
//
// The family in three parts (one include for all): consr/corruption/common.hpp (the checks shared
// with the CUDA twins, batch helpers, the random streams), consr/corruption/noise.hpp (schedules,
// diffusion noise), consr/corruption/image_ops.hpp (patch masking, mixup, random resized crop).
//
// Reproducibility: every random decision is a pure function of the rng_key
// (seed, offset) and the *logical* position of what it decides (element index,
// image index, patch index), so results do not depend on the thread count, on
// how a tensor is split into calls, or on its memory layout. The CUDA twins
// (include/consr/cuda/) use the same functions of consr/random.hpp.
//
// Streams used here (all under one rng_key):
//  * diffusion noise: normal i of the key = normal_at(key, i), i = the element's
//    row-major logical index plus options.element_offset;
//  * patch masks and crop boxes: uniform draws uniform_at(key, (image << 32) + k),
//    image = options.image_offset + b; patch masks use k = patch index < 2^31,
//    crop boxes k = 2^31 + 4·attempt + {0, 1, 2, 3}. Uniform draws live in a
//    counter range disjoint from the normals.
#pragma once

#include "corruption/common.hpp"
#include "corruption/image_ops.hpp"
#include "corruption/noise.hpp"
