// Mamba and Mamba-2 language models: logits against Hugging Face transformers' on the reference
// fixtures (tests/fixtures/hf, made by tools/make_hf_fixtures.py), decoding against prefill, batches
// against single sequences, and the errors a bad checkpoint or call gets.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <ssm/models/causal_lm.hpp>
#include <ssm/models/calibration.hpp>
#include <ssm/models/evaluation.hpp>
#include <ssm/models/scaling.hpp>

#include "model_checks.hpp"

namespace {

namespace fs = std::filesystem;
using ssm::index_t;
using ssm::models::mamba2_lm;
using ssm::models::mamba_lm;
using checks::exec;
using checks::max_difference;
using checks::prefill;
using checks::random_tokens;

fs::path scratch(const std::string& name) {
    const fs::path dir = fs::temp_directory_path() / ("ssm_models_test_" + std::to_string(::getpid())) / name;
    fs::remove_all(dir);
    fs::create_directories(dir);
    return dir;
}


using tensor_map = std::map<std::string, ssm::io::float_tensor>;

// A weight source that keeps what it hands out, to write the model back as a checkpoint.
struct recording_weights {
    ssm::models::random_weights random;
    tensor_map tensors;

    std::vector<float> required(const std::string& name, const std::vector<index_t>& shape) {
        auto values = random.required(name, shape);
        tensors[name] = {shape, values};
        return values;
    }
    std::vector<float> optional(const std::string& name, const std::vector<index_t>& shape, bool present,
                                const char*) {
        return present ? required(name, shape) : std::vector<float>{};
    }
    bool contains(const std::string& name) const { return tensors.contains(name); }
};

nlohmann::json config_json(const ssm::io::model_config& c) {
    nlohmann::json j{{"hidden_size", c.hidden_size}, {"intermediate_size", c.intermediate_size},
                     {"state_size", c.state_size}, {"num_hidden_layers", c.layers}, {"conv_kernel", c.conv_kernel},
                     {"vocab_size", c.vocab_size}, {"use_bias", c.use_bias}, {"use_conv_bias", c.use_conv_bias},
                     {"tie_word_embeddings", c.tie_word_embeddings}, {"layer_norm_epsilon", c.norm_epsilon}};
    if (c.architecture == ssm::io::architecture::mamba1) {
        j["model_type"] = "mamba";
        j["time_step_rank"] = c.time_step_rank;
        if (c.global_selection_kernel > 0) j["global_selection_kernel"] = c.global_selection_kernel;
        if (!c.global_selection_layers.empty()) j["global_selection_layers"] = c.global_selection_layers;
    } else {
        j["model_type"] = "mamba2";
        j["num_heads"] = c.heads, j["head_dim"] = c.head_dim, j["n_groups"] = c.groups;
        j["chunk_size"] = c.chunk_size;
        j["time_step_limit"] = {c.time_step_min, c.time_step_max};
    }
    return j;
}

void write_checkpoint(const fs::path& folder, const nlohmann::json& config,
                      const tensor_map& tensors) {
    std::ofstream(folder / "config.json") << config.dump(2);
    ssm::io::save_safetensors(folder / "model.safetensors", tensors);
}

std::string load_error(const fs::path& folder) {
    try {
        ssm::models::with_model(folder, [](const auto&) {});
        return "";
    } catch (const ssm::error& e) {
        return e.what();
    }
}

// The error loading a checkpoint gets once `edit` has changed its tensors and config (written to dir).
template <class Edit>
std::string edited_load_error(const fs::path& dir, tensor_map tensors, nlohmann::json config, Edit edit) {
    edit(tensors, config);
    write_checkpoint(dir, config, tensors);
    return load_error(dir);
}

}  // namespace

TEST_CASE("models match Hugging Face transformers on the reference fixtures", "[models]") {
    for (const fs::path& folder : checks::fixture_folders(SSM_FIXTURES_DIR)) {
        INFO("fixture " << folder.filename().string());
        ssm::models::with_model(folder, [&](const auto& model) { checks::match_fixture(model, folder); });
    }
}

