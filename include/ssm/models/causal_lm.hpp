#pragma once
// A Hugging Face MambaForCausalLM / Mamba2ForCausalLM on the host: embeddings → layers of
// (RMSNorm → mixer, residual add in float32) → norm_f → lm_head (tied to the embeddings or not).
//
//   auto model = ssm::models::mamba_lm::load("path/to/checkpoint");   // config.json + safetensors
//   auto cache = model.make_cache(batch);
//   model.forward(exec, prompt, cache, logits);      // prefill: logits (batch, length, vocab)
//   model.forward(exec, next_token, cache, last);    // decode: (batch, 1) tokens → (batch, 1, vocab)
//
// Logits may be asked for the last P positions of a call (batch, P, vocab), 1 <= P <= length.
//
// Weights are kept in float32 (bf16 and fp16 checkpoints are widened when loaded).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../io/config.hpp"
#include "../io/safetensors.hpp"
#include "decimation.hpp"
#include "mixers.hpp"
#include "weights.hpp"

namespace ssm::detail {
// The checks every forward call makes on its arguments' shapes (not on their values, which may be in
// device memory); returns for how many positions, the last ones, logits are asked (1 to length).
inline index_t check_forward_shapes(const char* where, tensor_view<const std::int32_t, 2> tokens, index_t cache_batch,
                                    index_t cache_layers, index_t layers, tensor_view<float, 3> logits, index_t vocab) {
    require(!tokens.empty(), where, ": tokens are missing");
    const index_t batch = tokens.extent(0), length = tokens.extent(1);
    require(batch > 0 && length > 0, where, ": tokens are empty (", batch, " x ", length, ")");
    require(tokens.stride(1) == 1 && tokens.stride(0) == length, where, ": tokens must be contiguous");
    require(cache_batch == batch && cache_layers == layers, where, ": the cache holds ", cache_batch,
            " sequences for ", cache_layers, " layers, the call has ", batch, " for ", layers);
    const index_t positions = logits.extent(1);
    check_shape(where, "logits", logits, {batch, std::clamp<index_t>(positions, 1, length), vocab},
                {"batch", "positions (1 to length)", "vocab"});
    require(logits.stride(2) == 1 && logits.stride(1) == vocab && logits.stride(0) == logits.extent(1) * vocab,
            where, ": logits must be contiguous");
    return positions;
}

// Token ids in host memory must lie in [0, vocab).
inline void check_token_ids(const char* where, tensor_view<const std::int32_t, 2> tokens, index_t vocab) {
    for (index_t b = 0; b < tokens.extent(0); ++b)
        for (index_t t = 0; t < tokens.extent(1); ++t)
            require(tokens(b, t) >= 0 && tokens(b, t) < vocab, where, ": token id ", tokens(b, t), " at (", b, ", ",
                    t, ") is outside the vocabulary of ", vocab);
}
}  // namespace ssm::detail

namespace ssm::models {

// Everything that carries over from one forward call to the next for a batch of sequences.
struct cache {
    index_t batch = 0;
    index_t position = 0;  // tokens consumed so far
    std::vector<layer_state> layers;
    workspace scratch;
    std::vector<float> hidden, normed, mixed, last;
};

template <class Mixer, host_gemm Gemm = blas_gemm>
class causal_lm {
public:
    using mixer_type = Mixer;

    // Reads folder/config.json and the safetensors weights; throws ssm::error naming the file, the
    // tensor and the problem when they are missing, malformed or disagree with each other.
    static causal_lm load(const std::filesystem::path& folder, Gemm gemm = {}) {
        const io::model_config config = io::read_config(folder / "config.json");
        const io::checkpoint checkpoint(folder);
        checkpoint_weights source(checkpoint);
        causal_lm model = build(config, source, std::move(gemm));
        if (config.tie_word_embeddings && source.contains("lm_head.weight")) source.mark_used("lm_head.weight");
        source.check_all_used();
        return model;
    }

    // A model of the config's shape with freshly initialized random weights.
    static causal_lm random(const io::model_config& config, std::uint64_t seed, Gemm gemm = {}) {
        random_weights source(seed);
        return build(config, source, std::move(gemm));
    }

