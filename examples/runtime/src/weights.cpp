// load_weights: module names -> checkpoint names through prefix bindings; validate, then copy.
#include "consr_runtime/weights.hpp"

#include <regex>
#include <set>
#include <sstream>
#include <unordered_set>

#include <torch/torch.h>

namespace consr_runtime {
namespace {

std::string shape_string(c10::IntArrayRef shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::vector<std::regex> compile(const std::vector<std::string>& patterns, const char* what) {
  std::vector<std::regex> out;
  for (const auto& p : patterns) {
    try {
      out.emplace_back(p, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      throw runtime_error(std::string("consr_runtime::load_weights: argument 'options.") + what + "': regex '" + p +
                          "' is invalid (" + e.what() + ")");
    }
  }
  return out;
}

bool any_match(const std::vector<std::regex>& res, const std::string& s) {
  for (const auto& re : res)
    if (std::regex_search(s, re)) return true;
  return false;
}

/// Appends up to `limit` lines of `items` to `out`, then a count of the rest.
void list(std::ostringstream& out, const std::string& title, const std::vector<std::string>& items,
          std::size_t limit = 20) {
  if (items.empty()) return;
  out << "\n  " << items.size() << " " << title << ":";
  for (std::size_t i = 0; i < items.size() && i < limit; ++i) out << "\n    " << items[i];
  if (items.size() > limit) out << "\n    ... and " << items.size() - limit << " more";
}

}  // namespace

void load_weights(torch::nn::Module& module, const checkpoint& ck, const std::vector<weight_binding>& bindings,
                  const load_options& options) {
  const auto ignore_extra = compile(options.ignore_extra, "ignore_extra");
  const auto ignore_missing = compile(options.ignore_missing, "ignore_missing");

  struct target {
    std::string module_name;
    torch::Tensor tensor;
    std::string ck_name;
  };
  std::vector<target> targets;
  std::vector<std::string> unbound, missing, misshaped;
  std::unordered_set<std::string> consumed;

  auto visit = [&](const std::string& name, const torch::Tensor& t) {
    const weight_binding* best = nullptr;
    for (const auto& b : bindings)
      if (name.compare(0, b.module_prefix.size(), b.module_prefix) == 0 &&
          (!best || b.module_prefix.size() > best->module_prefix.size()))
        best = &b;
    if (!best) {
      if (!any_match(ignore_missing, name)) unbound.push_back("'" + name + "'");
      return;
    }
    const std::string rest = name.substr(best->module_prefix.size());
    std::string tried;
    for (const auto& cp : best->checkpoint_prefixes) {
      const std::string ck_name = cp + rest;
      if (ck.contains(ck_name)) {
        const std::vector<int64_t> shape = ck.shape(ck_name);
        if (c10::IntArrayRef(shape) != t.sizes()) {
          misshaped.push_back("'" + ck_name + "': checkpoint shape " + shape_string(shape) + ", module tensor '" + name +
                              "' shape " + shape_string(t.sizes()));
        } else {
          targets.push_back({name, t, ck_name});
        }
        consumed.insert(ck_name);
        return;
      }
      tried += (tried.empty() ? "'" : ", '") + ck_name + "'";
    }
    if (!any_match(ignore_missing, name))
      missing.push_back("'" + name + "' (looked up as " + (tried.empty() ? std::string("nothing: no prefixes") : tried) +
                        ")");
  };
  for (const auto& item : module.named_parameters(/*recurse=*/true)) visit(item.key(), item.value());
  for (const auto& item : module.named_buffers(/*recurse=*/true)) visit(item.key(), item.value());

  std::vector<std::string> extra;
  for (const auto& name : ck.names())
    if (!consumed.count(name) && !any_match(ignore_extra, name)) extra.push_back("'" + name + "'");

  if (!unbound.empty() || !missing.empty() || !misshaped.empty() || !extra.empty()) {
    std::ostringstream msg;
    msg << "consr_runtime::load_weights: checkpoint '" << ck.directory() << "' does not match the module:";
    list(msg, "module tensors no binding covers", unbound);
    list(msg, "missing tensors", missing);
    list(msg, "mis-shaped tensors", misshaped);
    list(msg, "extra checkpoint tensors (unused)", extra);
    throw runtime_error(msg.str());
  }

  torch::NoGradGuard no_grad;
  for (auto& t : targets) {
    torch::Tensor value = ck.load(t.ck_name);
    t.tensor.copy_(value.to(t.tensor.scalar_type()));
  }
}

}  // namespace consr_runtime