TEMPLATE_TEST_CASE("decoding and split prefills equal one prefill, batches equal single sequences", "[models]",
                   mamba_lm, mamba2_lm) {
    SSM_SEEDED_RANDOM(rng);
    const auto config = std::same_as<TestType, mamba_lm> ? checks::mamba1_config() : checks::mamba2_config();
    const TestType model = TestType::random(config, rng.integer(0, 1 << 30));
    const index_t batch = 3, vocab = config.vocab_size;
    for (const index_t length : {1, 2, 13, 40}) {
        INFO("length " << length);
        const auto tokens = random_tokens(rng, batch * length, vocab);
        const auto whole = prefill(model, tokens, batch);
        REQUIRE(std::all_of(whole.begin(), whole.end(), [](float v) { return std::isfinite(v); }));
        for (const index_t first : {index_t(1), (length + 1) / 2, length})
            CHECK(max_difference(checks::prefill_then_decode(model, tokens, batch, first), whole) <= 2e-5);
        for (index_t b = 0; b < batch; ++b) {
            const std::vector<std::int32_t> one(tokens.begin() + b * length, tokens.begin() + (b + 1) * length);
            const std::vector<float> expected(whole.begin() + b * length * vocab, whole.begin() + (b + 1) * length * vocab);
            CHECK(max_difference(prefill(model, one, 1), expected) <= 2e-5);
        }
    }
}

TEMPLATE_TEST_CASE("a saved model loads back, and checkpoints that disagree with the config are rejected by name",
                   "[models]", mamba_lm, mamba2_lm) {
    SSM_SEEDED_RANDOM(rng);
    auto config = std::same_as<TestType, mamba_lm> ? checks::mamba1_config() : checks::mamba2_config();
    config.use_conv_bias = false;
    recording_weights recorded{ssm::models::random_weights(rng.integer(0, 1 << 30)), {}};
    const TestType original = TestType::build(config, recorded);
    const fs::path dir = scratch(std::same_as<TestType, mamba_lm> ? "mamba1" : "mamba2");
    const nlohmann::json json = config_json(config);
    write_checkpoint(dir, json, recorded.tensors);

    const auto tokens = random_tokens(rng, 2 * 9, config.vocab_size);
    CHECK(max_difference(prefill(TestType::load(dir), tokens, 2), prefill(original, tokens, 2)) == 0.0);

    auto with = [&](auto edit) { return edited_load_error(dir, recorded.tensors, json, edit); };
    const std::string in_proj = "backbone.layers.1.mixer.in_proj.weight";
    CHECK_THAT(with([&](tensor_map& t, nlohmann::json&) { t.erase(in_proj); }),
               Catch::Contains("no tensor '" + in_proj + "'"));
    CHECK_THAT(with([&](tensor_map& t, nlohmann::json&) {
                   auto& w = t[in_proj];
                   w.shape[0] -= 1;
                   w.values.resize(std::size_t(w.shape[0] * w.shape[1]));
               }),
               Catch::Contains("tensor '" + in_proj + "' has shape"));
    CHECK_THAT(with([&](tensor_map& t, nlohmann::json&) {
                   t["backbone.layers.0.mixer.conv1d.bias"] = {{config.intermediate_size}, {}};
                   t["backbone.layers.0.mixer.conv1d.bias"].values.resize(std::size_t(config.intermediate_size));
               }),
               Catch::Contains("'use_conv_bias' says the model has none"));
    CHECK_THAT(with([&](tensor_map&, nlohmann::json& j) { j["num_hidden_layers"] = 1; }),
               Catch::Contains("the config does not account for") && Catch::Contains("backbone.layers.1."));
    CHECK_THAT(with([&](tensor_map&, nlohmann::json& j) { j["num_hidden_layers"] = 3; }),
               Catch::Contains("no tensor 'backbone.layers.2.norm.weight'"));
    CHECK_THAT(with([&](tensor_map&, nlohmann::json& j) { j["vocab_size"] = config.vocab_size + 1; }),
               Catch::Contains("'backbone.embeddings.weight' has shape"));

    // Calls that do not fit the model or the cache.
    write_checkpoint(dir, json, recorded.tensors);
    const TestType model = TestType::load(dir);
    auto cache = model.make_cache(2);
    std::vector<std::int32_t> bad{0, 1, std::int32_t(config.vocab_size), 2};
    std::vector<float> logits(static_cast<std::size_t>(4 * config.vocab_size));
    CHECK_THROWS_WITH(model.forward(exec, {bad.data(), 2, 2}, cache, {logits.data(), 2, 2, config.vocab_size}),
                      Catch::Contains("token id " + std::to_string(config.vocab_size) + " at (1, 0)"));
    CHECK_THROWS_WITH(model.forward(exec, {bad.data(), 1, 2}, cache, {logits.data(), 1, 2, config.vocab_size}),
                      Catch::Contains("the cache holds 2 sequences"));
    CHECK_THROWS_WITH(model.forward(exec, {bad.data(), 2, 1}, cache, {logits.data(), 2, 2, config.vocab_size - 1}),
                      Catch::Contains("logits has extent"));
    CHECK_THROWS_WITH(mamba_lm::load(std::same_as<TestType, mamba_lm> ? dir / "missing" : dir),
                      Catch::Contains(std::same_as<TestType, mamba_lm> ? "config.json: cannot open"
                                                                       : "this model type is the other architecture"));
}