    // A model built from any weight source (see weights.hpp).
    template <weight_source Source>
    static causal_lm build(const io::model_config& config, Source& source, Gemm gemm = {}) {
        detail::require(config.architecture == Mixer::architecture, "causal_lm: the config describes a ",
                        config.architecture == io::architecture::mamba1 ? "Mamba" : "Mamba-2",
                        " model; this model type is the other architecture");
        causal_lm m;
        m.config_ = config;
        m.gemm_ = std::move(gemm);
        const index_t d = config.hidden_size;
        m.embeddings_ = source.required("backbone.embeddings.weight", {config.vocab_size, d});
        for (index_t l = 0; l < config.layers; ++l) {
            const std::string prefix = "backbone.layers." + std::to_string(l) + ".";
            m.norms_.push_back(source.required(prefix + "norm.weight", {d}));
            m.mixers_.push_back(Mixer::load(source, prefix + "mixer.", config, l));
        }
        m.norm_f_ = source.required("backbone.norm_f.weight", {d});
        if (!config.tie_word_embeddings) m.lm_head_ = source.required("lm_head.weight", {config.vocab_size, d});
        return m;
    }

    const io::model_config& config() const { return config_; }
    const std::vector<Mixer>& mixers() const { return mixers_; }

    // The magnitudes |λ| of a layer's trained eigenvalues (of A, before any scaling).
    std::vector<float> eigenvalue_magnitudes(index_t layer) const {
        detail::require(layer >= 0 && layer < index_t(mixers_.size()), "eigenvalue_magnitudes: no layer ", layer);
        std::vector<float> m;
        for (float a : mixers_[std::size_t(layer)].A) m.push_back(std::abs(a));
        return m;
    }

    // Context extension: one layer_scaling per layer (see mixers.hpp and scaling.hpp).
    std::vector<layer_scaling> scaling() const {
        std::vector<layer_scaling> out;
        for (const Mixer& m : mixers_) out.push_back(m.scaling);
        return out;
    }
    void set_scaling(const std::vector<layer_scaling>& layers) {
        detail::require(layers.size() == mixers_.size(), "set_scaling: ", layers.size(), " layer factors for a model of ",
                        mixers_.size(), " layers");
        for (std::size_t l = 0; l < layers.size(); ++l) {
            const layer_scaling& f = layers[l];
            const std::string where = "set_scaling: layer " + std::to_string(l);
            detail::require(std::isfinite(f.delta) && f.delta > 0.0f, where, ": delta factor must be positive and finite, got ",
                            f.delta);
            detail::require(std::isfinite(f.spectrum.alpha), where, ": A factor must be finite, got ", f.spectrum.alpha);
            f.spectrum.validate(where, 1);
            f.clip.validate(where, 1);
            mixers_[l].scaling = f;
        }
    }
    // Decimation (DeciMamba; decimation.hpp). With it on, a call of several tokens gives logits for
    // at most its last response_length positions, the ones never dropped.
    const decimation_settings& decimation() const { return decimation_; }
    void set_decimation(decimation_settings settings) {
        settings.validate("set_decimation", index_t(mixers_.size()));
        decimation_ = std::move(settings);
    }

    // The weights outside the mixers (float32, as stored), e.g. for a copy on the device.
    const std::vector<float>& embeddings() const { return embeddings_; }
    const std::vector<std::vector<float>>& layer_norms() const { return norms_; }
    const std::vector<float>& final_norm() const { return norm_f_; }
    const std::vector<float>& head() const { return lm_head_.empty() ? embeddings_ : lm_head_; }

    index_t parameter_count() const {
        index_t n = index_t(embeddings_.size() + lm_head_.size() + norm_f_.size());
        for (const auto& w : norms_) n += index_t(w.size());
        for (const Mixer& m : mixers_) n += m.parameter_count();
        return n;
    }

    cache make_cache(index_t batch) const {
        detail::require(batch > 0, "make_cache: batch must be positive, got ", batch);
        cache c;
        c.batch = batch;
        for (const Mixer& m : mixers_) c.layers.push_back(m.make_state(batch));
        return c;
    }

