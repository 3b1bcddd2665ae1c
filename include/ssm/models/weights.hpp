#pragma once
// Where a model's tensors come from. A model asks its source for each tensor by its Hugging Face name
// and shape; `checkpoint_weights` reads a checkpoint folder and, once the model is built, rejects
// tensors it did not ask for (a config/weights mismatch), `random_weights` makes a model of any
// shape for tests and benchmarks.
#include <cmath>
#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor_view.hpp"
#include "../io/safetensors.hpp"

namespace ssm::models {

template <class S>
concept weight_source = requires(S s, const std::string& name, std::vector<index_t> shape) {
    { s.required(name, shape) } -> std::same_as<std::vector<float>>;
    // A tensor the config says is there (`present`) or not; `key` names the config key in errors.
    { s.optional(name, shape, true, "key") } -> std::same_as<std::vector<float>>;
    { s.contains(name) } -> std::same_as<bool>;
};

class checkpoint_weights {
public:
    explicit checkpoint_weights(const io::checkpoint& checkpoint) : checkpoint_(checkpoint) {}

    std::vector<float> required(const std::string& name, const std::vector<index_t>& shape) {
        used_.insert(name);
        return checkpoint_.load(name, shape);
    }
    std::vector<float> optional(const std::string& name, const std::vector<index_t>& shape, bool present,
                                const char* key) {
        if (present) return required(name, shape);
        if (checkpoint_.contains(name))
            detail::fail(checkpoint_.source_of(name), ": tensor '", name, "' is in the checkpoint but the config's '",
                         key, "' says the model has none");
        return {};
    }
    bool contains(const std::string& name) const { return checkpoint_.contains(name); }
    void mark_used(const std::string& name) { used_.insert(name); }

    // Every tensor of the checkpoint must have been asked for.
    void check_all_used() const {
        std::string extra;
        int count = 0;
        for (const std::string& name : checkpoint_.names())
            if (!used_.contains(name) && count++ < 5) extra += (extra.empty() ? "" : ", ") + name;
        detail::require(count == 0, checkpoint_.folder().string(), ": ", count,
                        " tensor(s) that the config does not account for (", extra, count > 5 ? ", ..." : "",
                        "); does config.json match the weights?");
    }

private:
    const io::checkpoint& checkpoint_;
    std::set<std::string, std::less<>> used_;
};

// Weights drawn like a freshly initialized model: A_log = log(1..N) (S4D-real), D = 1, Δ biases
// giving Δ in [0.001, 0.1], norms 1, other matrices uniform with variance 1/fan_in.
class random_weights {
public:
    explicit random_weights(std::uint64_t seed) : rng_(seed) {}

    std::vector<float> required(const std::string& name, const std::vector<index_t>& shape) {
        index_t count = 1;
        for (index_t e : shape) count *= e;
        std::vector<float> out(static_cast<std::size_t>(count));
        const auto ends_with = [&](std::string_view suffix) { return std::string_view(name).ends_with(suffix); };
        std::uniform_real_distribution<float> unit(0.0f, 1.0f);
        if (ends_with("A_log")) {
            // log(1..N) along the last axis: per state for Mamba-1, per head for Mamba-2.
            for (index_t i = 0; i < count; ++i) out[std::size_t(i)] = std::log(float(i % shape.back() + 1));
        } else if (ends_with(".D") || ends_with("norm.weight") || ends_with("norm_f.weight")) {
            for (float& v : out) v = 1.0f;
        } else if (ends_with("dt_bias") || ends_with("dt_proj.bias")) {
            for (float& v : out) {
                const float dt = std::exp(std::log(1e-3f) + unit(rng_) * (std::log(1e-1f) - std::log(1e-3f)));
                v = dt + std::log(-std::expm1(-dt));  // inverse softplus
            }
        } else {
            const float bound = std::sqrt(3.0f / float(shape.back()));
            for (float& v : out) v = (2.0f * unit(rng_) - 1.0f) * bound;
        }
        return out;
    }
    std::vector<float> optional(const std::string& name, const std::vector<index_t>& shape, bool present,
                                const char*) {
        return present ? required(name, shape) : std::vector<float>{};
    }
    bool contains(const std::string&) const { return false; }

private:
    std::mt19937_64 rng_;
};

}  // namespace ssm::models
