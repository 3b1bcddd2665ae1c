#pragma once
// Hugging Face config.json of MambaForCausalLM ("mamba") and Mamba2ForCausalLM ("mamba2"), parsed into
// the sizes a model needs. Keys that change what the model computes and that the library does not
// implement are rejected by name; keys that only concern training or tokenization are ignored.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/tensor_view.hpp"

namespace ssm::io {

enum class architecture { mamba1, mamba2 };

struct model_config {
    io::architecture architecture = architecture::mamba1;
    index_t hidden_size = 0, intermediate_size = 0, state_size = 0, layers = 0, conv_kernel = 0, vocab_size = 0;
    index_t time_step_rank = 0;                               // Mamba-1: width of dt_proj's input
    index_t global_selection_kernel = 0;                      // Mamba-1: taps of the global selection module (0: none)
    std::vector<index_t> global_selection_layers;             // the layers that have it (empty: all of them)
    index_t heads = 0, head_dim = 0, groups = 1, chunk_size = 0;  // Mamba-2
    float norm_epsilon = 1e-5f;
    bool use_bias = false, use_conv_bias = true, residual_in_fp32 = true, tie_word_embeddings = true;
    float time_step_min = 0.0f, time_step_max = std::numeric_limits<float>::infinity();  // Mamba-2 Δ clamp

    // Whether layer l has the global selection module.
    bool global_selection_in(index_t l) const {
        return global_selection_kernel > 0 &&
               (global_selection_layers.empty() ||
                std::find(global_selection_layers.begin(), global_selection_layers.end(), l) !=
                    global_selection_layers.end());
    }
};

model_config parse_config(const nlohmann::json& json, const std::string& source);
model_config read_config(const std::filesystem::path& path);

// ---------------------------------------------------------------------------------------------
// Implementation.

namespace detail {
// Python's json writes inf and nan as the bare words Infinity and NaN (Mamba-2's time_step_limit
// holds one), which JSON does not allow: outside strings they become the strings "Infinity", ...
inline std::string quote_python_numbers(std::string_view text) {
    std::string out;
    bool in_string = false;
    for (std::size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if (in_string) {
            out += c;
            if (c == '\\' && i + 1 < text.size()) out += text[++i];
            else if (c == '"') in_string = false;
            continue;
        }
        if (c == '"') in_string = true;
        bool replaced = false;
        for (const std::string_view word : {"-Infinity", "Infinity", "NaN"}) {
            if (text.substr(i, word.size()) == word) {
                out += '"';
                out += word;
                out += '"';
                i += word.size() - 1;
                replaced = true;
                break;
            }
        }
        if (!replaced) out += c;
    }
    return out;
}

struct config_reader {
    const nlohmann::json& json;
    const std::string& source;

    bool has(const char* key) const { return json.contains(key) && !json[key].is_null(); }

    index_t positive(const char* key) const {
        ssm::detail::require(has(key), source, ": config key '", key, "' is missing");
        const auto& v = json[key];
        ssm::detail::require(v.is_number_integer() && v.get<std::int64_t>() > 0, source, ": config key '", key,
                             "' must be a positive integer, got ", v.dump());
        return index_t(v.get<std::int64_t>());
    }
    index_t positive_or(const char* key, index_t fallback) const { return has(key) ? positive(key) : fallback; }
    index_t non_negative_or(const char* key, index_t fallback) const {
        if (!has(key)) return fallback;
        const auto& v = json[key];
        ssm::detail::require(v.is_number_integer() && v.get<std::int64_t>() >= 0, source, ": config key '", key,
                             "' must be a non-negative integer, got ", v.dump());
        return index_t(v.get<std::int64_t>());
    }

    bool flag_or(const char* key, bool fallback) const {
        if (!has(key)) return fallback;
        ssm::detail::require(json[key].is_boolean(), source, ": config key '", key, "' must be true or false, got ",
                             json[key].dump());
        return json[key].get<bool>();
    }

    static float number(const nlohmann::json& v, bool& ok) {
        ok = true;
        if (v.is_number()) return v.get<float>();
        // transformers 5 writes non-finite floats as {"__float__": "Infinity"}.
        if (v.is_object() && v.size() == 1 && v.contains("__float__")) return number(v["__float__"], ok);
        if (v == "Infinity") return std::numeric_limits<float>::infinity();
        if (v == "-Infinity") return -std::numeric_limits<float>::infinity();
        ok = false;
        return 0.0f;
    }
    float number_or(const char* key, float fallback) const {
        if (!has(key)) return fallback;
        bool ok = false;
        const float value = number(json[key], ok);
        ssm::detail::require(ok, source, ": config key '", key, "' must be a number, got ", json[key].dump());
        return value;
    }

