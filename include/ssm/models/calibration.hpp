#pragma once
// Calibration of the per-layer context-extension factors (layer_scaling) for a target length: a
// coordinate search that, layer by layer, multiplies one factor (Δ's, the spectrum's α, its exponent
// p) by each value of a grid and keeps the value with the lowest mean next-token loss over
// calibration windows of the target length. No gradients, a few hundred forward passes over a few
// windows.
#include <cmath>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "evaluation.hpp"
#include "mixers.hpp"

namespace ssm::models {

struct calibration_options {
    std::vector<float> grid{0.5f, 0.7f, 0.85f, 1.2f, 1.4f, 2.0f};  // multipliers tried on each factor
    bool delta = true;     // search the Δ factors
    bool spectrum = true;  // search the spectrum factors α (on each layer's current band)
    bool exponent = false; // search the spectrum exponents p (|λ| -> α·|λ|^p, the paper's code's form)
    int passes = 2;        // sweeps over all layers
};

struct calibration_result {
    std::vector<layer_scaling> scaling;
    double initial_loss = 0.0;  // the objective at the starting factors
    double loss = 0.0;          // at the factors found
    int evaluations = 0;
};

// The number of objective evaluations coordinate_search makes (besides the first).
inline int calibration_steps(const calibration_options& o, std::size_t layers) {
    return o.passes * int(layers) * (int(o.delta) + int(o.spectrum) + int(o.exponent)) * int(o.grid.size());
}

// Coordinate search over the factors of `start`, minimizing objective(factors); on_step(done, all)
// is called after each evaluation. A candidate replaces the current factors only when its loss is
// lower, so the result is never worse than the start.
template <class Objective, class Progress>
calibration_result coordinate_search(std::vector<layer_scaling> start, const calibration_options& options,
                                     Objective&& objective, Progress&& on_step) {
    detail::require(options.passes >= 1, "calibrate: passes must be at least 1, got ", options.passes);
    detail::require(options.delta || options.spectrum || options.exponent,
                    "calibrate: nothing to search (no delta, spectrum or exponent factors)");
    for (float g : options.grid)
        detail::require(std::isfinite(g) && g > 0.0f, "calibrate: grid values must be positive and finite, got ", g);
    calibration_result r{start, 0.0, 0.0, 1};
    r.initial_loss = r.loss = objective(r.scaling);
    const int all = calibration_steps(options, start.size());
    int done = 0;
    for (int pass = 0; pass < options.passes; ++pass)
        for (std::size_t l = 0; l < r.scaling.size(); ++l)
            for (int kind = 0; kind < 3; ++kind) {
                if (!(kind == 0 ? options.delta : kind == 1 ? options.spectrum : options.exponent)) continue;
                auto factor = [&](std::vector<layer_scaling>& s) -> float& {
                    return kind == 0 ? s[l].delta : kind == 1 ? s[l].spectrum.alpha : s[l].spectrum.exponent;
                };
                const float base = factor(r.scaling);
                for (float g : options.grid) {
                    std::vector<layer_scaling> candidate = r.scaling;
                    factor(candidate) = base * g;
                    const double loss = objective(candidate);
                    ++r.evaluations;
                    if (loss < r.loss) r.loss = loss, r.scaling = std::move(candidate);
                    on_step(++done, all);
                }
            }
    return r;
}

// Calibrates `model` (causal_lm or any model with set_scaling / scaling and window_losses'
// interface) on the windows of `tokens` described by `windows`, starting from its current factors,
// and leaves the factors found set on the model. The objective is the mean next-token loss (nats)
// over the scored positions of the windows.
template <class Model, class Progress>
calibration_result calibrate(Model& model, const host_exec& exec, std::span<const std::int32_t> tokens,
                             const window_options& windows, const calibration_options& options, Progress&& on_step) {
    auto objective = [&](const std::vector<layer_scaling>& factors) {
        model.set_scaling(factors);
        const position_losses p = window_losses(model, exec, tokens, windows, [](index_t, index_t) {});
        double sum = 0.0;
        for (double v : p.loss) sum += v;
        const index_t scored = windows.scored > 0 ? windows.scored : windows.window - 1;
        return sum / double(p.windows * scored);
    };
    calibration_result r = coordinate_search(model.scaling(), options, objective, on_step);
    model.set_scaling(r.scaling);
    return r;
}

}  // namespace ssm::models
