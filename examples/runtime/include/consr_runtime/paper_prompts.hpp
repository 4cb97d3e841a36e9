// paper_prompts.hpp — the three prompt templates of ConSR App. B.1, word for word (the paper's
// "inlucde" typo kept, spec §9), in one place for the pipeline (examples/04) and for training the
// tiny models on the same formats (examples/06).
#pragma once

namespace consr_runtime::paper_prompts {

/// The description prompt.
inline constexpr const char* description =
    "Describe the given image in detail. Compress the description in one paragraph. Please inlucde all "
    "foreground and background contents such object types, colors, states, actions, number of objects, precise "
    "object locations, texts or OCR results, relationships and relative positions between objects, environment, "
    "background, time, weather, etc. In case of non-real-world scenes, like charts, graphs, tables, etc., please "
    "describe the table, mention all numbers (if any), mention the written text, and all other details.";

/// The revision prompt. The paper prints the three slot labels on their own lines after the
/// instruction; the filled-in values follow each label (decision, docs/pipeline.md).
inline constexpr const char* revision =
    "You are given an image, its description, a question or an instruction about the image, and your original "
    "response. Carefully review all information, and revise your original response only if necessary to make it "
    "more accurate and clearly grounded in the image or description. Preserve the original phrasing and structure "
    "as much as possible. If the original response is already correct, leave it unchanged. Do not invent details "
    "not supported by the image. Provide the final revised response without any prefix directly.\n\n"
    "Description: {Description}\n\nQuestion: {Question}\n\nOriginal Response: {Original Response}";

/// The enriched prompt x'.
inline constexpr const char* enriched =
    "For your reference, the input image can be described as follows: {Image Description} {Original Prompt}";

}  // namespace consr_runtime::paper_prompts
