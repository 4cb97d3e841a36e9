// Question generation for consr_world (see questions.hpp).
#include "consr_world/questions.hpp"

#include <algorithm>
#include <cctype>

namespace consr_world {

const char* name(question_type t) noexcept {
  switch (t) {
    case question_type::existence: return "existence";
    case question_type::colour: return "colour";
    case question_type::count: return "count";
    case question_type::position: return "position";
    case question_type::reading: return "reading";
    default: return "description";
  }
}
bool parse_question_type(const std::string& w, question_type& out) {
  for (int i = 0; i < num_question_types; ++i)
    if (w == name(static_cast<question_type>(i))) {
      out = static_cast<question_type>(i);
      return true;
    }
  if (w == "color") {
    out = question_type::colour;
    return true;
  }
  return false;
}
const char* name(pope_split p) noexcept {
  return p == pope_split::random ? "random" : p == pope_split::popular ? "popular" : "adversarial";
}
bool parse_pope_split(const std::string& w, pope_split& out) {
  for (int i = 0; i < 3; ++i)
    if (w == name(static_cast<pope_split>(i))) {
      out = static_cast<pope_split>(i);
      return true;
    }
  return false;
}

namespace {

std::string capitalised(std::string s) {
  if (!s.empty()) s[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[0])));
  return s + ".";
}

question base(const scene& s, question_type t) {
  question q;
  q.scene = s.id();
  q.image = s.image_path();
  q.type = t;
  return q;
}

question existence(const scene& s, object_type t, pope_split p) {
  question q = base(s, question_type::existence);
  q.prompt = "Is there a " + t.text() + " in the image?";
  const bool yes = s.contains(t);
  q.answer = yes ? "Yes." : "No.";
  q.label = yes ? "yes" : "no";
  q.pope = name(p);
  q.target = t;
  return q;
}

}  // namespace

std::vector<question> make_questions(const scene& s, const question_options& opt) {
  rng r(mix64(s.key ^ 0x51ED270B27E3C5A1ull));
  std::vector<std::vector<question>> groups;  // a yes/no pair is one group
  const auto on = [&](question_type t) { return opt.enabled[static_cast<int>(t)]; };

  std::vector<int> present;
  for (const auto& o : s.objects) {
    const int t = o.type().index();
    if (std::find(present.begin(), present.end(), t) == present.end()) present.push_back(t);
  }
  std::vector<int> absent;
  for (int t = 0; t < num_object_types; ++t)
    if (std::find(present.begin(), present.end(), t) == present.end()) absent.push_back(t);

  if (on(question_type::existence) && opt.existence_per_split > 0 && !present.empty()) {
    const auto& prior = prior_statistics();
    const int k = opt.existence_per_split;
    for (int p = 0; p < 3; ++p) {
      const auto ps = static_cast<pope_split>(p);
      // Positives: distinct present types in a random order (cycling when there are fewer).
      std::vector<int> pos = present;
      for (int i = static_cast<int>(pos.size()) - 1; i > 0; --i)
        std::swap(pos[i], pos[r.below(static_cast<std::uint32_t>(i + 1))]);
      // Negatives ranked per the POPE split.
      std::vector<int> neg = absent;
      if (ps == pope_split::random) {
        for (int i = static_cast<int>(neg.size()) - 1; i > 0; --i)
          std::swap(neg[i], neg[r.below(static_cast<std::uint32_t>(i + 1))]);
      } else if (ps == pope_split::popular) {
        neg.clear();
        for (int t : prior.popularity)
          if (std::find(absent.begin(), absent.end(), t) != absent.end()) neg.push_back(t);
      } else {
        std::vector<double> score(num_object_types, 0.0);
        for (int a : present)
          for (int b : absent) score[b] += prior.cooccurrence[a][b];
        std::stable_sort(neg.begin(), neg.end(), [&](int a, int b) {
          if (score[a] != score[b]) return score[a] > score[b];
          return prior.frequency[a] > prior.frequency[b];
        });
      }
      for (int i = 0; i < k; ++i) {
        std::vector<question> g;
        g.push_back(existence(s, object_type::from_index(pos[i % pos.size()]), ps));
        g.push_back(existence(s, object_type::from_index(neg[i % neg.size()]), ps));
        if (r.chance(0.5)) std::swap(g[0], g[1]);
        groups.push_back(std::move(g));
      }
    }
  }

  if (on(question_type::colour)) {
    std::vector<const object*> unique;
    for (const auto& o : s.objects)
      if (s.count(o.s) == 1) unique.push_back(&o);
    if (!unique.empty()) {
      const object& o = *unique[r.below(static_cast<std::uint32_t>(unique.size()))];
      question q = base(s, question_type::colour);
      q.prompt = std::string("What colour is the ") + name(o.s) + "?";
      q.answer = capitalised(name(o.c));
      q.target = o.type();
      groups.push_back({q});
    }
  }

  if (on(question_type::count)) {
    question q = base(s, question_type::count);
    if (r.chance(0.5)) {
      q.count_all = true;
      q.number = static_cast<int>(s.objects.size());
      q.prompt = "How many objects are there?";
    } else {
      shape sh;
      if (r.chance(0.7)) sh = s.objects[r.below(static_cast<std::uint32_t>(s.objects.size()))].s;
      else sh = static_cast<shape>(r.below(num_shapes));
      q.target = {sh, colour::red};
      q.number = s.count(sh);
      q.prompt = std::string("How many ") + plural(sh) + " are there?";
    }
    q.answer = std::to_string(q.number) + ".";
    groups.push_back({q});
  }

  if (on(question_type::position)) {
    std::vector<const object*> unique;
    for (const auto& o : s.objects) {
      int n = 0;
      for (const auto& p : s.objects) n += p.type() == o.type();
      if (n == 1) unique.push_back(&o);
    }
    if (!unique.empty()) {
      const object& o = *unique[r.below(static_cast<std::uint32_t>(unique.size()))];
      question q = base(s, question_type::position);
      q.prompt = "Where is the " + o.type().text() + "?";
      q.answer = capitalised(position_name(o.cell));
      q.target = o.type();
      q.cell = o.cell;
      groups.push_back({q});
    }
  }

  if (on(question_type::reading) && s.digit >= 0) {
    question q = base(s, question_type::reading);
    q.prompt = "What digit is written in the image?";
    q.number = s.digit;
    q.answer = std::to_string(s.digit) + ".";
    groups.push_back({q});
  }

  if (on(question_type::description)) {
    question q = base(s, question_type::description);
    q.prompt = "Describe the image in detail.";
    q.answer = describe(s);
    groups.push_back({q});
  }

  if (opt.max_per_image > 0) {
    // Keep a random subset of whole groups, in their original order, up to the cap.
    std::vector<int> order(groups.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
    for (int i = static_cast<int>(order.size()) - 1; i > 0; --i)
      std::swap(order[i], order[r.below(static_cast<std::uint32_t>(i + 1))]);
    std::vector<bool> keep(groups.size(), false);
    int total = 0;
    for (int g : order) {
      const int n = static_cast<int>(groups[g].size());
      if (total + n > opt.max_per_image) continue;
      keep[g] = true;
      total += n;
    }
    std::vector<std::vector<question>> kept;
    for (std::size_t g = 0; g < groups.size(); ++g)
      if (keep[g]) kept.push_back(std::move(groups[g]));
    groups = std::move(kept);
  }

  std::vector<question> out;
  for (auto& g : groups)
    for (auto& q : g) {
      q.id = s.id() + "-" + std::to_string(out.size());
      out.push_back(std::move(q));
    }
  return out;
}

}  // namespace consr_world
