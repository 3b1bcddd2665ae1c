// Mamba-2 on the device: the generic scans on its shape, and SSD on tensor cores, against the
// float64 reference.
#include <catch2/catch.hpp>

#include "device_test.cuh"

using namespace device_test;

// The scans that are not SSD's on the Mamba-2 shape: 6 heads of 8 channels, 3 groups, state 64.
TEST_CASE("device scans match the float64 reference on the Mamba-2 shape", "[cuda]") {
    SSM_SEEDED_RANDOM(rng);
    for (const ssm::index_t length : {1, 2, 97, 1000})
        check_structure<ssm::scalar_identity>(rng, {.batch = 2, .length = length, .channels = 48, .head_dim = 8,
                                                    .state = 64, .groups = 3, .z = true, .D = true,
                                                    .delta_bias = true, .softplus = true, .initial_state = true});
}

// SSD on tensor cores: lengths around the chunk of 64 tokens, head dimensions and state sizes that
// are not multiples of 16, several groups, every storage type, both exponential rules, and the Δ
// modulator with the spectrum scaler fused in; in one pass and in windows of one span, with the
// launcher's heads a block, one, and a whole group's, and spans of two and four chunks (the
// lengths of 65 and 129 tokens end in a shorter span).
TEST_CASE("device SSD matches the float64 reference", "[cuda][ssd]") {
    SSM_SEEDED_RANDOM(rng);
    struct dims {
        ssm::index_t heads, head_dim, state, groups;
    };
    for (const ssm::index_t length : {1, 2, 63, 64, 65, 129, 1000}) {
        for (const dims d : {dims{2, 8, 16, 1}, dims{6, 13, 37, 3}, dims{4, 64, 128, 2}, dims{1, 128, 64, 1},
                             dims{2, 128, 64, 1}, dims{12, 16, 32, 2}, dims{8, 8, 16, 1}}) {
            const ref::shape s{.batch = 2, .length = length, .channels = d.heads * d.head_dim, .head_dim = d.head_dim,
                               .state = d.state, .groups = d.groups, .z = true, .D = true, .delta_bias = true,
                               .softplus = true, .initial_state = true};
            INFO(s);
            const int group = int(d.heads / d.groups);
            const std::vector<device_strategy> ways{ssm::ssd{},
                                                    ssm::ssd{.workspace = 0, .heads_per_block = 1},
                                                    ssm::ssd{.heads_per_block = group},
                                                    ssm::ssd{.chunks_per_span = 4},
                                                    ssm::ssd{.workspace = 0, .chunks_per_span = 2}};
            auto zoh = ref::random_problem(rng, ref::structure::scalar_identity, ref::rule::zoh, s);
            check_device_scan<ssm::scalar_identity, ssm::zoh, float>(zoh, ways);
            check_device_scan<ssm::scalar_identity, ssm::zoh, ssm::float16>(zoh, ways);
            auto mamba = ref::random_problem(rng, ref::structure::scalar_identity, ref::rule::zoh_euler, s);
            check_device_scan<ssm::scalar_identity, ssm::zoh_euler, float>(mamba, ways);
            check_device_scan<ssm::scalar_identity, ssm::zoh_euler, ssm::bfloat16>(mamba, ways);
            mamba.delta_factor = 1.7;
            mamba.spectrum = {{.alpha = 0.6}};
            check_device_scan<ssm::scalar_identity, ssm::zoh_euler, float>(
                mamba, ways, ssm::compose(ssm::delta_modulator{.factor = 1.7f}, ssm::spectrum_scaler{.alpha = 0.6f}));
        }
    }
}

// y's epilogue reads D in 16-byte vectors where D allows; one float into its buffer it must not.
TEST_CASE("device SSD reads a D not aligned for vector loads", "[cuda][ssd]") {
    SSM_SEEDED_RANDOM(rng);
    const auto p = ref::random_problem(rng, ref::structure::scalar_identity, ref::rule::zoh_euler,
                                       {.batch = 2, .length = 129, .channels = 4 * 64, .head_dim = 64, .state = 128,
                                        .groups = 2, .z = true, .D = true, .delta_bias = true, .softplus = true,
                                        .initial_state = true});
    const std::vector<device_strategy> ways{ssm::ssd{}};
    check_device_scan<ssm::scalar_identity, ssm::zoh_euler, float>(p, ways, {}, 1);
    check_device_scan<ssm::scalar_identity, ssm::zoh_euler, ssm::bfloat16>(p, ways, {}, 1);
}

TEST_CASE("device SSD carries state over a million tokens", "[cuda][ssd]") {
    SSM_SEEDED_RANDOM(rng);
    auto p = ref::random_problem(rng, ref::structure::scalar_identity, ref::rule::zoh_euler,
                                 {.batch = 1, .length = ssm::index_t(1) << 20, .channels = 16, .head_dim = 8,
                                  .state = 16, .z = true, .D = true, .softplus = true, .initial_state = true});
    for (auto& a : p.A) a *= 0.01;  // slow decay: the state remembers across the whole sequence
    // In one pass, in spans of 4 chunks, and with a workspace of 1 MiB: windows of 63 chunks (float)
    // or 85 (bf16), the state carried across 260 or 192 of them.
    const std::vector<device_strategy> ways{ssm::ssd{}, ssm::ssd{.chunks_per_span = 4},
                                            ssm::ssd{.workspace = std::size_t(1) << 20, .chunks_per_span = 1}};
    check_device_scan<ssm::scalar_identity, ssm::zoh_euler, float>(p, ways);
    check_device_scan<ssm::scalar_identity, ssm::zoh_euler, ssm::bfloat16>(p, ways);
}
