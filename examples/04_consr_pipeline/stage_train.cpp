// Stage 5, train: LoRA on the language model with the ConSR loss (spec §7, eq. 14) through
// consr::libtorch::dpo_loss and AdamW (warmup + cosine/constant schedule, gradient-norm clipping), on
// the pairs of report.json; optionally a validation loss per epoch on the pairs of another run's
// report (--validation-report) with early stopping; the adapter in PEFT's format
// → train_log.json + adapter/.
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <limits>

#include <consr/adapters/torch.hpp>

#include "consr_runtime/lora.hpp"
#include "stages.hpp"

namespace consr_pipeline {
namespace {

namespace lt = consr::libtorch;

json train_settings(const run_context& ctx) {
  const options& o = ctx.o;
  json j = artefact_store::settings_base(stage::train);
  j["upstream"] = {{"report", ctx.store.content_hash(files::report)}};
  j["model"] = ctx.model_identity;
  j["seed"] = o.seed;
  j["lora"] = {{"rank", o.lora_rank}, {"alpha", o.lora_alpha}, {"targets", o.lora_targets}, {"naming", o.lora_naming}};
  j["learning_rate"] = o.learning_rate;
  j["weight_decay"] = o.weight_decay;
  j["epochs"] = o.epochs;
  j["max_steps"] = o.max_steps;
  // The global batch (ranks × per-rank batch): 2 ranks × 1 and 1 rank × 2 train the same steps.
  j["batch_size"] = o.batch_size * ctx.dist->size();
  j["schedule"] = {{"lr_schedule", o.lr_schedule}, {"warmup_ratio", o.warmup_ratio}, {"max_grad_norm", o.max_grad_norm}};
  if (!o.validation_report.empty())
    j["validation"] = {{"report", fnv1a_hex(read_file(o.validation_report, "--validation-report"))},
                       {"early_stop_patience", o.early_stop_patience}};
  j["loss"] = {{"type", o.loss_type},
               {"beta", o.beta},
               {"length_normalize", o.length_normalize},
               {"visual_weights", o.visual_weights},
               {"visual_alpha", o.visual_alpha},
               {"clip_lo", o.clip_lo},
               {"clip_hi", o.clip_hi},
               {"scale_by_beta", o.scale_by_beta}};
  return j;
}

struct train_pair {
  std::string image;   // absolute path
  std::string prompt;  // the user prompt (placeholders removed)
  std::vector<std::int64_t> chosen, rejected;  // scored tokens (end-of-turn included)
  torch::Tensor chosen_weights, rejected_weights;  // visual weights (eqs. 12-13), float [T]
  torch::Tensor chosen_reference, rejected_reference;  // policy at LoRA init, float [T]
};

// Token log-probs of `responses` after the prompt, with autograd when enabled: one left-padded
// forward, hidden states of the response positions only through lm_head, then consr's
// token_logprobs (spec §4; fused backward). On a CUDA device without consr's CUDA kernels linked
// in, ATen's log_softmax + gather.
std::vector<torch::Tensor> response_logprobs(model_context& m, const cr::prompt_input& prompt,
                                             const std::vector<std::vector<std::int64_t>>& responses) {
  std::vector<cr::prompt_input> rows;
  for (const auto& r : responses) {
    cr::prompt_input p = prompt;
    p.input_ids.insert(p.input_ids.end(), r.begin(), r.end());
    rows.push_back(std::move(p));
  }
  cr::model_inputs in = cr::collate(rows, 0);
  const std::int64_t len = in.input_ids.size(1);
  std::vector<std::int64_t> index, targets;
  for (std::size_t b = 0; b < responses.size(); ++b) {
    const std::int64_t t = static_cast<std::int64_t>(responses[b].size());
    for (std::int64_t k = 0; k < t; ++k) {
      index.push_back(static_cast<std::int64_t>(b) * len + (len - t) + k - 1);  // position t−1 predicts t
      targets.push_back(responses[b][static_cast<std::size_t>(k)]);
    }
  }
  const torch::Device device = m.model->device();
  torch::Tensor hidden = m.model->forward_hidden(in);
  torch::Tensor picked = hidden.reshape({-1, hidden.size(2)}).index_select(0, torch::tensor(index).to(device));
  // Hidden states → log-probs without the [tokens × vocabulary] logits (consr's linear log-probs).
  torch::Tensor logp = cr::token_logprobs_of(*m.model, picked, targets);
  logp = logp.to(torch::kCPU);  // the DPO loss runs on the host (per-token vectors only)
  std::vector<torch::Tensor> out;
  std::int64_t start = 0;
  for (const auto& r : responses) {
    out.push_back(logp.narrow(0, start, static_cast<std::int64_t>(r.size())));
    start += static_cast<std::int64_t>(r.size());
  }
  return out;
}

cr::prompt_input train_prompt(run_context& ctx, const train_pair& pair) {
  const normalized_image image = ctx.normalize(pair.image);
  std::int64_t tokens = 0;
  cr::prompt_input p;
  p.images = ctx.with_features(ctx.pack(image.pixels, image.hw, tokens));  // the vision tower is frozen
  p.input_ids = ctx.encode_prompt(pair.prompt, tokens);
  return p;
}

// The pairs of a report (this run's, or --validation-report's), with their visual weights (eqs.
// 12-13) from the clean vs corrupt token log-probs of stage 3, computed without gradient.
std::vector<train_pair> pairs_of_report(const json& report, const options& o, const std::vector<item>* items,
                                     const std::string& what) {
  consr::visual_weight_options wopt;
  wopt.alpha = o.visual_alpha;
  wopt.clip_lo = o.clip_lo;
  wopt.clip_hi = o.clip_hi;
  std::vector<train_pair> pairs;
  for (const auto& pr : report.at("pairs")) {
    train_pair p;
    const std::size_t i = pr.at("item").get<std::size_t>();
    if (items) {
      p.image = items->at(i).image;
      p.prompt = items->at(i).prompt;
    } else {
      const json& it = report.at("items").at(i);
      p.image = it.at("image").get<std::string>();
      p.prompt = it.at("prompt").get<std::string>();
      if (!std::filesystem::is_regular_file(p.image))
        fail("argument '" + what + "': pair of item " + std::to_string(i) + ": image '" + p.image + "' does not exist");
    }
    const auto side = [&](const json& s, std::vector<std::int64_t>& ids, torch::Tensor& weights, consr::weight_side ws) {
      ids = s.at("token_ids").get<std::vector<std::int64_t>>();
      const torch::Tensor clean = torch::tensor(s.at("logp_clean").get<std::vector<float>>());
      const torch::Tensor corrupt = torch::tensor(s.at("logp_corrupt").get<std::vector<float>>());
      weights = lt::visual_weights(clean, corrupt, ws, wopt);
    };
    side(pr.at("chosen"), p.chosen, p.chosen_weights, consr::weight_side::chosen);
    side(pr.at("rejected"), p.rejected, p.rejected_weights, consr::weight_side::rejected);
    pairs.push_back(std::move(p));
  }
  return pairs;
}

// transformers' get_{cosine,constant}_schedule_with_warmup factor at optimizer step `step` (0-based):
// step / W during the W warmup steps, then ½(1 + cos(π·progress)) or 1.
double lr_factor(const options& o, std::int64_t step, std::int64_t total) {
  const auto warmup = static_cast<std::int64_t>(std::ceil(o.warmup_ratio * static_cast<double>(total)));
  if (step < warmup) return static_cast<double>(step) / static_cast<double>(std::max<std::int64_t>(1, warmup));
  if (o.lr_schedule == "constant") return 1.0;
  const double progress =
      static_cast<double>(step - warmup) / static_cast<double>(std::max<std::int64_t>(1, total - warmup));
  return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress)));
}