    // Runs tokens (batch, length) through the model, continuing the sequences held in `cache`, and
    // writes the logits of the last P positions (logits (batch, P, vocab), P = length for every
    // position, 1 for the last). Prefill and decoding are the same call; without decimation any split
    // of a sequence into calls gives the same logits as one call.
    void forward(const host_exec& exec, tensor_view<const std::int32_t, 2> tokens, cache& c,
                 tensor_view<float, 3> logits) const {
        constexpr const char* where = "causal_lm::forward";
        const index_t positions = detail::check_forward_shapes(where, tokens, c.batch, index_t(c.layers.size()),
                                                               index_t(mixers_.size()), logits, config_.vocab_size);
        detail::check_token_ids(where, tokens, config_.vocab_size);
        const index_t batch = tokens.extent(0), d = config_.hidden_size, vocab = config_.vocab_size;
        index_t length = tokens.extent(1);
        detail::require(!decimation_.enabled() || length == 1 || positions <= decimation_.response_length, where,
                        ": with decimation, logits are read for at most the last response_length (",
                        decimation_.response_length, ") positions of a call, not ", positions);

        const auto hidden = detail::buffer(c.hidden, batch * length, d);
        const auto normed = detail::buffer(c.normed, batch * length, d);
        const auto mixed = detail::buffer(c.mixed, batch * length, d);
        ssm::detail::parallel_for(exec, batch * length, [&](index_t r) {
            const float* e = embeddings_.data() + tokens(r / length, r % length) * d;
            std::copy(e, e + d, hidden.data() + r * d);
        });
        const rms_norm_inputs norm_options{.epsilon = config_.norm_epsilon};
        for (std::size_t l = 0; l < mixers_.size(); ++l) {
            const index_t rows = batch * length;
            rms_norm(exec, tensor_view<const float, 2>(hidden.data(), rows, d), detail::optional_vector(norms_[l]),
                     norm_options, tensor_view<float, 2>(normed.data(), rows, d));
            // A single token always keeps itself (min_length >= 1): decoding skips the selection.
            const auto decimating = length > 1 ? decimation_.for_layer(index_t(l)) : std::nullopt;
            const index_t kept = mixers_[l].forward(exec, gemm_, tensor_view<const float, 2>(normed.data(), rows, d),
                                                    batch, length, c.layers[l], c.scratch, mixed,
                                                    decimating ? &*decimating : nullptr);
            if (kept != length) {  // the residual stream follows the kept tokens
                detail::keep_rows(hidden, batch, length, c.scratch.kept);
                length = kept;
            }
            ssm::detail::parallel_for(exec, batch * length, [&](index_t r) {
                for (index_t i = 0; i < d; ++i) hidden(r, i) += mixed(r, i);
            });
        }
        c.position += tokens.extent(1);

        // The last `positions` rows of each sequence (never dropped) go through norm_f and the head.
        tensor_view<const float, 2> final_rows(hidden.data(), batch * length, d);
        if (positions != length) {
            const auto last = detail::buffer(c.last, batch * positions, d);
            for (index_t b = 0; b < batch; ++b)
                std::copy_n(hidden.data() + (b * length + length - positions) * d, positions * d,
                            last.data() + b * positions * d);
            final_rows = last;
        }
        const index_t out_rows = final_rows.extent(0);
        const tensor_view<float, 2> final_normed(normed.data(), out_rows, d);
        rms_norm(exec, final_rows, detail::optional_vector(norm_f_), norm_options, final_normed);
        gemm_.multiply(exec, final_normed, detail::matrix(head(), vocab, d),
                       tensor_view<float, 2>(logits.data(), out_rows, vocab));
    }

private:
    io::model_config config_;
    Gemm gemm_{};
    std::vector<float> embeddings_, norm_f_, lm_head_;  // lm_head_ empty when tied to the embeddings
    std::vector<std::vector<float>> norms_;
    std::vector<Mixer> mixers_;
    decimation_settings decimation_;
};

using mamba_lm = causal_lm<mamba1_mixer>;
using mamba2_lm = causal_lm<mamba2_mixer>;

// Loads whichever architecture folder/config.json names and calls f(model).
template <class F>
decltype(auto) with_model(const std::filesystem::path& folder, F&& f) {
    const io::model_config config = io::read_config(folder / "config.json");
    if (config.architecture == io::architecture::mamba1) return f(mamba_lm::load(folder));
    return f(mamba2_lm::load(folder));
}

}  // namespace ssm::models
