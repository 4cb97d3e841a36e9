// Writing and reading the world's files (see dataset.hpp).
#include "consr_world/dataset.hpp"

#include "jsonl.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <thread>

namespace consr_world {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

nlohmann::ordered_json to_json(const question& q) {
  ojson j;
  j["id"] = q.id;
  j["image"] = q.image;
  j["prompt"] = q.prompt;
  j["answer"] = q.answer;
  j["type"] = name(q.type);
  if (q.type == question_type::existence) {
    j["label"] = q.label;
    j["pope_split"] = q.pope;
  }
  j["scene"] = q.scene;
  return j;
}

nlohmann::ordered_json to_json(const scene& s) {
  ojson j;
  j["scene"] = s.id();
  j["image"] = s.image_path();
  ojson objs = ojson::array();
  for (const auto& o : s.objects) {
    ojson oj;
    oj["shape"] = name(o.s);
    oj["colour"] = name(o.c);
    oj["size"] = name(o.size);
    oj["cell"] = o.cell;
    oj["position"] = position_name(o.cell);
    oj["x"] = o.cx;
    oj["y"] = o.cy;
    objs.push_back(oj);
  }
  j["objects"] = objs;
  j["digit"] = s.digit >= 0 ? ojson(s.digit) : ojson(nullptr);
  j["digit_position"] = s.digit >= 0 ? ojson(position_name(s.digit_cell)) : ojson(nullptr);
  return j;
}

nlohmann::ordered_json world_json(const generate_options& opt, const generate_summary& sum) {
  ojson j;
  j["seed"] = opt.seed;
  j["image_size"] = {image_size, image_size};
  j["grid"] = {grid, grid};
  for (int s = 0; s < 3; ++s) {
    j["counts"][name(static_cast<split>(s))] = sum.images[s];
    j["questions"][name(static_cast<split>(s))] = sum.questions[s];
  }
  ojson types = ojson::array();
  for (int t = 0; t < num_question_types; ++t)
    if (opt.questions.enabled[t]) types.push_back(name(static_cast<question_type>(t)));
  j["question_types"] = types;
  j["existence_per_split"] = opt.questions.existence_per_split;
  j["max_questions_per_image"] = opt.questions.max_per_image;
  ojson& v = j["vocabulary"];
  for (int i = 0; i < num_shapes; ++i) v["shapes"].push_back(name(static_cast<shape>(i)));
  for (int i = 0; i < num_colours; ++i) v["colours"].push_back(name(static_cast<colour>(i)));
  v["sizes"] = {"small", "large"};
  for (int i = 0; i < num_cells; ++i) v["positions"].push_back(position_name(i));
  ojson& p = j["prior"];
  p["description"] =
      "1-5 objects per image (uniform); object types (shape x colour) drawn with weight 3 for anchors, 1 otherwise; "
      "then each anchor present brings its companion with the given probability (appended, or replacing a "
      "non-anchor, non-companion object when the scene is full). 20% of images carry a digit in a corner cell.";
  for (const auto& r : companion_rules())
    p["companions"].push_back({{"anchor", r.anchor.text()}, {"companion", r.companion.text()}, {"probability", r.probability}});
  const auto& st = prior_statistics();
  p["statistics_scenes"] = st.scenes;
  for (int t : st.popularity)
    p["frequency"].push_back({{"object", object_type::from_index(t).text()}, {"share", st.frequency[t]}});
  for (const auto& r : companion_rules()) {
    const int a = r.anchor.index(), c = r.companion.index();
    p["conditional"].push_back({{"given", r.anchor.text()},
                                {"object", r.companion.text()},
                                {"p", st.frequency[a] > 0 ? st.cooccurrence[a][c] / st.frequency[a] : 0.0}});
  }
  return j;
}

generate_summary generate(const std::string& dir, const generate_options& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  generate_summary sum;
  fs::create_directories(dir);
  const auto open = [&](const std::string& name) {
    std::ofstream f(fs::path(dir) / name, std::ios::binary);
    if (!f) throw std::runtime_error("consr_world: cannot write " + (fs::path(dir) / name).string());
    return f;
  };
  int threads = opt.threads > 0 ? opt.threads : static_cast<int>(std::thread::hardware_concurrency());
  threads = std::max(1, threads);
  (void)prior_statistics();  // computed once, before the workers

  for (int si = 0; si < 3; ++si) {
    const split sp = static_cast<split>(si);
    const int n = std::max(0, opt.counts[si]);
    if (n == 0) continue;
    if (opt.images) fs::create_directories(fs::path(dir) / "images" / name(sp));
    std::vector<scene> scenes(n);
    std::atomic<int> next{0};
    std::atomic<bool> failed{false};
    std::string failed_path;
    const auto work = [&] {
      for (int i = next++; i < n; i = next++) {
        scenes[i] = make_scene(opt.seed, sp, static_cast<std::uint32_t>(i));
        if (opt.images) {
          const std::string path = (fs::path(dir) / scenes[i].image_path()).string();
          if (!write_png(path, render(scenes[i])) && !failed.exchange(true)) failed_path = path;
        }
      }
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < std::min(threads, n); ++t) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
    if (failed) throw std::runtime_error("consr_world: cannot write " + failed_path);

    auto qf = open(std::string(name(sp)) + ".jsonl");
    auto sf = open(std::string(name(sp)) + "_scenes.jsonl");
    std::ofstream pf[3];
    for (int p = 0; p < 3; ++p)
      if (opt.questions.enabled[static_cast<int>(question_type::existence)])
        pf[p] = open(std::string("pope_") + name(sp) + "_" + name(static_cast<pope_split>(p)) + ".jsonl");
    for (const auto& s : scenes) {
      sf << to_json(s).dump() << '\n';
      for (const auto& q : make_questions(s, opt.questions)) {
        qf << to_json(q).dump() << '\n';
        ++sum.questions[si];
        if (q.type == question_type::existence) {
          pope_split ps;
          parse_pope_split(q.pope, ps);
          ojson pj;
          pj["question_id"] = q.id;
          pj["image"] = q.image;
          pj["text"] = q.prompt;
          pj["label"] = q.label;
          pf[static_cast<int>(ps)] << pj.dump() << '\n';
        }
      }
    }
    if (!qf || !sf) throw std::runtime_error("consr_world: write failed in " + dir);
    sum.images[si] = n;
  }
  sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto wf = open("world.json");
  wf << world_json(opt, sum).dump(2) << '\n';
  return sum;
}

// ---- reading ------------------------------------------------------------------------------------

namespace {

std::string str(const nlohmann::json& j, const char* key) {
  const auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

bool parse_scene_id(const std::string& id, split& sp, std::uint32_t& index) {
  const auto dash = id.rfind('-');
  if (dash == std::string::npos || !parse_split(id.substr(0, dash), sp)) return false;
  index = static_cast<std::uint32_t>(std::strtoul(id.c_str() + dash + 1, nullptr, 10));
  return true;
}

int cell_of(const std::string& position) {
  for (int c = 0; c < num_cells; ++c)
    if (position == position_name(c)) return c;
  return -1;
}

// "Top left." -> "top left"
std::string plain(std::string a) {
  while (!a.empty() && (a.back() == '.' || a.back() == ' ')) a.pop_back();
  for (auto& ch : a) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return a;
}

}  // namespace

std::vector<question> read_questions(const std::string& path) {
  std::vector<question> out;
  detail::for_each_jsonl(path, [&](const nlohmann::json& j, int lineno) {
    question q;
    q.id = str(j, "id");
    q.image = str(j, "image");
    q.prompt = str(j, "prompt");
    q.answer = str(j, "answer");
    q.scene = str(j, "scene");
    q.label = str(j, "label");
    q.pope = str(j, "pope_split");
    if (!parse_question_type(str(j, "type"), q.type))
      throw detail::jsonl_error(path, lineno, "unknown type");
    const std::string a = plain(q.answer);
    switch (q.type) {
      case question_type::colour: {
        colour c;
        if (parse_colour(a, c)) q.target.c = c;
        break;
      }
      case question_type::count:
      case question_type::reading: q.number = std::atoi(a.c_str()); break;
      case question_type::position: q.cell = cell_of(a); break;
      default: break;
    }
    out.push_back(std::move(q));
  });
  return out;
}

scene scene_from_json(const nlohmann::json& j) {
  scene s;
  parse_scene_id(str(j, "scene"), s.which, s.index);
  for (const auto& oj : j.at("objects")) {
    object o;
    parse_shape(str(oj, "shape"), o.s);
    parse_colour(str(oj, "colour"), o.c);
    o.size = str(oj, "size") == "large" ? size_class::large : size_class::small;
    o.cell = oj.value("cell", 0);
    o.cx = oj.value("x", 0);
    o.cy = oj.value("y", 0);
    s.objects.push_back(o);
  }
  const auto d = j.find("digit");
  if (d != j.end() && d->is_number_integer()) s.digit = d->get<int>();
  const auto dp = j.find("digit_position");
  if (dp != j.end() && dp->is_string()) s.digit_cell = cell_of(dp->get<std::string>());
  return s;
}

std::vector<scene> read_scenes(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("consr_world: cannot read " + path);
  std::vector<scene> out;
  std::string line;
  while (std::getline(f, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    out.push_back(scene_from_json(nlohmann::json::parse(line)));
  }
  return out;
}

}  // namespace consr_world
