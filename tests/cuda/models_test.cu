// Mamba and Mamba-2 language models on the device: logits against Hugging Face transformers' on the
// reference fixtures and against the host model on random ones, decoding (replayed CUDA graphs)
// against prefill, bf16 products against float32, and the errors a bad call gets.
#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <cmath>
#include <vector>

#include <ssm/models/device_lm.cuh>

#include "models/model_checks.hpp"

namespace {

using ssm::index_t;
using ssm::models::mamba2_lm;
using ssm::models::mamba_lm;
using ssm::models::staged_lm;

template <class X, class Host>
auto on_device(const Host& host) {
    return staged_lm(ssm::models::to_device<X>(host));
}

double max_magnitude(const std::vector<float>& v) {
    double m = 0.0;
    for (float x : v) m = std::max(m, double(std::abs(x)));
    return m;
}

}  // namespace

TEST_CASE("device models match Hugging Face transformers on the reference fixtures", "[cuda][models]") {
    for (const auto& folder : checks::fixture_folders(SSM_FIXTURES_DIR)) {
        INFO("fixture " << folder.filename().string());
        ssm::models::with_model(folder, [&](const auto& host) { checks::match_fixture(on_device<float>(host), folder); });
    }
}

TEMPLATE_TEST_CASE("device models equal the host model (layers scaled); decoding equals prefill", "[cuda][models]",
                   mamba_lm, mamba2_lm) {
    SSM_SEEDED_RANDOM(rng);
    auto config = std::same_as<TestType, mamba_lm> ? checks::mamba1_config() : checks::mamba2_config();
    // Mamba-1 also with the global selection module, its window longer than a few of the calls.
    const bool global = std::same_as<TestType, mamba_lm> && GENERATE(false, true);
    if (global) config.global_selection_kernel = 9;
    INFO("global selection " << global);
    TestType host = TestType::random(config, rng.integer(0, 1 << 30));
    // Context-extension factors on every layer, so that the device applies them as the host does.
    std::vector<ssm::models::layer_scaling> factors(static_cast<std::size_t>(config.layers));
    for (auto& f : factors) {
        f.delta = float(rng.uniform(0.5, 2.0));
        f.clip = {.low = float(rng.uniform(1.0, 2.0)), .high = float(rng.uniform(4.0, 6.0))};
        f.spectrum = {.alpha = float(rng.uniform(0.3, 3.0)), .min_magnitude = 1.5f, .max_magnitude = 5.5f};
    }
    host.set_scaling(factors);
    const auto device = on_device<float>(host);
    // One sequence decodes on the matrix-vector kernels, several on cuBLAS's products.
    const index_t batch = GENERATE(1, 3);
    INFO("batch " << batch);
    // 1 and 7: single-chunk scans; 300 and 1031: several chunks of the device scan.
    for (const index_t length : {1, 7, 300, 1031}) {
        INFO("length " << length);
        const auto tokens = checks::random_tokens(rng, batch * length, config.vocab_size);
        const auto expected = checks::prefill(host, tokens, batch);
        CHECK(checks::max_difference(checks::prefill(device, tokens, batch), expected) <= 1e-4);
        const index_t first = std::max<index_t>(1, length - 5);
        CHECK(checks::max_difference(checks::prefill_then_decode(device, tokens, batch, first), expected) <= 1e-4);
    }
}

TEMPLATE_TEST_CASE("device decimation keeps what the host keeps, in prefill and the decoding after it",
                   "[cuda][models][decimation]", mamba_lm, mamba2_lm) {
    SSM_SEEDED_RANDOM(rng);
    auto config = std::same_as<TestType, mamba_lm> ? checks::mamba1_config() : checks::mamba2_config();
    config.layers = 3;
    TestType host = TestType::random(config, rng.integer(0, 1 << 30));
    const TestType plain = host;
    host.set_decimation({.layers = {1, 2}, .schedule = {.base_length = 100, .beta = 0.5, .min_length = 5},
                         .response_length = 1});
    const auto device = on_device<float>(host);
    const index_t batch = 2, length = 300, vocab = config.vocab_size;
    const auto tokens = checks::random_tokens(rng, batch * length, vocab);
    const auto steps = checks::random_tokens(rng, batch * 3, vocab);
    // The last position's logits after the prefill, then after each of 3 single-token steps.
    auto run = [&](const auto& model) {
        auto cache = model.make_cache(batch);
        std::vector<float> all, logits(std::size_t(batch * vocab), NAN);
        model.forward(checks::exec, {tokens.data(), batch, length}, cache, {logits.data(), batch, 1, vocab});
        all.insert(all.end(), logits.begin(), logits.end());
        for (index_t step = 0; step < 3; ++step) {
            std::fill(logits.begin(), logits.end(), NAN);
            model.forward(checks::exec, {steps.data() + step * batch, batch, 1}, cache, {logits.data(), batch, 1, vocab});
            all.insert(all.end(), logits.begin(), logits.end());
        }
        return all;
    };
    const auto expected = run(host);
    CHECK(checks::max_difference(run(device), expected) <= 1e-4);
    CHECK(checks::max_difference(run(plain), expected) > 1e-3);  // the layers did decimate
    std::vector<float> every(std::size_t(batch * length * vocab));
    auto cache = device.make_cache(batch);
    CHECK_THROWS_WITH(device.forward(checks::exec, {tokens.data(), batch, length}, cache, {every.data(), batch, length, vocab}),
                      Catch::Contains("with decimation, logits are read for the last position only on the device"));
}

