// ssm-run: runs Hugging Face Mamba / Mamba-2 checkpoints.
//
//   ssm-run info     MODEL [--json]
//   ssm-run ppl      MODEL FILE [--window 2048] [--max-windows N] [--batch 4] [--bin-width N]
//                    [--score-last N] [--json]
//   ssm-run generate MODEL (--prompt TEXT | --prompt-ids 1,2,3) [--tokens 200] [--temperature 0] [--top-k 0]
//                    [--seed 0]
//   ssm-run calibrate MODEL FILE --out SCALING.json [--window 2048] [--max-windows 4] [--batch 4]
//                    [--factors delta,a] [--passes 2] [--score-last N] [--json]   (CPU only)
//   ssm-run passkey  MODEL [--lengths 256,512,1024] [--depths 0,0.25,0.5,0.75,1] [--trials 20] [--seed 0]
//                    [--json]
//   common: [--threads 0] [--device cpu|cuda] [--dtype fp32|bf16] [--scaling FILE]
//           [--spectrum-percentiles LOW,HIGH] [--decimate LAYERS [--decimation-base 2000]
//           [--decimation-beta 0.5] [--decimation-min 20]] [--quiet]
//
// Byte-level models (vocab_size 256) read text as bytes; others read token ids, one integer per line,
// or a little-endian uint32 binary file when FILE ends in .bin. --input bytes|ids overrides the choice.
// --device cuda needs a build with CUDA (nvcc compiles this file then, SSM_RUN_CUDA is defined); --dtype
// bf16 runs the device model's large matrix products in bf16. --scaling FILE applies per-layer Δ and
// spectrum factors (ssm/models/scaling.hpp) for contexts longer than the training length;
// --spectrum-percentiles 1,99 then clips each layer's |λ| to those percentiles of its own (data-free).
// --decimate 2,3 makes those layers decimate (DeciMamba, ssm/models/decimation.hpp); the tokens never
// dropped are, per command, the scored ones (ppl, calibrate: --score-last N, required then; on cuda
// only N = 1), the last prompt token (generate) and the question (passkey).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>
#include <ssm/models/causal_lm.hpp>
#include <ssm/models/calibration.hpp>
#include <ssm/models/evaluation.hpp>
#include <ssm/models/scaling.hpp>
#ifdef SSM_RUN_CUDA
#include <ssm/models/device_lm.cuh>
#endif

namespace {

using ssm::index_t;
namespace fs = std::filesystem;

const char* const usage = R"(usage:
  ssm-run info     MODEL [--json]
  ssm-run ppl      MODEL FILE [--window 2048] [--max-windows N] [--batch 4] [--bin-width N]
                   [--score-last N] [--json]
      mean loss over windows, in position bins; --score-last N scores only each window's last N tokens
  ssm-run generate MODEL (--prompt TEXT | --prompt-ids 1,2,3) [--tokens 200] [--temperature 0]
                   [--top-k 0] [--seed 0]
  ssm-run calibrate MODEL FILE --out SCALING.json [--window 2048] [--max-windows 4] [--batch 4]
                   [--factors delta,a] [--passes 2] [--score-last N] [--json]
      per-layer Δ / A factors for windows of --window tokens (coordinate search, on the CPU; --factors
      lists any of delta, a (A's factor α) and power (A's exponent p, |λ| -> α·|λ|^p)), written
      for --scaling; starts from --scaling FILE when given
  ssm-run passkey  MODEL [--lengths 256,512,1024] [--depths 0,0.25,0.5,0.75,1] [--trials 20] [--seed 0]
                   [--json]
      greedy retrieval of a 5-digit key hidden at each depth of filler text of each length (bytes)
common options: --threads N (0: all cores), --device cpu|cuda, --dtype fp32|bf16 (products on cuda),
--scaling FILE (per-layer Δ / A factors and decimation, JSON), --spectrum-percentiles LOW,HIGH (clip
each layer's |λ| to these percentiles of its own), --decimate LAYERS (e.g. 2,3: DeciMamba in those
layers; --decimation-base 2000, --decimation-beta 0.5, --decimation-min 20),
--input bytes|ids, --quiet (no progress bar)
Byte-level models (vocab_size 256) read text as bytes, others token ids (one per line, or uint32 in a
.bin file); --input overrides that.
MODEL is a folder with config.json and model.safetensors (or a sharded index).
)";

