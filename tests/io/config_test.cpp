// config.json of Hugging Face Mamba and Mamba-2 checkpoints: sizes, defaults, Python's Infinity, and
// errors naming the key for values the library does not implement.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

#include <ssm/io/config.hpp>

namespace {

// The config.json of state-spaces/mamba-130m-hf, abridged to the keys it has.
const char* mamba_130m = R"({
  "architectures": ["MambaForCausalLM"], "bos_token_id": 0, "conv_kernel": 4, "eos_token_id": 0,
  "expand": 2, "fused_add_norm": true, "hidden_act": "silu", "hidden_size": 768,
  "initializer_range": 0.1, "intermediate_size": 1536, "layer_norm_epsilon": 1e-05,
  "model_type": "mamba", "n_layer": 24, "num_hidden_layers": 24, "pad_token_id": 0,
  "rescale_prenorm_residual": false, "residual_in_fp32": true, "rms_norm": true, "state_size": 16,
  "time_step_floor": 0.0001, "time_step_init_scheme": "random", "time_step_max": 0.1,
  "time_step_min": 0.001, "time_step_rank": 48, "time_step_scale": 1.0, "torch_dtype": "float32",
  "transformers_version": "4.39.0.dev0", "use_bias": false, "use_cache": true,
  "use_conv_bias": true, "vocab_size": 50280})";

// A Mamba-2 config as Python's json writes it: a bare Infinity in time_step_limit.
const char* mamba2_small = R"({
  "model_type": "mamba2", "hidden_size": 256, "expand": 2, "num_heads": 8, "head_dim": 64,
  "n_groups": 2, "state_size": 64, "num_hidden_layers": 3, "vocab_size": 260, "chunk_size": 128,
  "time_step_limit": [0.0, Infinity], "time_step_rank": "auto", "tie_word_embeddings": false,
  "note": "Infinity inside a string stays a string", "rms_norm": true})";

ssm::io::model_config from_text(const std::string& text) {
    const auto path = std::filesystem::temp_directory_path() / ("ssm_config_test_" + std::to_string(::getpid()) + ".json");
    std::ofstream(path) << text;
    return ssm::io::read_config(path);
}

nlohmann::json edited(nlohmann::json json, const std::string& key, const nlohmann::json& value) {
    if (value.is_null()) json.erase(key);
    else json[key] = value;
    return json;
}
nlohmann::json edited(const char* text, const std::string& key, const nlohmann::json& value) {
    return edited(nlohmann::json::parse(ssm::io::detail::quote_python_numbers(text)), key, value);
}

std::string error_of(const nlohmann::json& json) {
    try {
        ssm::io::parse_config(json, "config.json");
        return "";
    } catch (const ssm::error& e) {
        return e.what();
    }
}

}  // namespace

TEST_CASE("a Mamba-1 config gives the model's sizes", "[io][config]") {
    const auto c = from_text(mamba_130m);
    CHECK(c.architecture == ssm::io::architecture::mamba1);
    CHECK(c.hidden_size == 768);
    CHECK(c.intermediate_size == 1536);
    CHECK(c.state_size == 16);
    CHECK(c.layers == 24);
    CHECK(c.conv_kernel == 4);
    CHECK(c.vocab_size == 50280);
    CHECK(c.time_step_rank == 48);
    CHECK(c.norm_epsilon == 1e-5f);
    CHECK(c.use_conv_bias);
    CHECK_FALSE(c.use_bias);
    CHECK(c.tie_word_embeddings);  // PretrainedConfig's default
    CHECK(c.global_selection_kernel == 0);
    CHECK(ssm::io::parse_config(edited(mamba_130m, "global_selection_kernel", 32), "config.json").global_selection_kernel == 32);
    CHECK(c.global_selection_layers.empty());
    const auto some = ssm::io::parse_config(
        edited(edited(mamba_130m, "global_selection_kernel", 32), "global_selection_layers", {3, 1}), "config.json");
    CHECK(some.global_selection_layers == std::vector<ssm::index_t>{3, 1});
    CHECK(some.global_selection_in(1));
    CHECK(some.global_selection_in(3));
    CHECK_FALSE(some.global_selection_in(0));
    CHECK_FALSE(c.global_selection_in(0));
}