TEMPLATE_TEST_CASE("decoding on the legacy default stream (no graph) equals the host", "[cuda][models]", mamba_lm,
                   mamba2_lm) {
    SSM_SEEDED_RANDOM(rng);
    const auto config = std::same_as<TestType, mamba_lm> ? checks::mamba1_config() : checks::mamba2_config();
    const TestType host = TestType::random(config, rng.integer(0, 1 << 30));
    const auto model = ssm::models::to_device<float>(host);
    const index_t batch = GENERATE(1, 2), length = 9, first = 4, vocab = config.vocab_size;
    const auto tokens = checks::random_tokens(rng, batch * length, vocab);
    const auto expected = checks::prefill_then_decode(host, tokens, batch, first);
    auto cache = model.make_cache(batch);
    ssm::cuda::device_array<float> logits(std::size_t(batch * first * vocab));
    for (index_t t = first; t <= length; ++t) {
        const index_t count = t == first ? first : 1, start = t == first ? 0 : t - 1;
        std::vector<std::int32_t> piece;
        for (index_t b = 0; b < batch; ++b)
            piece.insert(piece.end(), tokens.begin() + b * length + start, tokens.begin() + b * length + start + count);
        const auto device_piece = ssm::cuda::device_array<std::int32_t>::copy_of(piece);
        REQUIRE(cudaMemset(logits.data(), 0xff, logits.size() * sizeof(float)) == cudaSuccess);  // NaN
        model.forward(ssm::cuda_exec{}, {device_piece.data(), batch, count}, cache, {logits.data(), batch, 1, vocab});
        std::vector<float> got(std::size_t(batch * vocab));
        REQUIRE(cudaMemcpy(got.data(), logits.data(), got.size() * sizeof(float), cudaMemcpyDeviceToHost) ==
                cudaSuccess);
        std::vector<float> want;
        for (index_t b = 0; b < batch; ++b) {
            const auto row = expected.begin() + (b * length + start + count - 1) * vocab;
            want.insert(want.end(), row, row + vocab);
        }
        INFO("after " << start + count << " tokens");
        CHECK(checks::max_difference(got, want) <= 1e-4);
    }
}

TEMPLATE_TEST_CASE("bf16 products stay close to float32", "[cuda][models]", mamba_lm, mamba2_lm) {
    SSM_SEEDED_RANDOM(rng);
    const auto config = std::same_as<TestType, mamba_lm> ? checks::mamba1_config() : checks::mamba2_config();
    const TestType host = TestType::random(config, rng.integer(0, 1 << 30));
    const index_t batch = 2, length = 200;
    const auto tokens = checks::random_tokens(rng, batch * length, config.vocab_size);
    const auto expected = checks::prefill(host, tokens, batch);
    const auto bf16 = on_device<ssm::bfloat16>(host);
    const double error = checks::max_difference(checks::prefill(bf16, tokens, batch), expected);
    const double decode_error =
        checks::max_difference(checks::prefill_then_decode(bf16, tokens, batch, length - 4), expected);
    // bf16 keeps 8 significant bits: inputs and weights of every large product are rounded by up to
    // 2^-9 relative, through two layers and the head; seen: up to 2.1% of the largest logit.
    const double bound = 0.05 * max_magnitude(expected);
    INFO("max |logit| " << max_magnitude(expected) << ", prefill error " << error << ", decode error " << decode_error);
    CHECK(error <= bound);
    CHECK(decode_error <= bound);
    CHECK(error > 0.0);  // the products did run in bf16
}

TEST_CASE("device models reject bad calls and flag bad token ids", "[cuda][models]") {
    const mamba_lm host = mamba_lm::random(checks::mamba1_config(), 7);
    const index_t vocab = host.config().vocab_size;
    const auto staged = on_device<float>(host);
    auto cache = staged.make_cache(2);
    std::vector<std::int32_t> tokens{1, 2, int(vocab), 3};
    std::vector<float> logits(std::size_t(4 * vocab));
    CHECK_THROWS_WITH(staged.forward(checks::exec, {tokens.data(), 2, 2}, cache, {logits.data(), 2, 2, vocab}),
                      Catch::Contains("token id " + std::to_string(vocab) + " at (1, 0) is outside the vocabulary"));
    CHECK_THROWS_WITH(staged.forward(checks::exec, {tokens.data(), 1, 2}, cache, {logits.data(), 1, 2, vocab}),
                      Catch::Contains("the cache holds 2 sequences"));
    CHECK_THROWS_WITH(staged.forward(checks::exec, {tokens.data(), 2, 1}, cache, {logits.data(), 2, 2, vocab - 1}),
                      Catch::Contains("logits"));

    // On the device the ids are not checked: a bad one turns its own sequence's logits into NaN.
    const auto& model = staged.device_model();
    auto device_cache = model.make_cache(2);
    ssm::cuda::device_array<std::int32_t> device_tokens = ssm::cuda::device_array<std::int32_t>::copy_of(tokens);
    ssm::cuda::device_array<float> device_logits(logits.size());
    REQUIRE(cudaMemset(device_logits.data(), 0, logits.size() * sizeof(float)) == cudaSuccess);
    model.forward(ssm::cuda_exec{}, {device_tokens.data(), 2, 2}, device_cache, {device_logits.data(), 2, 2, vocab});
    REQUIRE(cudaMemcpy(logits.data(), device_logits.data(), logits.size() * sizeof(float), cudaMemcpyDeviceToHost) ==
            cudaSuccess);
    CHECK(std::all_of(logits.begin(), logits.begin() + 2 * vocab, [](float v) { return std::isfinite(v); }));
    CHECK(std::all_of(logits.begin() + 2 * vocab, logits.end(), [](float v) { return std::isnan(v); }));
}