// The module's forward against an independent reference is the fixture mamba1-global-selection (above).
TEST_CASE("global selection: split prefills and decoding equal one prefill, and its tensors follow the config",
          "[models][global]") {
    SSM_SEEDED_RANDOM(rng);
    auto config = checks::mamba1_config();
    config.global_selection_kernel = 7;  // longer than the conv (3) and than some of the calls below
    recording_weights recorded{ssm::models::random_weights(rng.integer(0, 1 << 30)), {}};
    const mamba_lm original = mamba_lm::build(config, recorded);
    const fs::path dir = scratch("global");
    const nlohmann::json json = config_json(config);
    write_checkpoint(dir, json, recorded.tensors);
    const mamba_lm model = mamba_lm::load(dir);

    const index_t batch = 2;
    for (const index_t length : {1, 5, 23}) {
        INFO("length " << length);
        const auto tokens = random_tokens(rng, batch * length, config.vocab_size);
        const auto whole = prefill(model, tokens, batch);
        CHECK(max_difference(whole, prefill(original, tokens, batch)) == 0.0);
        for (const index_t first : {index_t(1), index_t(3), length})
            CHECK(max_difference(checks::prefill_then_decode(model, tokens, batch, std::min(first, length)), whole) <= 2e-5);
    }

    // The same weights without the module compute something else: the module is not a no-op.
    auto plain_tensors = recorded.tensors;
    std::erase_if(plain_tensors, [](const auto& t) { return t.first.find(".global_") != std::string::npos; });
    auto plain_json = json;
    plain_json.erase("global_selection_kernel");
    const fs::path plain_dir = scratch("global_removed");
    write_checkpoint(plain_dir, plain_json, plain_tensors);
    const auto tokens = random_tokens(rng, batch * 30, config.vocab_size);
    CHECK(max_difference(prefill(mamba_lm::load(plain_dir), tokens, batch), prefill(model, tokens, batch)) > 1e-3);

    auto with = [&](auto edit) { return edited_load_error(dir, recorded.tensors, json, edit); };
    const std::string bias = "backbone.layers.1.mixer.global_conv.bias";
    CHECK_THAT(with([&](tensor_map& t, nlohmann::json&) { t.erase(bias); }), Catch::Contains("no tensor '" + bias + "'"));
    CHECK_THAT(with([&](tensor_map& t, nlohmann::json& j) {  // the short conv's biases gone, the module's left
                   j["use_conv_bias"] = false;
                   std::erase_if(t, [](const auto& e) { return e.first.find("conv1d.bias") != std::string::npos; });
               }),
               Catch::Contains("global_conv.bias' is in the checkpoint but the config's 'use_conv_bias' says"));
    CHECK_THAT(with([&](tensor_map&, nlohmann::json& j) { j["global_selection_kernel"] = 6; }),
               Catch::Contains("tensor 'backbone.layers.0.mixer.global_conv.weight' has shape"));
    CHECK_THAT(with([&](tensor_map&, nlohmann::json& j) { j.erase("global_selection_kernel"); }),
               Catch::Contains("global_conv.weight' is in the checkpoint but the config's 'global_selection_kernel' says "
                               "the model has none"));
    CHECK_THAT(with([&](tensor_map&, nlohmann::json& j) { j["global_selection_layers"] = {1}; }),
               Catch::Contains("'backbone.layers.0.mixer.global_conv.weight' is in the checkpoint but the config's "
                               "'global_selection_layers' says the model has none"));
}