consr::dpo_options dpo_opts(const options& o) {
  consr::dpo_options d;
  d.loss = consr::parse_dpo_loss_type(o.loss_type);
  d.beta = o.beta;
  d.length_normalize = o.length_normalize;
  d.visual_weights = o.visual_weights;
  d.scale_by_beta = o.scale_by_beta;
  return d;
}

// The ConSR / DPO loss of one pair (padded [1, T] sides) and its 8 metrics.
lt::dpo_result pair_loss(const options& o, const train_pair& p, const torch::Tensor& chosen_logp,
                         const torch::Tensor& rejected_logp) {
  lt::dpo_side c, r;
  c.policy_logp = chosen_logp.unsqueeze(0);
  c.reference_logp = p.chosen_reference.unsqueeze(0);
  c.weights = p.chosen_weights.unsqueeze(0);
  r.policy_logp = rejected_logp.unsqueeze(0);
  r.reference_logp = p.rejected_reference.unsqueeze(0);
  r.weights = p.rejected_weights.unsqueeze(0);
  return lt::dpo_loss(c, r, dpo_opts(o));
}

json metric_means(const std::vector<std::array<double, lt::dpo_metric_count>>& rows) {
  json j;
  for (int k = 0; k < lt::dpo_metric_count; ++k) {
    double s = 0;
    for (const auto& row : rows) s += row[static_cast<std::size_t>(k)];
    j[lt::to_string(static_cast<lt::dpo_metric>(k))] = rows.empty() ? std::nan("") : s / static_cast<double>(rows.size());
  }
  return j;
}

