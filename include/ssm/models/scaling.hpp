#pragma once
// Per-layer context-extension factors (layer_scaling) as a small JSON file, the form `ssm-run`
// reads with --scaling and calibration writes:
//
//   {"delta": 1.0, "a": 1.0, "a_power": 1.0, "a_band": [0, null],   defaults for every layer (optional)
//    "layers": [{"delta": 1.0, "a": 0.5, "a_band": [0, 0.1], "a_clip": [0.5, 8]}, ...],
//                                                              one object per layer (optional)
//    "decimation": {"layers": [2], "base_length": 2000, "beta": 0.5, "min_length": 20}}
//                                                              DeciMamba (optional)
//
// "delta" scales Δ, "a_clip" clips the magnitudes of A's eigenvalues to [low, high], then those whose
// magnitude lies in "a_band" (null for no upper bound in either range) get magnitude a·|λ|^a_power.
// A layer's keys override the defaults. "decimation" names the decimating layers and the keep schedule (the
// response length is the caller's, per call). Unknown keys are errors.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "decimation.hpp"
#include "mixers.hpp"

namespace ssm::models {

namespace scaling_detail {
inline float number(const nlohmann::json& j, const std::string& where) {
    detail::require(j.is_number(), where, " must be a number, got ", j.dump());
    return j.get<float>();
}

// [low, high] with null for an unbounded high end.
inline void range(const nlohmann::json& j, const std::string& where, float& low, float& high) {
    detail::require(j.is_array() && j.size() == 2, where, " must be [low, high], got ", j.dump());
    low = number(j[0], where + "[0]");
    high = j[1].is_null() ? std::numeric_limits<float>::infinity() : number(j[1], where + "[1]");
}
inline nlohmann::json range_json(float low, float high) {
    return {low, std::isinf(high) ? nlohmann::json() : nlohmann::json(high)};
}

// Applies the keys of `j` ("delta", "a", "a_power", "a_band", "a_clip"; the file's top level also has "layers"
// and "decimation") to `f`.
inline void apply(const nlohmann::json& j, layer_scaling& f, const std::string& where, bool top_level = false) {
    detail::require(j.is_object(), where, " must be a JSON object");
    for (const auto& [key, value] : j.items()) {
        if (key == "delta") {
            f.delta = number(value, where + ".delta");
        } else if (key == "a") {
            f.spectrum.alpha = number(value, where + ".a");
        } else if (key == "a_power") {
            f.spectrum.exponent = number(value, where + ".a_power");
        } else if (key == "a_band") {
            range(value, where + ".a_band", f.spectrum.min_magnitude, f.spectrum.max_magnitude);
        } else if (key == "a_clip") {
            range(value, where + ".a_clip", f.clip.low, f.clip.high);
        } else {
            detail::require(top_level && (key == "layers" || key == "decimation"), where, ": unknown key '", key,
                            "' (expected delta, a, a_power, a_band, a_clip", top_level ? ", layers, decimation)" : ")");
        }
    }
}

inline nlohmann::json parse(const std::filesystem::path& path) {
    std::ifstream in(path);
    detail::require(bool(in), path.string(), ": cannot open the scaling file");
    try {
        return nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
        detail::require(false, path.string(), ": not valid JSON: ", e.what());
    }
    return {};
}

inline index_t count(const nlohmann::json& j, const std::string& where) {
    detail::require(j.is_number_integer(), where, " must be an integer, got ", j.dump());
    return j.get<index_t>();
}
}  // namespace scaling_detail

// Reads a scaling file for a model of `layers` layers; throws ssm::error naming the file and the
// problem. The factors are checked again when a model takes them (causal_lm::set_scaling).
inline std::vector<layer_scaling> read_scaling(const std::filesystem::path& path, index_t layers) {
    const std::string name = path.string();
    const nlohmann::json j = scaling_detail::parse(path);
    layer_scaling defaults;
    scaling_detail::apply(j, defaults, name, true);
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

// The file's "decimation" object (no decimation when it has none), checked against the model's
// `layers` layers.
inline decimation_settings read_decimation(const std::filesystem::path& path, index_t layers) {
    const std::string where = path.string() + ": decimation";
    const nlohmann::json j = scaling_detail::parse(path);
    decimation_settings out;
    if (!j.is_object() || !j.contains("decimation")) return out;
    const nlohmann::json& d = j["decimation"];
    detail::require(d.is_object(), where, " must be a JSON object");
    for (const auto& [key, value] : d.items()) {
        if (key == "layers") {
            detail::require(value.is_array(), where, ".layers must be an array of layer indices");
            for (const auto& l : value) out.layers.push_back(scaling_detail::count(l, where + ".layers[]"));
        } else if (key == "base_length") {
            out.schedule.base_length = scaling_detail::count(value, where + ".base_length");
        } else if (key == "beta") {
            out.schedule.beta = scaling_detail::number(value, where + ".beta");
        } else if (key == "min_length") {
            out.schedule.min_length = scaling_detail::count(value, where + ".min_length");
        } else {
            detail::require(false, where, ": unknown key '", key, "' (expected layers, base_length, beta, min_length)");
        }
    }
    out.validate(where, layers);
    return out;
}

inline void write_scaling(const std::filesystem::path& path, const std::vector<layer_scaling>& layers,
                          const decimation_settings& decimation = {}) {
    nlohmann::json list = nlohmann::json::array();
    for (const layer_scaling& f : layers)
        list.push_back({{"delta", f.delta},
                        {"a", f.spectrum.alpha},
                        {"a_power", f.spectrum.exponent},
                        {"a_band", scaling_detail::range_json(f.spectrum.min_magnitude, f.spectrum.max_magnitude)},
                        {"a_clip", scaling_detail::range_json(f.clip.low, f.clip.high)}});
    nlohmann::json file{{"layers", list}};
    if (decimation.enabled())
        file["decimation"] = {{"layers", decimation.layers},
                              {"base_length", decimation.schedule.base_length},
                              {"beta", decimation.schedule.beta},
                              {"min_length", decimation.schedule.min_length}};
    std::ofstream out(path);
    out << file.dump(1) << "\n";
    detail::require(bool(out), path.string(), ": cannot write the scaling file");
}

// The data-free spectrum clipping: each layer's |λ| clipped to the [low, high] percentiles (0-100,
// nearest rank) of that layer's trained eigenvalue magnitudes; the other factors are kept.
template <class Model>
std::vector<layer_scaling> percentile_clipping(const Model& model, float low, float high) {
    detail::require(0.0f <= low && low <= high && high <= 100.0f, "percentile_clipping: percentiles must satisfy ",
                    "0 <= low <= high <= 100, got ", low, " and ", high);
    std::vector<layer_scaling> out = model.scaling();
    for (std::size_t l = 0; l < out.size(); ++l) {
        std::vector<float> m = model.eigenvalue_magnitudes(index_t(l));
        std::sort(m.begin(), m.end());
        auto at = [&](float pct) { return m[std::size_t(std::lround(pct / 100.0f * float(m.size() - 1)))]; };
        out[l].clip = {at(low), at(high)};
    }
    return out;
}

}  // namespace ssm::models
