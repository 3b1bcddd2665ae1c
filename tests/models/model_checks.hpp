#pragma once
// Checks shared by the host and device model tests: logits from one prefill and from a prefill
// followed by single-token decoding, outputs poisoned (NaN) before every call, and comparison with
// the Hugging Face reference fixtures (tests/fixtures/hf). A model is anything with causal_lm's
// host-memory interface: config(), make_cache(batch) and forward(exec, tokens, cache, logits).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <vector>

#include <catch2/catch.hpp>
#include <ssm/core/parallel.hpp>
#include <ssm/io/config.hpp>
#include <ssm/io/safetensors.hpp>

#include "reference.hpp"

namespace checks {

namespace fs = std::filesystem;
using ssm::index_t;

inline const ssm::host_exec exec{.threads = 2};

inline double max_difference(const std::vector<float>& a, const std::vector<float>& b) {
    REQUIRE(a.size() == b.size());
    double worst = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (std::isnan(a[i]) || std::isnan(b[i])) return INFINITY;
        worst = std::max(worst, std::abs(double(a[i]) - double(b[i])));
    }
    return worst;
}

// Logits of tokens (batch, length) from a fresh cache, every position; poisoned beforehand.
template <class Model>
std::vector<float> prefill(const Model& model, const std::vector<std::int32_t>& tokens, index_t batch) {
    const index_t length = index_t(tokens.size()) / batch, vocab = model.config().vocab_size;
    std::vector<float> logits(std::size_t(batch * length * vocab), NAN);
    auto cache = model.make_cache(batch);
    model.forward(exec, {tokens.data(), batch, length}, cache, {logits.data(), batch, length, vocab});
    return logits;
}

// The same logits with the sequences fed in pieces: `first` tokens at once, then one at a time,
// asking for the last position only in the one-token calls.
template <class Model>
std::vector<float> prefill_then_decode(const Model& model, const std::vector<std::int32_t>& tokens, index_t batch,
                                       index_t first) {
    const index_t length = index_t(tokens.size()) / batch, vocab = model.config().vocab_size;
    std::vector<float> logits(std::size_t(batch * length * vocab), NAN);
    auto cache = model.make_cache(batch);
    std::vector<std::int32_t> piece(static_cast<std::size_t>(batch * first));
    std::vector<float> piece_logits(std::size_t(batch * first * vocab), NAN);
    for (index_t b = 0; b < batch; ++b)
        std::copy_n(tokens.begin() + b * length, first, piece.begin() + b * first);
    model.forward(exec, {piece.data(), batch, first}, cache, {piece_logits.data(), batch, first, vocab});
    for (index_t b = 0; b < batch; ++b)
        std::copy_n(piece_logits.begin() + b * first * vocab, first * vocab, logits.begin() + b * length * vocab);
    for (index_t t = first; t < length; ++t) {
        std::vector<std::int32_t> next(static_cast<std::size_t>(batch));
        std::vector<float> next_logits(std::size_t(batch * vocab), NAN);
        for (index_t b = 0; b < batch; ++b) next[std::size_t(b)] = tokens[std::size_t(b * length + t)];
        model.forward(exec, {next.data(), batch, 1}, cache, {next_logits.data(), batch, 1, vocab});
        for (index_t b = 0; b < batch; ++b)
            std::copy_n(next_logits.begin() + b * vocab, vocab, logits.begin() + (b * length + t) * vocab);
    }
    REQUIRE(cache.position == length);
    return logits;
}

inline std::vector<std::int32_t> random_tokens(ref::random_source& rng, index_t count, index_t vocab) {
    std::vector<std::int32_t> out(static_cast<std::size_t>(count));
    for (auto& t : out) t = std::int32_t(std::min<double>(double(vocab - 1), rng.uniform(0.0, double(vocab))));
    return out;
}

inline ssm::io::model_config mamba1_config() {
    ssm::io::model_config c;
    c.architecture = ssm::io::architecture::mamba1;
    c.hidden_size = 20, c.intermediate_size = 40, c.state_size = 7, c.layers = 2, c.conv_kernel = 3;
    c.vocab_size = 29, c.time_step_rank = 3, c.use_bias = true, c.tie_word_embeddings = false;
    return c;
}

inline ssm::io::model_config mamba2_config() {
    ssm::io::model_config c;
    c.architecture = ssm::io::architecture::mamba2;
    c.hidden_size = 24, c.intermediate_size = 48, c.state_size = 10, c.layers = 2, c.conv_kernel = 4;
    c.vocab_size = 31, c.heads = 6, c.head_dim = 8, c.groups = 2, c.chunk_size = 16;
    c.time_step_max = 0.05f;  // the clamp is active for part of the tokens
    return c;
}

// The fixture folders under root, sorted; at least five, so that a missing one cannot pass unnoticed.
inline std::vector<fs::path> fixture_folders(const fs::path& root) {
    std::vector<fs::path> folders;
    for (const auto& entry : fs::directory_iterator(root))
        if (entry.is_directory()) folders.push_back(entry.path());
    std::sort(folders.begin(), folders.end());
    REQUIRE(folders.size() >= 5);
    return folders;
}

// The model's logits for the fixture's input_ids against transformers' (prefill, and prefill of all
// but 7 tokens then 7 decoding steps), within 1e-4.
template <class Model>
void match_fixture(const Model& model, const fs::path& folder) {
    const ssm::io::safetensors_file file(folder / "reference.safetensors");
    const ssm::io::safetensors_view& reference = file.view();
    const auto& id_shape = reference.tensor("input_ids").shape;
    REQUIRE(id_shape.size() == 2);
    const index_t batch = id_shape[0], length = id_shape[1], vocab = model.config().vocab_size;
    const std::vector<float> ids = reference.load("input_ids", std::array{batch, length});
    const std::vector<std::int32_t> tokens(ids.begin(), ids.end());
    const std::vector<float> expected = reference.load("logits", std::array{batch, length, vocab});

    CHECK(max_difference(prefill(model, tokens, batch), expected) <= 1e-4);
    // Decoding after a prefill: HF's own cached decoding where the fixture has it, and ours
    // against HF's full-sequence logits.
    const std::vector<float> decoded = prefill_then_decode(model, tokens, batch, length - 7);
    CHECK(max_difference(decoded, expected) <= 1e-4);
    if (reference.contains("decode_logits")) {
        const std::vector<float> hf_decoded = reference.load("decode_logits", std::array{batch, index_t(7), vocab});
        std::vector<float> ours;
        for (index_t b = 0; b < batch; ++b)
            ours.insert(ours.end(), decoded.begin() + (b * length + length - 7) * vocab,
                        decoded.begin() + (b + 1) * length * vocab);
        CHECK(max_difference(ours, hf_decoded) <= 1e-4);
    }
}

}  // namespace checks