// The whole of `text` as an integer, or nothing.
std::optional<long long> parse_integer(const std::string& text) {
    std::size_t used = 0;
    try {
        const long long v = std::stoll(text, &used);
        if (used == text.size()) return v;
    } catch (const std::exception&) {
    }
    return std::nullopt;
}

// "a,b,c" as a list of T, each item parsed and checked by `parse` (nullopt: not valid).
template <class T, class Parse>
std::vector<T> parse_list(const std::string& option, const std::string& text, Parse&& parse) {
    std::vector<T> out;
    std::stringstream list(text);
    for (std::string item; std::getline(list, item, ',');) {
        const std::optional<T> v = parse(item);
        ssm::detail::require(v.has_value(), "--", option, ": '", item, "' is not valid in '", text, "'");
        out.push_back(*v);
    }
    ssm::detail::require(!out.empty(), "--", option, " is empty");
    return out;
}

struct arguments {
    std::string command;
    std::vector<std::string> positional;
    std::map<std::string, std::string> options;
    std::set<std::string> flags;

    std::string get(const std::string& key, const std::string& fallback) const {
        const auto it = options.find(key);
        return it == options.end() ? fallback : it->second;
    }
    long long integer(const std::string& key, long long fallback, long long min) const {
        const auto it = options.find(key);
        if (it == options.end()) return fallback;
        const auto v = parse_integer(it->second);
        ssm::detail::require(v && *v >= min, "--", key, " must be an integer >= ", min, ", got '", it->second, "'");
        return *v;
    }
    double number(const std::string& key, double fallback) const {
        const auto it = options.find(key);
        if (it == options.end()) return fallback;
        std::size_t used = 0;
        double v = 0;
        try {
            v = std::stod(it->second, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        ssm::detail::require(used == it->second.size() && std::isfinite(v), "--", key, " must be a number, got '",
                             it->second, "'");
        return v;
    }
};

arguments parse(int argc, char** argv, const std::map<std::string, std::set<std::string>>& allowed_options,
                const std::set<std::string>& allowed_flags) {
    arguments a;
    ssm::detail::require(argc >= 2, "no command given");
    a.command = argv[1];
    const auto command = allowed_options.find(a.command);
    ssm::detail::require(command != allowed_options.end(), "unknown command '", a.command, "'");
    for (int i = 2; i < argc; ++i) {
        const std::string word = argv[i];
        if (!word.starts_with("--")) {
            a.positional.push_back(word);
            continue;
        }
        const std::string key = word.substr(2);
        if (allowed_flags.contains(key)) {
            a.flags.insert(key);
        } else {
            ssm::detail::require(command->second.contains(key), "unknown option '", word, "' for '", a.command, "'");
            ssm::detail::require(i + 1 < argc, "option '", word, "' needs a value");
            a.options[key] = argv[++i];
        }
    }
    return a;
}

// A progress bar on stderr, redrawn at most ten times a second.
class progress {
public:
    progress(std::string what, bool enabled) : what_(std::move(what)), enabled_(enabled) {}
    void update(index_t done, index_t total, index_t tokens) {
        if (!enabled_) return;
        total_ = total;
        const auto now = clock::now();
        // Redrawn in place on a terminal; elsewhere (a log) only the final line.
        if (done < total_ && (!terminal_ || now - last_ < std::chrono::milliseconds(100))) return;
        last_ = now;
        const double seconds = std::chrono::duration<double>(now - start_).count();
        const int width = 30, filled = int(width * done / std::max<index_t>(total_, 1));
        const double rate = seconds > 0 ? double(tokens) / seconds : 0.0;
        const double eta = done > 0 ? seconds * double(total_ - done) / double(done) : 0.0;
        std::fprintf(stderr, "\r%s [%s%s] %lld/%lld  %.0f tokens/s  ETA %.0f s ", what_.c_str(),
                     std::string(std::size_t(filled), '=').c_str(), std::string(std::size_t(width - filled), ' ').c_str(),
                     (long long)done, (long long)total_, rate, eta);
        if (done >= total_) std::fputc('\n', stderr);
    }

private:
    using clock = std::chrono::steady_clock;
    std::string what_;
    index_t total_ = 0;
    bool enabled_;
    bool terminal_ = isatty(2) != 0;
    clock::time_point start_ = clock::now(), last_{};
};

// Whether text is read and written as bytes: --input bytes|ids, else whether the vocabulary is 256.
std::string input_mode = "auto";
bool byte_level(const ssm::io::model_config& c) {
    if (input_mode == "auto") return c.vocab_size == 256;
    return input_mode == "bytes";
}

std::vector<std::int32_t> read_tokens(const fs::path& path, const ssm::io::model_config& config) {
    std::ifstream in(path, std::ios::binary);
    ssm::detail::require(bool(in), path.string(), ": cannot open");
    std::vector<std::int32_t> tokens;
    if (byte_level(config)) {
        for (char c; in.get(c);) tokens.push_back(std::int32_t(static_cast<unsigned char>(c)));
    } else if (path.extension() == ".bin") {
        std::uint32_t v;
        while (in.read(reinterpret_cast<char*>(&v), 4)) tokens.push_back(std::int32_t(v));
        ssm::detail::require(in.gcount() == 0, path.string(), ": size is not a multiple of 4 bytes (uint32 ids)");
    } else {
        std::string line;
        for (index_t n = 1; std::getline(in, line); ++n) {
            const auto first = line.find_first_not_of(" \t\r");
            if (first == std::string::npos) continue;
            const auto v = parse_integer(line.substr(first, line.find_last_not_of(" \t\r") + 1 - first));
            ssm::detail::require(v && *v >= 0, path.string(), ":", n, ": expected one token id per line, got '", line,
                                 "'");
            tokens.push_back(std::int32_t(*v));
        }
    }
    for (std::size_t i = 0; i < tokens.size(); ++i)
        ssm::detail::require(tokens[i] < config.vocab_size, path.string(), ": token ", i, " is ", tokens[i],
                             ", outside the vocabulary of ", config.vocab_size);
    return tokens;
}

const char* architecture_name(const ssm::io::model_config& c) {
    return c.architecture == ssm::io::architecture::mamba1 ? "mamba" : "mamba2";
}

template <class Model>
int info(const Model& model, const fs::path& folder, const arguments& args) {
    const auto& c = model.config();
    nlohmann::json j{{"model", folder.string()}, {"architecture", architecture_name(c)},
                     {"parameters", model.parameter_count()}, {"layers", c.layers}, {"hidden_size", c.hidden_size},
                     {"intermediate_size", c.intermediate_size}, {"state_size", c.state_size},
                     {"conv_kernel", c.conv_kernel}, {"vocab_size", c.vocab_size},
                     {"tie_word_embeddings", c.tie_word_embeddings}, {"byte_level", byte_level(c)}};
    if (c.architecture == ssm::io::architecture::mamba1) {
        j["time_step_rank"] = c.time_step_rank;
        if (c.global_selection_kernel > 0) j["global_selection_kernel"] = c.global_selection_kernel;
        if (!c.global_selection_layers.empty()) j["global_selection_layers"] = c.global_selection_layers;
    } else j["heads"] = c.heads, j["head_dim"] = c.head_dim, j["groups"] = c.groups;
    if (args.flags.contains("json")) {
        std::cout << j.dump(2) << "\n";
        return 0;
    }
    for (const auto& [key, value] : j.items()) std::cout << key << ": " << value.dump() << "\n";
    return 0;
}

// The windows ppl and calibrate read: --window, --max-windows (default `max_windows`), --batch and
// --score-last.
ssm::models::window_options window_options(const arguments& args, index_t max_windows) {
    ssm::models::window_options o{.window = args.integer("window", 2048, 2),
                                  .max_windows = args.integer("max-windows", max_windows, 1),
                                  .batch = args.integer("batch", 4, 1),
                                  .scored = args.integer("score-last", 0, 1)};
    ssm::detail::require(o.scored < o.window, "--score-last must be below --window (", o.window, "), got ", o.scored);
    return o;
}

// Mean next-token loss over non-overlapping windows (ssm::models::window_losses), overall and in bins
// of position.
template <class Model>
int perplexity(const Model& model, const arguments& args, const ssm::host_exec& exec) {
    ssm::detail::require(args.positional.size() == 2, "ppl needs MODEL and FILE");
    const std::vector<std::int32_t> tokens = read_tokens(args.positional[1], model.config());
    const ssm::models::window_options options = window_options(args, 0);
    const index_t window = options.window, bin_width = args.integer("bin-width", 0, 1);
    const index_t first_scored = options.scored > 0 ? window - options.scored : 1;
    progress bar("ppl", !args.flags.contains("quiet") && !args.flags.contains("json"));
    const auto losses = ssm::models::window_losses(model, exec, tokens, options, [&](index_t done, index_t all) {
        bar.update(done, all, done * window);
    });
    const index_t windows = losses.windows;
    // Bins: [1, 64), [64, 128), [128, 256), ... doubling, or of equal width when --bin-width is given.
    std::vector<index_t> edges{1};
    while (edges.back() < window)
        edges.push_back(std::min<index_t>(window, bin_width ? (edges.back() == 1 ? bin_width : edges.back() + bin_width)
                                                            : std::max<index_t>(64, edges.back() * 2)));
    std::vector<double> bin_loss(edges.size() - 1, 0.0);
    std::vector<index_t> bin_count(edges.size() - 1, 0);
    for (std::size_t bin = 0, t = std::size_t(first_scored); t < std::size_t(window); ++t) {
        while (index_t(t) >= edges[bin + 1]) ++bin;
        bin_loss[bin] += losses.loss[t];
        bin_count[bin] += windows;
    }
    double total = 0.0;
    index_t count = 0;
    nlohmann::json bins = nlohmann::json::array();
    for (std::size_t i = 0; i < bin_loss.size(); ++i) {
        if (bin_count[i] == 0) continue;
        total += bin_loss[i];
        count += bin_count[i];
        const double mean = bin_loss[i] / double(std::max<index_t>(bin_count[i], 1));
        bins.push_back({{"start", std::max(edges[i], first_scored)}, {"end", edges[i + 1]}, {"tokens", bin_count[i]}, {"loss", mean},
                        {"bits_per_token", mean / std::log(2.0)}});
    }
    const double mean = total / double(count);
    const nlohmann::json result{{"file", args.positional[1]}, {"window", window}, {"windows", windows},
                                {"predicted_tokens", count}, {"loss", mean}, {"bits_per_token", mean / std::log(2.0)},
                                {"perplexity", std::exp(mean)}, {"bins", bins}};
    if (args.flags.contains("json")) {
        std::cout << result.dump(2) << "\n";
        return 0;
    }
    std::printf("%lld windows of %lld tokens, %lld predicted: loss %.4f nats, %.4f bits/token, perplexity %.3f\n",
                (long long)windows, (long long)window, (long long)count, mean, mean / std::log(2.0), std::exp(mean));
    std::printf("%-18s %10s %10s\n", "positions", "tokens", "bits/token");
    for (const auto& b : bins)
        std::printf("[%6lld, %6lld)   %10lld %10.4f\n", b["start"].get<long long>(), b["end"].get<long long>(),
                    b["tokens"].get<long long>(), b["bits_per_token"].get<double>());
    return 0;
}

// Per-layer factors for a target length (ssm::models::calibrate), written to --out.
template <class Model>
int calibrate(Model& model, const arguments& args, const ssm::host_exec& exec) {
    ssm::detail::require(args.positional.size() == 2, "calibrate needs MODEL and FILE");
    ssm::detail::require(args.options.contains("out"), "calibrate needs --out SCALING.json");
    const std::vector<std::int32_t> tokens = read_tokens(args.positional[1], model.config());
    const ssm::models::window_options windows = window_options(args, 4);
    ssm::models::calibration_options options;
    options.passes = int(args.integer("passes", 2, 1));
    const auto factors = parse_list<std::string>("factors", args.get("factors", "delta,a"), [](const std::string& t) {
        return t == "delta" || t == "a" || t == "power" ? std::optional<std::string>(t) : std::nullopt;
    });
    auto named = [&](const char* name) { return std::find(factors.begin(), factors.end(), name) != factors.end(); };
    options.delta = named("delta");
    options.spectrum = named("a");
    options.exponent = named("power");
    const std::size_t layers = model.scaling().size();
    const index_t tokens_per_step = windows.window * std::min(windows.max_windows, index_t(tokens.size()) / windows.window);
    progress bar("calibrate", !args.flags.contains("quiet") && !args.flags.contains("json"));
    const auto result = ssm::models::calibrate(model, exec, tokens, windows, options,
                                               [&](int done, int all) { bar.update(done, all, done * tokens_per_step); });
    ssm::models::write_scaling(args.get("out", ""), result.scaling, model.decimation());
    nlohmann::json factors_json = nlohmann::json::array();
    for (const auto& f : result.scaling)
        factors_json.push_back({{"delta", f.delta}, {"a", f.spectrum.alpha}, {"a_power", f.spectrum.exponent}});
    const nlohmann::json j{{"out", args.get("out", "")}, {"window", windows.window}, {"layers", layers},
                           {"evaluations", result.evaluations}, {"initial_loss", result.initial_loss},
                           {"loss", result.loss}, {"factors", factors_json}};
    if (args.flags.contains("json")) {
        std::cout << j.dump(2) << "\n";
        return 0;
    }
    std::printf("%d evaluations on windows of %lld tokens: loss %.4f -> %.4f nats (%.4f -> %.4f bits/token)\n",
                result.evaluations, (long long)windows.window, result.initial_loss, result.loss,
                result.initial_loss / std::log(2.0), result.loss / std::log(2.0));
    for (std::size_t l = 0; l < layers; ++l)
        std::printf("layer %2zu: delta x%.3f  A x%.3f\n", l, result.scaling[l].delta, result.scaling[l].spectrum.alpha);
    std::printf("written to %s\n", args.get("out", "").c_str());
    return 0;
}

// Passkey retrieval (byte-level models): filler text of a given length with a 5-digit key hidden at a
// given depth, then the question; a trial succeeds when greedy decoding gives the key. The format is
// the one tools/train_passkey.py trains on.
namespace passkey {
const std::string filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";
const std::string question = "What is the pass key? The pass key is ";
std::string needle(int key) {
    const std::string k = std::to_string(key);
    return "The pass key is " + k + ". Remember it. " + k + " is the pass key. ";
}

// The prompt of exactly `length` bytes: the needle starts at the last sentence start of the filler at
// or before floor(depth · room), room being what the needle and question leave.
std::string prompt(index_t length, double depth, int key) {
    const std::string n = needle(key);
    const index_t room = length - index_t(n.size() + question.size());
    ssm::detail::require(room >= 0, "passkey: length ", length, " is shorter than the needle and the question (",
                         n.size() + question.size(), " bytes)");
    std::string text;
    while (index_t(text.size()) < room) text += filler;
    text.resize(std::size_t(room));
    const auto at = std::size_t(std::floor(depth * double(room)));
    std::size_t start = 0;
    for (auto i = text.find(". "); i != std::string::npos && i + 2 <= at; i = text.find(". ", i + 1)) start = i + 2;
    return text.substr(0, start) + n + text.substr(start) + question;
}
}  // namespace passkey

template <class Model>
int passkey_grid(const Model& model, const arguments& args, const ssm::host_exec& exec) {
    const auto& config = model.config();
    ssm::detail::require(byte_level(config), "passkey needs a byte-level model (vocab_size 256)");
    const auto lengths = parse_list<index_t>("lengths", args.get("lengths", "256,512,1024"), [](const std::string& t) {
        const auto v = parse_integer(t);
        return v && *v > 0 ? std::optional<index_t>(*v) : std::nullopt;
    });
    const auto depths = parse_list<double>("depths", args.get("depths", "0,0.25,0.5,0.75,1"), [](const std::string& t) {
        std::size_t used = 0;
        double v = -1;
        try {
            v = std::stod(t, &used);
        } catch (const std::exception&) {
        }
        return used == t.size() && v >= 0.0 && v <= 1.0 ? std::optional<double>(v) : std::nullopt;
    });
    const index_t trials = args.integer("trials", 20, 1), vocab = config.vocab_size;
    std::mt19937_64 rng(std::uint64_t(args.integer("seed", 0, 0)));
    progress bar("passkey", !args.flags.contains("quiet") && !args.flags.contains("json"));
    nlohmann::json cells = nlohmann::json::array();
    index_t done = 0, tokens_done = 0;
    for (const index_t length : lengths) {
        for (const double depth : depths) {
            // All trials of a cell in one batch: prompt, then four single-byte steps.
            std::vector<std::string> keys;
            std::vector<std::int32_t> ids;
            for (index_t i = 0; i < trials; ++i) {
                const int key = std::uniform_int_distribution<int>(10000, 99999)(rng);
                keys.push_back(std::to_string(key));
                for (const char c : passkey::prompt(length, depth, key)) ids.push_back(static_cast<unsigned char>(c));
            }
            auto cache = model.make_cache(trials);
            std::vector<float> logits(static_cast<std::size_t>(trials * vocab));
            model.forward(exec, {ids.data(), trials, length}, cache, {logits.data(), trials, 1, vocab});
            std::vector<std::string> answers(static_cast<std::size_t>(trials));
            std::vector<std::int32_t> next(static_cast<std::size_t>(trials));
            for (int digit = 0; digit < 5; ++digit) {
                for (index_t i = 0; i < trials; ++i) {
                    const float* l = logits.data() + i * vocab;
                    next[std::size_t(i)] = std::int32_t(std::max_element(l, l + vocab) - l);
                    answers[std::size_t(i)] += char(next[std::size_t(i)]);
                }
                if (digit < 4) model.forward(exec, {next.data(), trials, 1}, cache, {logits.data(), trials, 1, vocab});
            }
            index_t hits = 0;
            for (index_t i = 0; i < trials; ++i) hits += answers[std::size_t(i)] == keys[std::size_t(i)];
            cells.push_back({{"length", length}, {"depth", depth}, {"trials", trials}, {"correct", hits},
                             {"accuracy", double(hits) / double(trials)}, {"example_answer", answers[0]},
                             {"example_key", keys[0]}});
            tokens_done += trials * (length + 4);
            bar.update(++done, index_t(lengths.size() * depths.size()), tokens_done);
        }
    }
    if (args.flags.contains("json")) {
        std::cout << nlohmann::json{{"trials", trials}, {"cells", cells}}.dump(2) << "\n";
        return 0;
    }
    std::printf("passkey retrieval, %lld trials a cell (accuracy)\n%8s", (long long)trials, "length");
    for (const double depth : depths) std::printf("  d=%-5.2f", depth);
    std::printf("\n");
    for (std::size_t l = 0; l < lengths.size(); ++l) {
        std::printf("%8lld", (long long)lengths[l]);
        for (std::size_t d = 0; d < depths.size(); ++d)
            std::printf("  %7.2f", cells[l * depths.size() + d]["accuracy"].template get<double>());
        std::printf("\n");
    }
    return 0;
}

template <class Model>
int generate(const Model& model, const arguments& args, const ssm::host_exec& exec) {
    const auto& config = model.config();
    std::vector<std::int32_t> prompt;
    ssm::detail::require(args.options.contains("prompt") != args.options.contains("prompt-ids"),
                         "generate needs exactly one of --prompt TEXT and --prompt-ids 1,2,3");
    if (args.options.contains("prompt")) {
        ssm::detail::require(byte_level(config), "--prompt TEXT needs a byte-level model (vocab_size 256, or --input ",
                             "bytes); this one has ", config.vocab_size, " tokens: give --prompt-ids");
        for (const char c : args.get("prompt", "")) prompt.push_back(std::int32_t(static_cast<unsigned char>(c)));
    } else {
        std::stringstream list(args.get("prompt-ids", ""));
        for (std::string item; std::getline(list, item, ',');) {
            const auto v = parse_integer(item);
            ssm::detail::require(v && *v >= 0 && *v < config.vocab_size, "--prompt-ids: '", item,
                                 "' is not a token id below ", config.vocab_size);
            prompt.push_back(std::int32_t(*v));
        }
    }
    ssm::detail::require(!prompt.empty(), "the prompt is empty");
    const index_t count = args.integer("tokens", 200, 0);
    const double temperature = args.number("temperature", 0.0);
    const index_t top_k = args.integer("top-k", 0, 0);
    ssm::detail::require(temperature >= 0.0, "--temperature must be >= 0");
    std::mt19937_64 rng(std::uint64_t(args.integer("seed", 0, 0)));

    const index_t vocab = config.vocab_size;
    auto cache = model.make_cache(1);
    std::vector<float> logits(static_cast<std::size_t>(vocab));
    model.forward(exec, {prompt.data(), 1, index_t(prompt.size())}, cache, {logits.data(), 1, 1, vocab});
    std::vector<std::int32_t> out;
    progress bar("generate", !args.flags.contains("quiet") && !byte_level(config));
    for (index_t i = 0; i < count; ++i) {
        std::int32_t next = 0;
        if (temperature == 0.0) {
            next = std::int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
        } else {
            std::vector<std::int32_t> order(static_cast<std::size_t>(vocab));
            for (index_t v = 0; v < vocab; ++v) order[std::size_t(v)] = std::int32_t(v);
            const index_t keep = top_k > 0 ? std::min(top_k, vocab) : vocab;
            std::partial_sort(order.begin(), order.begin() + keep, order.end(),
                              [&](auto a, auto b) { return logits[std::size_t(a)] > logits[std::size_t(b)]; });
            std::vector<double> weights(static_cast<std::size_t>(keep));
            const float top = logits[std::size_t(order[0])];
            for (index_t k = 0; k < keep; ++k)
                weights[std::size_t(k)] = std::exp((double(logits[std::size_t(order[std::size_t(k)])]) - top) / temperature);
            next = order[std::discrete_distribution<std::size_t>(weights.begin(), weights.end())(rng)];
        }
        out.push_back(next);
        if (byte_level(config)) {
            std::cout << char(next) << std::flush;
        }
        bar.update(i + 1, count, i + 1);
        if (i + 1 < count) model.forward(exec, {&next, 1, 1}, cache, {logits.data(), 1, 1, vocab});
    }
    if (byte_level(config)) {
        std::cout << "\n";
    } else {
        for (std::size_t i = 0; i < out.size(); ++i) std::cout << (i ? "," : "") << out[i];
        std::cout << "\n";
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    const std::set<std::string> common{"threads",  "device",          "dtype",           "scaling",
                                       "spectrum-percentiles", "input", "decimate", "decimation-base",
                                       "decimation-beta", "decimation-min"};
    auto with_common = [&](std::set<std::string> s) {
        s.insert(common.begin(), common.end());
        return s;
    };
    const std::map<std::string, std::set<std::string>> options{
        {"info", with_common({})},
        {"ppl", with_common({"window", "max-windows", "batch", "bin-width", "score-last"})},
        {"generate", with_common({"prompt", "prompt-ids", "tokens", "temperature", "top-k", "seed"})},
        {"calibrate", with_common({"window", "max-windows", "batch", "out", "factors", "passes", "score-last"})},
        {"passkey", with_common({"lengths", "depths", "trials", "seed"})}};
    try {
        if (argc >= 2 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h")) {
            std::cout << usage;
            return 0;
        }
        const arguments args = parse(argc, argv, options, {"json", "quiet"});
        ssm::detail::require(!args.positional.empty(), args.command, " needs a MODEL folder");
        const std::string device = args.get("device", "cpu"), dtype = args.get("dtype", "fp32");
        ssm::detail::require(device == "cpu" || device == "cuda", "--device must be cpu or cuda, got '", device, "'");
        ssm::detail::require(dtype == "fp32" || dtype == "bf16", "--dtype must be fp32 or bf16, got '", dtype, "'");
        ssm::detail::require(device == "cuda" || dtype == "fp32", "--dtype ", dtype, " needs --device cuda");
#ifndef SSM_RUN_CUDA
        ssm::detail::require(device == "cpu", "--device cuda: this ssm-run was built without CUDA (no nvcc found)");
#endif
        input_mode = args.get("input", "auto");
        ssm::detail::require(input_mode == "auto" || input_mode == "bytes" || input_mode == "ids",
                             "--input must be bytes or ids, got '", input_mode, "'");
        const ssm::host_exec exec{.threads = int(args.integer("threads", 0, 0))};
        const fs::path folder = args.positional[0];
        ssm::detail::require(args.command != "calibrate" || device == "cpu", "calibrate runs on the CPU (--device cpu)");
        auto run = [&](auto&& model) {
            if (args.command == "info") return info(model, folder, args);
            if constexpr (requires { model.set_scaling({}); }) {
                if (args.command == "calibrate") return calibrate(model, args, exec);
            }
            if (args.command == "ppl") return perplexity(model, args, exec);
            if (args.command == "passkey") return passkey_grid(model, args, exec);
            return generate(model, args, exec);
        };
        return ssm::models::with_model(folder, [&](auto&& host) {
            ssm::models::decimation_settings decimation;
            if (const std::string file = args.get("scaling", ""); !file.empty()) {
                host.set_scaling(ssm::models::read_scaling(file, host.config().layers));
                decimation = ssm::models::read_decimation(file, host.config().layers);
            }
            if (args.options.contains("decimate")) {
                decimation.layers = parse_list<index_t>("decimate", args.get("decimate", ""), [](const std::string& t) {
                    const auto v = parse_integer(t);
                    return v ? std::optional<index_t>(index_t(*v)) : std::nullopt;
                });
            }
            for (const char* option : {"decimation-base", "decimation-beta", "decimation-min"})
                ssm::detail::require(!args.options.contains(option) || decimation.enabled(), "--", option,
                                     " needs --decimate LAYERS (or a scaling file with \"decimation\")");
            decimation.schedule.base_length = args.integer("decimation-base", decimation.schedule.base_length, 1);
            decimation.schedule.beta = args.number("decimation-beta", decimation.schedule.beta);
            decimation.schedule.min_length = args.integer("decimation-min", decimation.schedule.min_length, 0);
            if (decimation.enabled()) {
                // The tokens that must reach the head: see the comment at the top of this file.
                if (args.command == "ppl" || args.command == "calibrate") {
                    decimation.response_length = args.integer("score-last", 0, 0);
                    ssm::detail::require(decimation.response_length > 0, args.command, " with decimation needs ",
                                         "--score-last N: the loss is read on the tokens that reach the head");
                }
                if (args.command == "generate") decimation.response_length = 1;
                if (args.command == "passkey") decimation.response_length = index_t(passkey::question.size());
            }
            host.set_decimation(decimation);
            if (const std::string p = args.get("spectrum-percentiles", ""); !p.empty()) {
                const auto comma = p.find(',');
                float low = 0.0f, high = 0.0f;
                try {
                    ssm::detail::require(comma != std::string::npos, "");
                    std::size_t used_low = 0, used_high = 0;
                    low = std::stof(p.substr(0, comma), &used_low);
                    high = std::stof(p.substr(comma + 1), &used_high);
                    ssm::detail::require(used_low == comma && used_high == p.size() - comma - 1, "");
                } catch (const std::exception&) {
                    ssm::detail::require(false, "--spectrum-percentiles must be LOW,HIGH (e.g. 1,99), got '", p, "'");
                }
                host.set_scaling(ssm::models::percentile_clipping(host, low, high));
            }
#ifdef SSM_RUN_CUDA
            using ssm::models::staged_lm, ssm::models::to_device;
            if (device == "cuda" && dtype == "bf16") return run(staged_lm(to_device<ssm::bfloat16>(host)));
            if (device == "cuda") return run(staged_lm(to_device<float>(host)));
#endif
            return run(host);
        });
    } catch (const std::exception& e) {
        std::cerr << "ssm-run: " << e.what() << "\n";
        if (argc < 2) std::cerr << usage;
        return 1;
    }
}