TEST_CASE("global selection in some layers only: the layers the config lists load and run the module",
          "[models][global]") {
    SSM_SEEDED_RANDOM(rng);
    auto config = checks::mamba1_config();
    config.global_selection_kernel = 5;
    config.global_selection_layers = {1};
    recording_weights recorded{ssm::models::random_weights(rng.integer(0, 1 << 30)), {}};
    const mamba_lm original = mamba_lm::build(config, recorded);
    CHECK(original.mixers()[0].global_kernel == 0);
    CHECK(original.mixers()[1].global_kernel == 5);
    CHECK_FALSE(recorded.tensors.contains("backbone.layers.0.mixer.global_conv.weight"));
    CHECK(recorded.tensors.contains("backbone.layers.1.mixer.global_conv.weight"));
    const fs::path dir = scratch("global_some_layers");
    write_checkpoint(dir, config_json(config), recorded.tensors);
    const mamba_lm model = mamba_lm::load(dir);
    CHECK(model.config().global_selection_layers == std::vector<index_t>{1});
    const index_t batch = 2, length = 17;
    const auto tokens = random_tokens(rng, batch * length, config.vocab_size);
    const auto whole = prefill(model, tokens, batch);
    CHECK(max_difference(whole, prefill(original, tokens, batch)) == 0.0);
    CHECK(max_difference(checks::prefill_then_decode(model, tokens, batch, 4), whole) <= 2e-5);
    // Layer 1 without its module computes something else.
    auto plain = config;
    plain.global_selection_kernel = 0, plain.global_selection_layers.clear();
    auto plain_tensors = recorded.tensors;
    std::erase_if(plain_tensors, [](const auto& t) { return t.first.find(".global_") != std::string::npos; });
    const fs::path plain_dir = scratch("global_some_layers_removed");
    write_checkpoint(plain_dir, config_json(plain), plain_tensors);
    CHECK(max_difference(prefill(mamba_lm::load(plain_dir), tokens, batch), whole) > 1e-3);
}