std::array<double, lt::dpo_metric_count> metric_row(const lt::dpo_result& res) {
  std::array<double, lt::dpo_metric_count> row{};
  torch::Tensor m = res.metrics.to(torch::kCPU, torch::kFloat64).contiguous();
  for (int k = 0; k < lt::dpo_metric_count; ++k) row[static_cast<std::size_t>(k)] = m[0][k].item<double>();
  return row;
}

using metric_rows = std::vector<std::array<double, lt::dpo_metric_count>>;

// Data parallel: pair j is computed by rank j % ranks.
bool mine(const run_context& ctx, std::size_t j) {
  return j % static_cast<std::size_t>(ctx.dist->size()) == static_cast<std::size_t>(ctx.dist->rank());
}

// Rows that each rank filled for its own pairs (zeros elsewhere), summed over the ranks: every rank
// ends with every row, exactly (x + 0 = x).
void share_rows(run_context& ctx, metric_rows& rows, const std::string& what) {
  if (ctx.dist->size() == 1 || rows.empty()) return;
  const auto n = static_cast<std::int64_t>(rows.size());
  std::vector<torch::Tensor> t{torch::empty({n, lt::dpo_metric_count}, torch::kFloat64)};
  auto a = t[0].accessor<double, 2>();
  for (std::int64_t i = 0; i < n; ++i)
    for (int k = 0; k < lt::dpo_metric_count; ++k) a[i][k] = rows[static_cast<std::size_t>(i)][static_cast<std::size_t>(k)];
  ctx.dist->all_reduce_sum(t, what);
  for (std::int64_t i = 0; i < n; ++i)
    for (int k = 0; k < lt::dpo_metric_count; ++k) rows[static_cast<std::size_t>(i)][static_cast<std::size_t>(k)] = a[i][k];
}

metric_rows evaluate(run_context& ctx, std::vector<train_pair>& pairs, const std::string& what) {
  const options& o = ctx.o;
  model_context& m = ctx.model();
  torch::NoGradGuard no_grad;
  metric_rows rows(pairs.size());
  for (std::size_t j = 0; j < pairs.size(); ++j) {
    if (!mine(ctx, j)) continue;
    train_pair& p = pairs[j];
    const cr::prompt_input prompt = train_prompt(ctx, p);
    auto lp = response_logprobs(m, prompt, {p.chosen, p.rejected});
    rows[j] = metric_row(pair_loss(o, p, lp[0], lp[1]));
  }
  share_rows(ctx, rows, what);
  return rows;
}