    // A key whose only supported value is `supported`; any other value is rejected by name.
    template <class T>
    void require_value(const char* key, const T& supported, const char* what) const {
        if (has(key))
            ssm::detail::require(json[key] == supported, source, ": config key '", key, "' = ", json[key].dump(),
                                 " is not supported (", what, ")");
    }
};
}  // namespace detail

inline model_config parse_config(const nlohmann::json& json, const std::string& source) {
    using ssm::detail::require;
    require(json.is_object(), source, ": config must be a JSON object");
    const detail::config_reader r{json, source};
    model_config c;
    require(r.has("model_type") && json["model_type"].is_string(), source, ": config has no model_type");
    const std::string type = json["model_type"].get<std::string>();
    if (type == "mamba") c.architecture = architecture::mamba1;
    else if (type == "mamba2") c.architecture = architecture::mamba2;
    else ssm::detail::fail(source, ": model_type '", type, "' is not supported (expected mamba or mamba2)");
    const bool mamba2 = c.architecture == architecture::mamba2;

    c.hidden_size = r.positive("hidden_size");
    c.state_size = r.positive("state_size");
    c.layers = r.positive("num_hidden_layers");
    c.vocab_size = r.positive("vocab_size");
    c.conv_kernel = r.positive_or("conv_kernel", 4);
    const index_t expand = r.positive_or("expand", 2);
    c.intermediate_size = r.positive_or("intermediate_size", expand * c.hidden_size);
    c.norm_epsilon = r.number_or("layer_norm_epsilon", 1e-5f);
    require(c.norm_epsilon > 0.0f, source, ": config key 'layer_norm_epsilon' must be positive");
    c.use_bias = r.flag_or("use_bias", false);
    c.use_conv_bias = r.flag_or("use_conv_bias", true);
    c.residual_in_fp32 = r.flag_or("residual_in_fp32", true);
    c.tie_word_embeddings = r.flag_or("tie_word_embeddings", !mamba2);  // the two configs' defaults
    r.require_value("hidden_act", "silu", "only SiLU is implemented");

    // "auto" or absent: ceil(hidden_size / 16), as both configs define it.
    const index_t auto_rank = (c.hidden_size + 15) / 16;
    if (r.has("time_step_rank") && json["time_step_rank"] != "auto") c.time_step_rank = r.positive("time_step_rank");
    else c.time_step_rank = auto_rank;

    c.global_selection_kernel = r.non_negative_or("global_selection_kernel", 0);
    require(!mamba2 || c.global_selection_kernel == 0, source,
            ": config key 'global_selection_kernel' is not supported for mamba2 (the module is a Mamba-1 one)");
    // The module in some layers only (the `module_layers` of the paper's code): distinct layer indices.
    if (r.has("global_selection_layers")) {
        const auto& layers = json["global_selection_layers"];
        require(c.global_selection_kernel > 0, source,
                ": config key 'global_selection_layers' needs a 'global_selection_kernel' above 0");
        require(layers.is_array() && !layers.empty(), source,
                ": config key 'global_selection_layers' must be a non-empty list of layer indices, got ", layers.dump());
        auto& listed = c.global_selection_layers;
        for (const auto& l : layers) {
            const index_t layer = l.is_number_integer() ? index_t(l.get<std::int64_t>()) : -1;
            require(layer >= 0 && layer < c.layers, source, ": config key 'global_selection_layers' holds ", l.dump(),
                    ", not a layer index of the ", c.layers, " layers");
            require(std::find(listed.begin(), listed.end(), layer) == listed.end(), source,
                    ": config key 'global_selection_layers' lists layer ", layer, " twice");
            listed.push_back(layer);
        }
    }

    if (mamba2) {
        c.heads = r.positive("num_heads");
        c.head_dim = r.positive("head_dim");
        c.groups = r.positive_or("n_groups", 1);
        c.chunk_size = r.positive_or("chunk_size", 256);
        require(c.heads * c.head_dim == c.intermediate_size, source, ": num_heads x head_dim = ", c.heads, " x ",
                c.head_dim, " must equal intermediate_size ", c.intermediate_size);
        require(c.heads % c.groups == 0, source, ": n_groups ", c.groups, " must divide num_heads ", c.heads);
        r.require_value("rms_norm", true, "the gated RMSNorm is always applied");
        r.require_value("norm_before_gate", false, "the gate is applied before the norm");
        if (r.has("time_step_limit")) {
            const auto& limit = json["time_step_limit"];
            bool ok_lo = false, ok_hi = false;
            if (limit.is_array() && limit.size() == 2) {
                c.time_step_min = detail::config_reader::number(limit[0], ok_lo);
                c.time_step_max = detail::config_reader::number(limit[1], ok_hi);
            }
            require(ok_lo && ok_hi && c.time_step_min <= c.time_step_max, source,
                    ": config key 'time_step_limit' must be [min, max], got ", limit.dump());
        }
    }
    return c;
}

inline model_config read_config(const std::filesystem::path& path) {
    std::ifstream in(path);
    ssm::detail::require(bool(in), path.string(), ": cannot open");
    std::stringstream text;
    text << in.rdbuf();
    nlohmann::json json;
    try {
        json = nlohmann::json::parse(detail::quote_python_numbers(text.str()));
    } catch (const nlohmann::json::exception& e) {
        ssm::detail::fail(path.string(), ": not valid JSON: ", e.what());
    }
    return parse_config(json, path.string());
}

}  // namespace ssm::io