// Multi-query associative recall with multi-token keys and values, laid out as
// tools/train_global_selection.py's ngram task (`task` its hyperparameters): pairs "S1 key S2 value S1"
// (S1 = 1, S2 = 2; key tokens from [4, 4 + keys), value tokens after them), then random key and value
// tokens in which every pair is asked once, in random order, as "S1 key S2 M..M S1" (M = 3) in random
// distinct slots; each value token is predicted at the token before it. With `shared_suffix`, the keys
// of a sequence end with the same tokens (the paper's robustness variant). Returns the share of value
// tokens predicted.
double ngram_accuracy(const mamba_lm& model, ref::random_source& rng, const nlohmann::json& task, bool shared_suffix,
                      index_t sequences) {
    constexpr std::int32_t s1 = 1, s2 = 2, mask = 3, first_key = 4;
    const index_t length = task["length"], pairs = task["pairs"], key_length = task["key_length"],
                  value_length = task["value_length"], keys = task["keys"], values = task["values"];
    const index_t span = 3 + key_length + value_length, context = pairs * span, slots = (length - context) / span;
    REQUIRE(slots >= pairs);
    const auto draw = [&](index_t first, index_t count) { return std::int32_t(rng.integer(first, first + count - 1)); };
    std::vector<std::int32_t> tokens;
    std::vector<std::pair<index_t, std::int32_t>> targets;  // (position in the batch, token)
    for (index_t s = 0; s < sequences; ++s) {
        std::vector<std::vector<std::int32_t>> key(static_cast<std::size_t>(pairs)), value(key);
        for (index_t p = 0; p < pairs; ++p) {
            for (index_t j = 0; j < key_length; ++j)
                key[std::size_t(p)].push_back(shared_suffix && p > 0 && j > 0 ? key[0][std::size_t(j)] : draw(first_key, keys));
            for (index_t j = 0; j < value_length; ++j) value[std::size_t(p)].push_back(draw(first_key + keys, values));
        }
        std::vector<std::int32_t> seq(static_cast<std::size_t>(length));
        for (auto& t : seq) t = draw(first_key, keys + values);  // the noise
        const index_t base = s * length;
        const auto place = [&](index_t at, index_t p, bool query) {
            seq[std::size_t(at)] = s1;
            for (index_t j = 0; j < key_length; ++j) seq[std::size_t(at + 1 + j)] = key[std::size_t(p)][std::size_t(j)];
            seq[std::size_t(at + 1 + key_length)] = s2;
            for (index_t j = 0; j < value_length; ++j) {
                const index_t pos = at + 2 + key_length + j;
                seq[std::size_t(pos)] = query ? mask : value[std::size_t(p)][std::size_t(j)];
                if (query) targets.emplace_back(base + pos - 1, value[std::size_t(p)][std::size_t(j)]);
            }
            seq[std::size_t(at + 2 + key_length + value_length)] = s1;
        };
        std::vector<index_t> order(static_cast<std::size_t>(pairs)), slot(static_cast<std::size_t>(slots));
        std::iota(order.begin(), order.end(), index_t(0));
        std::iota(slot.begin(), slot.end(), index_t(0));
        for (index_t i = pairs - 1; i > 0; --i) std::swap(order[std::size_t(i)], order[std::size_t(rng.integer(0, i))]);
        for (index_t i = 0; i < pairs; ++i) std::swap(slot[std::size_t(i)], slot[std::size_t(rng.integer(i, slots - 1))]);
        std::sort(slot.begin(), slot.begin() + pairs);
        for (index_t p = 0; p < pairs; ++p) place(p * span, p, false);
        for (index_t q = 0; q < pairs; ++q) place(context + slot[std::size_t(q)] * span, order[std::size_t(q)], true);
        tokens.insert(tokens.end(), seq.begin(), seq.end());
    }
    const index_t vocab = model.config().vocab_size;
    const auto logits = prefill(model, tokens, sequences);
    index_t hits = 0;
    for (const auto& [at, token] : targets) {
        const float* row = logits.data() + at * vocab;
        hits += std::max_element(row, row + vocab) - row == token;
    }
    return double(hits) / double(targets.size());
}

// The library measures on the shipped ngram models what PyTorch measured at the end of their training
// (docs/results.md), on fresh sequences, with and without keys sharing their last token; the plain
// model's drop between the two is the local shortcut arXiv 2410.15678 describes.
TEST_CASE("the shipped associative recall models: the library measures what PyTorch measured", "[models][global]") {
    SSM_SEEDED_RANDOM(rng);
    const auto check = [&](const char* name) {
        const fs::path folder = fs::path(SSM_RECALL_MODELS_DIR) / name;
        std::ifstream training(folder / "training.json");
        REQUIRE(training);
        const nlohmann::json trained = nlohmann::json::parse(training);
        const mamba_lm model = mamba_lm::load(folder);
        CHECK(model.config().global_selection_kernel == trained["hyperparameters"]["global_kernel"].get<index_t>());
        std::pair<double, double> ours;
        for (const bool shared : {false, true}) {
            const double measured = ngram_accuracy(model, rng, trained["hyperparameters"], shared, 512);
            const double expected = trained[shared ? "robustness_accuracy" : "accuracy"].get<double>();
            INFO(name << (shared ? ", keys sharing their last token" : "") << ": ours " << measured
                      << ", PyTorch measured " << expected);
            CHECK(std::abs(measured - expected) <= 0.03);  // 4096 predictions: a standard error below 0.008
            (shared ? ours.second : ours.first) = measured;
        }
        return ours;
    };
    const auto plain = check("ngram-plain");
    CHECK(plain.first - plain.second >= 0.1);
    check("ngram-global");
}