TEST_CASE("a Mamba-2 config with Python's Infinity parses", "[io][config]") {
    const auto c = from_text(mamba2_small);
    CHECK(c.architecture == ssm::io::architecture::mamba2);
    CHECK(c.intermediate_size == 512);
    CHECK(c.heads == 8);
    CHECK(c.head_dim == 64);
    CHECK(c.groups == 2);
    CHECK(c.chunk_size == 128);
    CHECK(c.time_step_rank == 16);  // "auto": ceil(256 / 16)
    CHECK(c.time_step_min == 0.0f);
    CHECK(std::isinf(c.time_step_max));
    CHECK_FALSE(c.tie_word_embeddings);
    CHECK(ssm::io::detail::quote_python_numbers(R"({"a": "NaN and Infinity", "b": [NaN, -Infinity]})") ==
          R"({"a": "NaN and Infinity", "b": ["NaN", "-Infinity"]})");
}

TEST_CASE("a Mamba-2 config as transformers 5 writes it: {\"__float__\": \"Infinity\"}", "[io][config]") {
    const auto c = from_text(std::string(mamba2_small).replace(std::string(mamba2_small).find("Infinity]"), 8,
                                                               R"({"__float__": "Infinity"})"));
    CHECK(c.time_step_min == 0.0f);
    CHECK(std::isinf(c.time_step_max));
}

TEST_CASE("config errors name the key and the problem", "[io][config][errors]") {
    CHECK_THAT(error_of(edited(mamba_130m, "hidden_size", nullptr)), Catch::Contains("'hidden_size' is missing"));
    CHECK_THAT(error_of(edited(mamba_130m, "state_size", -16)), Catch::Contains("'state_size' must be a positive integer, got -16"));
    CHECK_THAT(error_of(edited(mamba_130m, "num_hidden_layers", 2.5)), Catch::Contains("'num_hidden_layers' must be a positive integer"));
    CHECK_THAT(error_of(edited(mamba_130m, "model_type", "falcon_mamba")), Catch::Contains("model_type 'falcon_mamba' is not supported"));
    CHECK_THAT(error_of(edited(mamba_130m, "hidden_act", "gelu")), Catch::Contains("'hidden_act' = \"gelu\" is not supported"));
    CHECK_THAT(error_of(edited(mamba_130m, "use_bias", "no")), Catch::Contains("'use_bias' must be true or false"));
    CHECK_THAT(error_of(edited(mamba_130m, "layer_norm_epsilon", 0)), Catch::Contains("'layer_norm_epsilon' must be positive"));
    CHECK_THAT(error_of(edited(mamba2_small, "num_heads", 6)), Catch::Contains("num_heads x head_dim = 6 x 64 must equal intermediate_size 512"));
    CHECK_THAT(error_of(edited(mamba2_small, "n_groups", 3)), Catch::Contains("n_groups 3 must divide num_heads 8"));
    CHECK_THAT(error_of(edited(mamba2_small, "rms_norm", false)), Catch::Contains("'rms_norm' = false is not supported"));
    CHECK_THAT(error_of(edited(mamba2_small, "time_step_limit", {1.0, 0.5})), Catch::Contains("'time_step_limit' must be [min, max]"));
    CHECK_THAT(error_of(edited(mamba_130m, "global_selection_kernel", -2)),
               Catch::Contains("'global_selection_kernel' must be a non-negative integer, got -2"));
    CHECK_THAT(error_of(edited(mamba2_small, "global_selection_kernel", 8)),
               Catch::Contains("'global_selection_kernel' is not supported for mamba2"));
    const auto global = edited(mamba_130m, "global_selection_kernel", 32);
    CHECK_THAT(error_of(edited(mamba_130m, "global_selection_layers", {1})),
               Catch::Contains("'global_selection_layers' needs a 'global_selection_kernel' above 0"));
    CHECK_THAT(error_of(edited(global, "global_selection_layers", 1)),
               Catch::Contains("'global_selection_layers' must be a non-empty list of layer indices, got 1"));
    CHECK_THAT(error_of(edited(global, "global_selection_layers", nlohmann::json::array())),
               Catch::Contains("'global_selection_layers' must be a non-empty list"));
    CHECK_THAT(error_of(edited(global, "global_selection_layers", {0, 24})),
               Catch::Contains("'global_selection_layers' holds 24, not a layer index of the 24 layers"));
    CHECK_THAT(error_of(edited(global, "global_selection_layers", {2, "3"})),
               Catch::Contains("'global_selection_layers' holds \"3\""));
    CHECK_THAT(error_of(edited(global, "global_selection_layers", {5, 2, 5})),
               Catch::Contains("'global_selection_layers' lists layer 5 twice"));
    CHECK_THAT(error_of(nlohmann::json::array()), Catch::Contains("config must be a JSON object"));
    CHECK_THROWS_WITH(from_text("{\"model_type\": "), Catch::Contains("not valid JSON"));
}
