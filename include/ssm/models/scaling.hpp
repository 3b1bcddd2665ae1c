#pragma once
// Per-layer context-extension factors (layer_scaling) as a small JSON file, the form `ssm-run`
// reads with --scaling and calibration writes:
//
//   {"delta": 1.0, "a": 1.0, "a_band": [0, null],            defaults for every layer (optional)
//    "layers": [{"delta": 1.0, "a": 0.5, "a_band": [0, 0.1]}, ...]}   one object per layer (optional)
//
// "delta" scales Δ, "a" scales the eigenvalues of A whose magnitude lies in "a_band" ([low, high],
// null for no upper bound). A layer's keys override the defaults; unknown keys are errors.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "mixers.hpp"

namespace ssm::models {

namespace scaling_detail {
inline float number(const nlohmann::json& j, const std::string& where) {
    detail::require(j.is_number(), where, " must be a number, got ", j.dump());
    return j.get<float>();
}

// Applies the keys of `j` ("delta", "a", "a_band", and `extra` if given) to `f`.
inline void apply(const nlohmann::json& j, layer_scaling& f, const std::string& where, const char* extra = nullptr) {
    detail::require(j.is_object(), where, " must be a JSON object");
    for (const auto& [key, value] : j.items()) {
        if (key == "delta") {
            f.delta = number(value, where + ".delta");
        } else if (key == "a") {
            f.spectrum.alpha = number(value, where + ".a");
        } else if (key == "a_band") {
            detail::require(value.is_array() && value.size() == 2, where, ".a_band must be [low, high], got ", value.dump());
            f.spectrum.min_magnitude = number(value[0], where + ".a_band[0]");
            f.spectrum.max_magnitude =
                value[1].is_null() ? std::numeric_limits<float>::infinity() : number(value[1], where + ".a_band[1]");
        } else {
            detail::require(extra && key == extra, where, ": unknown key '", key, "' (expected delta, a, a_band",
                            extra ? std::string(", ") + extra : std::string(), ")");
        }
    }
}
}  // namespace scaling_detail

// Reads a scaling file for a model of `layers` layers; throws ssm::error naming the file and the
// problem. The factors are checked again when a model takes them (causal_lm::set_scaling).
inline std::vector<layer_scaling> read_scaling(const std::filesystem::path& path, index_t layers) {
    const std::string name = path.string();
    std::ifstream in(path);
    detail::require(bool(in), name, ": cannot open the scaling file");
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
        detail::require(false, name, ": not valid JSON: ", e.what());
    }
    layer_scaling defaults;
    scaling_detail::apply(j, defaults, name, "layers");
    std::vector<layer_scaling> out(static_cast<std::size_t>(layers), defaults);
    if (j.is_object() && j.contains("layers")) {
        const auto& list = j["layers"];
        detail::require(list.is_array() && index_t(list.size()) == layers, name, ": \"layers\" must list ", layers,
                        " layers, one object each; it has ",
                        list.is_array() ? std::to_string(list.size()) : std::string("no array"));
        for (index_t l = 0; l < layers; ++l)
            scaling_detail::apply(list[std::size_t(l)], out[std::size_t(l)], name + ": layers[" + std::to_string(l) + "]");
    }
    return out;
}

inline void write_scaling(const std::filesystem::path& path, const std::vector<layer_scaling>& layers) {
    nlohmann::json list = nlohmann::json::array();
    for (const layer_scaling& f : layers) {
        const float high = f.spectrum.max_magnitude;
        list.push_back({{"delta", f.delta},
                        {"a", f.spectrum.alpha},
                        {"a_band", {f.spectrum.min_magnitude, std::isinf(high) ? nlohmann::json() : nlohmann::json(high)}}});
    }
    std::ofstream out(path);
    out << nlohmann::json{{"layers", list}}.dump(1) << "\n";
    detail::require(bool(out), path.string(), ": cannot write the scaling file");
}

}  // namespace ssm::models