TEST_CASE("held-out loss of the shipped KJV model equals what transformers measured", "[models]") {
    const fs::path folder = SSM_KJV_MODEL_DIR;
    std::ifstream eval_file(folder / "eval.json");
    REQUIRE(eval_file);
    const nlohmann::json eval = nlohmann::json::parse(eval_file);
    std::ifstream text_file(SSM_KJV_TEXT, std::ios::binary);
    std::vector<std::int32_t> bytes;
    for (char c; text_file.get(c);) bytes.push_back(std::int32_t(static_cast<unsigned char>(c)));
    REQUIRE(index_t(bytes.size()) == eval["heldout_bytes"].get<index_t>());

    const auto model = mamba_lm::load(folder);
    const auto& w256 = eval["w256"];
    const index_t windows = w256["windows"].get<index_t>();
    index_t calls = 0;
    const auto losses = ssm::models::window_losses(model, exec, bytes, {.window = 256, .max_windows = windows, .batch = 8},
                                                   [&](index_t, index_t) { ++calls; });
    CHECK(calls == (windows + 7) / 8);
    double total = 0.0;
    for (const double l : losses.loss) total += l;
    const double bits = total / double(windows * 255) / std::log(2.0);
    INFO("ours " << bits << " bits/byte, transformers " << w256["bits_per_byte"].get<double>());
    CHECK(std::abs(bits - w256["bits_per_byte"].get<double>()) <= 1e-4);
}

// Spectrum scaling of a layer equals a checkpoint whose A_log is moved by log α (in the band only);
// Δ scaling of a Mamba-1 layer equals one whose A and x_proj's B rows are scaled by s
// (Ā = e^{sΔ·A}, B̄·x = sΔ·B·x under Mamba's rule).
TEMPLATE_TEST_CASE("per-layer scaling equals the rescaled checkpoint", "[models][scaling]", mamba_lm, mamba2_lm) {
    SSM_SEEDED_RANDOM(rng);
    const auto config = std::same_as<TestType, mamba_lm> ? checks::mamba1_config() : checks::mamba2_config();
    recording_weights recorded{ssm::models::random_weights(rng.integer(0, 1 << 30)), {}};
    TestType scaled = TestType::build(config, recorded);
    const float alpha = float(rng.uniform(0.2, 3.0)), s = float(rng.uniform(0.3, 3.0));
    std::vector<ssm::models::layer_scaling> factors(static_cast<std::size_t>(config.layers));
    factors[1].spectrum = {.alpha = alpha, .min_magnitude = 2.5f, .max_magnitude = 4.5f};
    auto tensors = recorded.tensors;
    for (float& a : tensors["backbone.layers.1.mixer.A_log"].values)
        if (std::exp(a) >= 2.5f && std::exp(a) <= 4.5f) a += std::log(alpha);
    if constexpr (std::same_as<TestType, mamba_lm>) {
        factors[0].delta = s;
        for (float& a : tensors["backbone.layers.0.mixer.A_log"].values) a += std::log(s);
        auto& x_proj = tensors["backbone.layers.0.mixer.x_proj.weight"].values;
        const index_t di = config.intermediate_size;
        for (index_t r = config.time_step_rank; r < config.time_step_rank + config.state_size; ++r)
            for (index_t c = 0; c < di; ++c) x_proj[std::size_t(r * di + c)] *= s;
    }
    const TestType plain = scaled;
    scaled.set_scaling(factors);
    CHECK(scaled.scaling() == factors);
    const fs::path dir = scratch(std::same_as<TestType, mamba_lm> ? "scaled1" : "scaled2");
    write_checkpoint(dir, config_json(config), tensors);
    const auto tokens = random_tokens(rng, 2 * 23, config.vocab_size);
    const auto expected = prefill(TestType::load(dir), tokens, 2);
    INFO("alpha " << alpha << ", delta " << s);
    CHECK(max_difference(prefill(scaled, tokens, 2), expected) <= 2e-5);
    CHECK(max_difference(checks::prefill_then_decode(scaled, tokens, 2, 11), expected) <= 2e-5);
    // The defaults leave the model as trained.
    scaled.set_scaling(std::vector<ssm::models::layer_scaling>(static_cast<std::size_t>(config.layers)));
    CHECK(max_difference(prefill(scaled, tokens, 2), prefill(plain, tokens, 2)) == 0.0);
}