std::string train(run_context& ctx, const stage_run& run) {
  const options& o = ctx.o;
  const json report = ctx.store.read(files::report);
  const json& report_pairs = report.at("pairs");
  if (report_pairs.empty())
    fail("stage 'train': report.json has no preference pairs to train on (see its selection_report)");
  model_context& m = ctx.model();
  std::vector<train_pair> pairs = pairs_of_report(report, o, &ctx.items, "report.json");
  std::vector<train_pair> val_pairs;
  if (!o.validation_report.empty()) {
    const json vr = json::parse(read_file(o.validation_report, "--validation-report"), nullptr, false);
    if (vr.is_discarded() || !vr.is_object() || !vr.contains("pairs") || !vr.contains("items"))
      fail("argument '--validation-report': '" + o.validation_report + "' is not a pipeline report.json");
    if (vr.value("model", json()) != ctx.model_identity)
      fail("argument '--validation-report': '" + o.validation_report +
                                          "' was scored by another model (its 'model' differs from this run's)");
    val_pairs = pairs_of_report(vr, o, nullptr, "--validation-report");
    if (val_pairs.empty()) fail("argument '--validation-report': '" + o.validation_report + "' has no pairs");
  }

  cr::lora_config lora;
  lora.rank = o.lora_rank;
  lora.alpha = o.lora_alpha;
  lora.target_modules = o.lora_targets;
  lora.seed = o.seed;
  const std::vector<std::string> wrapped = cr::apply_lora(*m.model, lora);
  cr::mark_only_lora_trainable(*m.model);
  // Layers recomputed in backward; the no-grad reference and validation passes are unaffected.
  m.model->language_model->set_gradient_checkpointing(o.gradient_checkpointing);
  // Every rank starts from rank 0's LoRA factors (the seeded init is the same everywhere already;
  // the broadcast makes it so whatever the rank's RNG did).
  std::vector<torch::Tensor> params = cr::lora_parameters(*m.model);
  ctx.dist->broadcast(params, "stage 'train': LoRA parameters from rank 0");

  // Reference = the policy at LoRA init (B = 0: the base model), precomputed without gradient,
  // each rank its share of the pairs, then summed so every rank holds all of them.
  {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> shared;
    for (auto* set : {&pairs, &val_pairs})
      for (std::size_t j = 0; j < set->size(); ++j) {
        train_pair& p = (*set)[j];
        if (mine(ctx, j)) {
          const cr::prompt_input prompt = train_prompt(ctx, p);
          auto lp = response_logprobs(m, prompt, {p.chosen, p.rejected});
          p.chosen_reference = lp[0].clone();
          p.rejected_reference = lp[1].clone();
        } else {
          p.chosen_reference = torch::zeros({static_cast<std::int64_t>(p.chosen.size())}, torch::kFloat32);
          p.rejected_reference = torch::zeros({static_cast<std::int64_t>(p.rejected.size())}, torch::kFloat32);
        }
        shared.push_back(p.chosen_reference);
        shared.push_back(p.rejected_reference);
      }
    if (ctx.dist->size() > 1) ctx.dist->all_reduce_sum(shared, "stage 'train': reference log-probs");
  }
  std::vector<std::array<double, lt::dpo_metric_count>> initial;
  for (auto& p : pairs) initial.push_back(metric_row(pair_loss(o, p, p.chosen_reference, p.rejected_reference)));

  // AdamW on fp32 master copies of the LoRA factors: with bf16 parameters an update of lr·O(1) =
  // 2e-7 would round away against weights of magnitude > 1e-4.
  std::vector<torch::Tensor> masters;
  const bool use_masters = m.model->dtype() != torch::kFloat32;
  for (auto& p : params) {
    if (use_masters) masters.push_back(p.detach().to(torch::kFloat32).clone().set_requires_grad(true));
  }
  torch::optim::AdamW optimizer(use_masters ? masters : params,
                                torch::optim::AdamWOptions(o.learning_rate).weight_decay(o.weight_decay));

  const std::int64_t num_pairs = static_cast<std::int64_t>(pairs.size());
  // Data parallel: a step takes ranks × batch_size pairs; rank r the r-th batch_size of them.
  const std::int64_t ranks = ctx.dist->size();
  const std::int64_t global_batch = ranks * o.batch_size;
  const std::int64_t steps_per_epoch = (num_pairs + global_batch - 1) / global_batch;
  std::int64_t total_steps = steps_per_epoch * o.epochs;
  if (o.max_steps > 0) total_steps = std::min(total_steps, o.max_steps);
  ctx.log << "  LoRA rank " << o.lora_rank << ", alpha " << o.lora_alpha << " on " << wrapped.size()
          << " linear layers; " << num_pairs << " pair(s), batch " << global_batch
          << (ranks > 1 ? " (" + std::to_string(ranks) + " ranks x " + std::to_string(o.batch_size) + ")" : std::string())
          << ", " << total_steps
          << " step(s), AdamW lr " << o.learning_rate << " (" << o.lr_schedule << ", warmup " << o.warmup_ratio
          << ", max grad norm " << o.max_grad_norm << "), loss " << o.loss_type << " (beta " << o.beta << ")"
          << (val_pairs.empty() ? "" : "; " + std::to_string(val_pairs.size()) + " validation pair(s)")
          << (m.model->language_model->gradient_checkpointing() ? "; gradient checkpointing" : "") << "\n";

  // Validation after every epoch (and before the first): the pairs' mean metrics, no gradient.
  json validation = json::array();
  double best_val = std::numeric_limits<double>::infinity();
  std::int64_t best_epoch = 0, since_best = 0;
  std::vector<torch::Tensor> best_params;
  const auto validate = [&](std::int64_t epoch, std::int64_t at_step) {
    if (val_pairs.empty()) return;
    json v = metric_means(evaluate(ctx, val_pairs, "stage 'train': validation after epoch " + std::to_string(epoch)));
    v["epoch"] = epoch;
    v["step"] = at_step;
    const double loss = v["dpo_loss"].get<double>();
    ctx.log << "  validation after epoch " << epoch << ": dpo_loss " << fixed(loss, 6) << ", accuracy "
            << fixed(v["accuracy"].get<double>(), 2) << " (" << val_pairs.size() << " pairs)\n";
    validation.push_back(v);
    if (loss < best_val) {
      best_val = loss;
      best_epoch = epoch;
      since_best = 0;
      best_params.clear();
      for (auto& p : params) best_params.push_back(p.detach().clone());
    } else {
      ++since_best;
    }
  };
  validate(0, 0);

  json steps = json::array();
  std::int64_t step = 0;
  bool stopped_early = false;
  for (std::int64_t epoch = 0; epoch < o.epochs && step < total_steps && !stopped_early; ++epoch) {
    // A seeded shuffle per epoch (Fisher-Yates on the counter-based uniform).
    std::vector<std::size_t> order(pairs.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    for (std::size_t i = order.size(); i > 1; --i) {
      const double u = cr::counter_uniform(o.seed, shuffle_stream(epoch), i);
      std::swap(order[i - 1], order[std::min(i - 1, static_cast<std::size_t>(u * static_cast<double>(i)))]);
    }
    for (std::int64_t start = 0; start < num_pairs && step < total_steps; start += global_batch, ++step) {
      const std::int64_t end = std::min(num_pairs, start + global_batch);
      const std::int64_t my_begin = std::min(end, start + ctx.dist->rank() * o.batch_size);
      const std::int64_t my_end = std::min(end, my_begin + o.batch_size);
      optimizer.zero_grad();
      for (auto& p : params)
        if (p.grad().defined()) p.mutable_grad().zero_();
      metric_rows rows(static_cast<std::size_t>(end - start));
      json batch = json::array();
      for (std::int64_t k = start; k < end; ++k) batch.push_back(order[static_cast<std::size_t>(k)]);
      for (std::int64_t k = my_begin; k < my_end; ++k) {
        train_pair& p = pairs[order[static_cast<std::size_t>(k)]];
        const cr::prompt_input prompt = train_prompt(ctx, p);
        auto lp = response_logprobs(m, prompt, {p.chosen, p.rejected});
        lt::dpo_result res = pair_loss(o, p, lp[0], lp[1]);
        // Mean over the global batch, accumulated one pair at a time (one pair's activations in
        // memory); the ranks' sums are added by the all-reduce below.
        (res.loss / static_cast<double>(end - start)).backward();
        rows[static_cast<std::size_t>(k - start)] = metric_row(res);
      }
      if (use_masters) {
        for (std::size_t k = 0; k < params.size(); ++k)
          masters[k].mutable_grad() = params[k].grad().defined() ? params[k].grad().to(torch::kFloat32)
                                                                 : torch::zeros_like(masters[k]);
      }
      if (ranks > 1) {
        // DDP: the gradients summed over the ranks (bucketed), so every rank takes the same step.
        std::vector<torch::Tensor>& trained = use_masters ? masters : params;
        std::vector<torch::Tensor> grads;
        for (auto& t : trained) {
          if (!t.grad().defined()) t.mutable_grad() = torch::zeros_like(t);
          grads.push_back(t.mutable_grad());
        }
        const std::string at = "stage 'train': step " + std::to_string(step + 1);
        ctx.dist->all_reduce_sum(grads, at + " gradient all-reduce");
        share_rows(ctx, rows, at + " metrics");
      }
      // Gradient-norm clipping over every LoRA factor, then the scheduled learning rate.
      double grad_norm = std::nan("");
      {
        std::vector<torch::Tensor>& trained = use_masters ? masters : params;
        std::vector<torch::Tensor> with_grad;
        for (auto& t : trained)
          if (t.grad().defined()) with_grad.push_back(t);
        if (!with_grad.empty())
          grad_norm = o.max_grad_norm > 0 ? torch::nn::utils::clip_grad_norm_(with_grad, o.max_grad_norm)
                                          : torch::nn::utils::clip_grad_norm_(with_grad, std::numeric_limits<double>::infinity());
      }
      const double lr = o.learning_rate * lr_factor(o, step, total_steps);
      for (auto& group : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
      optimizer.step();
      if (use_masters) {
        torch::NoGradGuard no_grad;
        for (std::size_t k = 0; k < params.size(); ++k) params[k].copy_(masters[k]);
      }
      json s = metric_means(rows);
      json entry;
      entry["step"] = step + 1;
      entry["epoch"] = epoch + 1;
      entry["pairs"] = batch;
      entry["lr"] = lr;
      entry["grad_norm"] = grad_norm;
      for (auto it = s.begin(); it != s.end(); ++it) entry[it.key()] = it.value();
      steps.push_back(entry);
      ctx.log << "  step " << (step + 1) << "/" << total_steps << " (epoch " << (epoch + 1) << "): dpo_loss "
           << fixed(s["dpo_loss"].get<double>(), 6) << ", objective " << fixed(s["loss"].get<double>(), 6)
           << ", reward margin " << std::scientific << std::setprecision(3) << s["reward_margin"].get<double>()
           << std::defaultfloat << ", accuracy " << fixed(s["accuracy"].get<double>(), 2) << "\n";
    }
    validate(epoch + 1, step);
    if (o.early_stop_patience > 0 && since_best >= o.early_stop_patience) {
      stopped_early = epoch + 1 < o.epochs && step < total_steps;
      if (stopped_early)
        ctx.log << "  early stop after epoch " << (epoch + 1) << ": no lower validation loss for "
                << o.early_stop_patience << " epoch(s)\n";
    }
  }
  // With early stopping, the adapter of the epoch with the lowest validation loss is kept.
  const std::int64_t last_epoch = validation.empty() ? 0 : validation.back()["epoch"].get<std::int64_t>();
  if (o.early_stop_patience > 0 && !best_params.empty() && best_epoch != last_epoch) {
    torch::NoGradGuard no_grad;
    for (std::size_t k = 0; k < params.size(); ++k) params[k].copy_(best_params[k]);
    ctx.log << "  keeping the adapter of epoch " << best_epoch << " (lowest validation loss "
            << fixed(best_val, 6) << ")\n";
  }
  for (const auto& s : steps)
    for (const char* k : {"loss", "dpo_loss", "reward_margin"})
      if (!std::isfinite(s[k].get<double>())) fail("stage 'train': step " + std::to_string(s["step"].get<int>()) + ": " + k + " is not finite");

  const auto final_rows = evaluate(ctx, pairs, "stage 'train': final evaluation");
  if (!ctx.is_root()) return "rank " + std::to_string(ctx.dist->rank()) + "'s share done";
  json fin = metric_means(final_rows);
  json per_pair = json::array();
  for (const auto& row : final_rows) {
    json e;
    for (int k = 0; k < lt::dpo_metric_count; ++k) e[lt::to_string(static_cast<lt::dpo_metric>(k))] = row[static_cast<std::size_t>(k)];
    per_pair.push_back(e);
  }
  fin["per_pair"] = per_pair;

  // The adapter in PEFT's format, moved into place as a whole directory.
  const std::filesystem::path tmp = ctx.store.begin_directory(files::adapter);
  // Named for transformers 5's module tree by default (what PeftModel.from_pretrained loads);
  // save_lora_adapter checks every name against the tree of the naming before writing.
  const bool t5 = o.lora_naming == "transformers5";
  const std::vector<std::string> tensor_names = cr::save_lora_adapter(
      *m.model, lora, tmp.string(), ctx.model_dir, t5 ? cr::lora_naming::transformers5 : cr::lora_naming::checkpoint);
  ctx.store.commit_directory(files::adapter);
  ctx.log << "  adapter: " << tensor_names.size() << " tensors named for "
          << (t5 ? "transformers 5's module tree (" : "the checkpoint's tensor names (") << tensor_names.front()
          << ", ...), every name checked against it (--lora-naming " << o.lora_naming << ")\n";

  json log = run.header();
  log["pairs"] = num_pairs;
  log["lora_modules"] = wrapped.size();
  log["initial"] = metric_means(initial);
  log["steps"] = steps;
  if (!val_pairs.empty()) {
    log["validation"] = validation;
    log["validation_pairs"] = val_pairs.size();
    log["best_epoch"] = best_epoch;
    log["stopped_early"] = stopped_early;
  }
  log["final"] = fin;
  log["adapter"] = {{"dir", files::adapter},
                    {"files", {"adapter_model.safetensors", "adapter_config.json"}},
                    {"naming", o.lora_naming},
                    {"tensors", tensor_names.size()}};
  ctx.store.write(files::train_log, log);
  ctx.log << "  after training (all pairs): dpo_loss " << fixed(fin["dpo_loss"].get<double>(), 6) << " (initial "
          << fixed(log["initial"]["dpo_loss"].get<double>(), 6) << "), reward margin " << std::scientific
          << std::setprecision(3) << fin["reward_margin"].get<double>() << std::defaultfloat << ", accuracy "
          << fixed(fin["accuracy"].get<double>(), 2) << "\n";
  return std::to_string(steps.size()) + " step(s) on " + std::to_string(num_pairs) + " pair(s); final dpo_loss " +
         fixed(fin["dpo_loss"].get<double>(), 6) + ", reward margin " + fixed(fin["reward_margin"].get<double>(), 6) +
         "; adapter -> " + files::adapter + "/";
}

}  // namespace

const stage_definition& train_stage() {
  static const stage_definition s{stage::train,
                                  files::train_log,
                                  {std::string(files::adapter) + "/adapter_model.safetensors",
                                   std::string(files::adapter) + "/adapter_config.json"},
                                  train_settings,
                                  train};
  return s;
}

}  // namespace consr_pipeline