TEST_CASE("scaling files round-trip and bad ones are rejected by name", "[models][scaling]") {
    using ssm::models::layer_scaling;
    const fs::path dir = scratch("scaling");
    std::vector<layer_scaling> factors(3);
    factors[0].delta = 1.5f;
    factors[1].clip = {.low = 0.5f, .high = 7.0f};
    factors[2].spectrum = {.alpha = 0.25f, .min_magnitude = 0.0f, .max_magnitude = 0.1f, .exponent = 0.8f};
    ssm::models::write_scaling(dir / "s.json", factors);
    CHECK(ssm::models::read_scaling(dir / "s.json", 3) == factors);

    auto read = [&](const std::string& text, index_t layers) {
        std::ofstream(dir / "t.json") << text;
        try {
            const auto f = ssm::models::read_scaling(dir / "t.json", layers);
            return std::string("read ") + std::to_string(f.size());
        } catch (const ssm::error& e) {
            return std::string(e.what());
        }
    };
    // Defaults for every layer, a layer overriding them.
    std::ofstream(dir / "d.json") << R"({"delta": 2, "a": 0.5, "a_power": 0.75, "layers": [{}, {"a": 1}]})";
    const auto d = ssm::models::read_scaling(dir / "d.json", 2);
    CHECK((d[0].delta == 2.0f && d[0].spectrum.alpha == 0.5f && d[1].delta == 2.0f && d[1].spectrum.alpha == 1.0f));
    CHECK((d[0].spectrum.exponent == 0.75f && d[1].spectrum.exponent == 0.75f));
    CHECK_THAT(read(R"({"delta": 2, "alpha": 1})", 2), Catch::Contains("unknown key 'alpha'"));
    CHECK_THAT(read(R"({"layers": [{}]})", 2), Catch::Contains("\"layers\" must list 2 layers"));
    CHECK_THAT(read(R"({"a_band": [1]})", 2), Catch::Contains("a_band must be [low, high]"));
    CHECK_THAT(read(R"({"layers": [{}, {"delta": "x"}]})", 2), Catch::Contains("layers[1].delta must be a number"));
    CHECK_THAT(read("{", 2), Catch::Contains("not valid JSON"));

    mamba_lm model = mamba_lm::random(checks::mamba1_config(), 3);
    std::vector<layer_scaling> bad(2);
    bad[1].delta = -1.0f;
    CHECK_THROWS_WITH(model.set_scaling(bad), Catch::Contains("layer 1: delta factor must be positive"));
    CHECK_THROWS_WITH(model.set_scaling(std::vector<layer_scaling>(3)), Catch::Contains("3 layer factors for a model of 2"));
}

TEST_CASE("coordinate search finds the grid optimum of a separable objective", "[models][scaling]") {
    using ssm::models::layer_scaling;
    // Minimum at Δ factors (0.7, 1, 2) and A factors (1, 0.5, 1.4), each one grid step from 1.
    const std::vector<float> delta{0.7f, 1.0f, 2.0f}, alpha{1.0f, 0.5f, 1.4f};
    int calls = 0;
    auto objective = [&](const std::vector<layer_scaling>& f) {
        ++calls;
        double v = 1.0;
        for (std::size_t l = 0; l < f.size(); ++l)
            v += std::pow(std::log(f[l].delta / delta[l]), 2) + std::pow(std::log(f[l].spectrum.alpha / alpha[l]), 2);
        return v;
    };
    const ssm::models::calibration_options options{.passes = 1};
    int last = 0, total = 0;
    const auto r = ssm::models::coordinate_search(std::vector<layer_scaling>(3), options, objective,
                                                  [&](int done, int all) { last = done, total = all; });
    for (std::size_t l = 0; l < 3; ++l) {
        CHECK(r.scaling[l].delta == Approx(delta[l]));
        CHECK(r.scaling[l].spectrum.alpha == Approx(alpha[l]));
    }
    CHECK(r.loss == Approx(1.0));
    CHECK(r.initial_loss > r.loss);
    CHECK((r.evaluations == 37 && calls == 37 && last == 36 && total == 36));
    // The exponents alone: the same search on |λ|^p, the other factors left at 1.
    const std::vector<float> power{0.85f, 1.0f, 0.5f};
    auto power_objective = [&](const std::vector<layer_scaling>& f) {
        double v = 1.0;
        for (std::size_t l = 0; l < f.size(); ++l)
            v += std::pow(std::log(f[l].spectrum.exponent / power[l]), 2) + std::pow(std::log(f[l].delta), 2);
        return v;
    };
    const auto p = ssm::models::coordinate_search(std::vector<layer_scaling>(3),
                                                  {.delta = false, .spectrum = false, .exponent = true, .passes = 1},
                                                  power_objective, [](int, int) {});
    for (std::size_t l = 0; l < 3; ++l) {
        CHECK(p.scaling[l].spectrum.exponent == Approx(power[l]));
        CHECK((p.scaling[l].delta == 1.0f && p.scaling[l].spectrum.alpha == 1.0f));
    }
    CHECK(p.evaluations == 1 + 3 * 6);
    CHECK_THROWS_WITH(ssm::models::coordinate_search(std::vector<layer_scaling>(1), {.grid = {0.5f, -1.0f}}, objective,
                                                     [](int, int) {}),
                      Catch::Contains("grid values must be positive"));
}

TEST_CASE("calibrate leaves the model at the factors it reports, never worse than the start", "[models][scaling]") {
    SSM_SEEDED_RANDOM(rng);
    mamba_lm model = mamba_lm::random(checks::mamba1_config(), rng.integer(0, 1 << 30));
    const auto tokens = random_tokens(rng, 3 * 40, model.config().vocab_size);
    const ssm::models::window_options windows{.window = 40, .max_windows = 3, .batch = 2};
    const auto r = ssm::models::calibrate(model, exec, tokens, windows, {.passes = 1}, [](int, int) {});
    CHECK(model.scaling() == r.scaling);
    CHECK(r.loss <= r.initial_loss);
    const auto p = ssm::models::window_losses(model, exec, tokens, windows, [](index_t, index_t) {});
    double sum = 0.0;
    for (double v : p.loss) sum += v;
    CHECK(sum / (3.0 * 39.0) == Approx(r.loss).epsilon(1e-12));
}

// Data-free clipping to percentiles of each layer's |λ| equals a checkpoint whose A_log is clamped
// to the logs of those bounds (|λ| = e^{A_log}).
TEMPLATE_TEST_CASE("percentile clipping equals the clamped checkpoint", "[models][scaling]", mamba_lm, mamba2_lm) {
    SSM_SEEDED_RANDOM(rng);
    const auto config = std::same_as<TestType, mamba_lm> ? checks::mamba1_config() : checks::mamba2_config();
    recording_weights recorded{ssm::models::random_weights(rng.integer(0, 1 << 30)), {}};
    TestType clipped = TestType::build(config, recorded);
    const auto factors = ssm::models::percentile_clipping(clipped, 20.0f, 80.0f);
    auto tensors = recorded.tensors;
    for (index_t l = 0; l < config.layers; ++l) {
        const auto& c = factors[std::size_t(l)].clip;
        std::vector<float> m = clipped.eigenvalue_magnitudes(l);
        std::sort(m.begin(), m.end());
        CHECK((c.low == m[std::size_t(std::lround(0.2 * double(m.size() - 1)))] &&
               c.high == m[std::size_t(std::lround(0.8 * double(m.size() - 1)))] && c.low < c.high));
        for (float& a : tensors["backbone.layers." + std::to_string(l) + ".mixer.A_log"].values)
            a = std::clamp(a, std::log(c.low), std::log(c.high));
    }
    clipped.set_scaling(factors);
    const fs::path dir = scratch(std::same_as<TestType, mamba_lm> ? "clipped1" : "clipped2");
    write_checkpoint(dir, config_json(config), tensors);
    const auto tokens = random_tokens(rng, 2 * 19, config.vocab_size);
    CHECK(max_difference(prefill(clipped, tokens, 2), prefill(TestType::load(dir), tokens, 2)) <= 2e-5);
    CHECK_THROWS_WITH(ssm::models::percentile_clipping(clipped, 50.0f, 10.0f), Catch::Contains("0 <= low <= high <= 100"));
}
