// The device selective scans with real diagonal states (Mamba-1) against the float64 reference, on
// fresh random inputs, with outputs poisoned before every call; and their input checks.
#include <catch2/catch.hpp>

#include "device_test.cuh"

using namespace device_test;

TEST_CASE("device scans match the float64 reference", "[cuda]") {
    SSM_SEEDED_RANDOM(rng);
    for (const ssm::index_t length : {1, 2, 97, 1000}) {
        for (const ssm::index_t channels : {1, 5, 130}) {
            const ref::shape s{.batch = 2, .length = length, .channels = channels, .state = 5, .groups = 1,
                               .z = true, .D = true, .delta_bias = true, .softplus = true, .initial_state = true};
            check_structure<ssm::diagonal_real>(rng, s);
            // 16 real states: the tile geometries the kernels fix at compile time (cuda::fixed_tile), with
            // channels a multiple of four (float: four channels an access; 16-bit types: two) and not (130
            // channels: float takes the run-time geometry, 16-bit types the fixed tiles; 1 and 5: both
            // take the run-time geometry). The wide tile (two channels a thread) runs chunked scans of
            // several chunks, and look_back{1} at 1000 tokens and 130 channels (6,000 blocks of it: four
            // waves on devices of up to 375 multiprocessors); the others, the narrow one.
            ref::shape sixteen = s;
            sixteen.state = 16;
            check_structure<ssm::diagonal_real>(rng, sixteen);
            sixteen.channels = (channels + 3) / 4 * 4;
            check_structure<ssm::diagonal_real>(rng, sixteen);
        }
    }
}

// The fixed tile's loaders move four float channels at once, or two of a 16-bit type, only where every
// row of u, Δ, z and y allows it; elsewhere scans take the run-time geometry (whose results the case
// above checks).
TEST_CASE("fixed-tile accesses fit only where every row of u, delta, z and y is aligned to them", "[cuda]") {
    alignas(16) static float memory[2 * 8 * 16];
    const auto problem = []<class T>(T* base, ssm::index_t channels, ssm::index_t row, ssm::index_t groups = 1) {
        ssm::scan_problem<T> p{};
        p.shape.channels = channels;
        p.shape.groups = groups;
        const ssm::tensor_view<T, 3> rows(base, {2, 8, channels}, {8 * row, row, 1});
        p.in.u = p.in.delta = p.in.z = rows;
        p.out.y = rows;
        return p;
    };
    using ssm::cuda::fixed_tile_accesses_fit;
    CHECK(fixed_tile_accesses_fit(problem(memory, 8, 8)));
    CHECK(fixed_tile_accesses_fit(problem(memory, 8, 16, 2)));
    CHECK_FALSE(fixed_tile_accesses_fit(problem(memory + 1, 8, 8)));  // rows start misaligned
    CHECK_FALSE(fixed_tile_accesses_fit(problem(memory, 8, 10)));     // rows 10 floats apart
    CHECK_FALSE(fixed_tile_accesses_fit(problem(memory, 6, 8)));      // 6 channels
    CHECK_FALSE(fixed_tile_accesses_fit(problem(memory, 8, 8, 4)));   // groups of 2 channels
    auto strided = problem(memory, 8, 16);
    strided.in.z = {memory, {2, 8, 8}, {128, 16, 2}};  // channels 2 apart
    CHECK_FALSE(fixed_tile_accesses_fit(strided));
    auto per_head = problem(memory, 8, 8);
    per_head.in.delta = {memory, {2, 8, 2}, {64, 8, 1}};  // Δ a head of 4 channels
    CHECK_FALSE(fixed_tile_accesses_fit(per_head));

    alignas(16) static ssm::bfloat16 halves[2 * 8 * 16];
    CHECK(fixed_tile_accesses_fit(problem(halves, 6, 6)));
    CHECK_FALSE(fixed_tile_accesses_fit(problem(halves + 1, 6, 6)));  // rows start misaligned
    CHECK_FALSE(fixed_tile_accesses_fit(problem(halves, 6, 7)));      // rows 7 values apart
    CHECK_FALSE(fixed_tile_accesses_fit(problem(halves, 5, 6)));      // 5 channels
}

TEST_CASE("device scans carry state over a million tokens", "[cuda]") {
    SSM_SEEDED_RANDOM(rng);
    auto p = ref::random_problem(rng, ref::structure::diagonal_real, ref::rule::zoh_euler,
                                 {.batch = 1, .length = ssm::index_t(1) << 20, .channels = 3, .state = 16,
                                  .z = true, .D = true, .softplus = true});
    for (auto& a : p.A) a *= 0.01;  // slow decay: the state remembers across the whole sequence
    check_device_scan<ssm::diagonal_real, ssm::zoh_euler, float>(
        p, {ssm::sequential{}, ssm::chunked{.chunk = 4096}, ssm::look_back{.chunk = 4096}});
    // 1,049 chunks chained by look-back, most of them waiting on predecessors still running (the
    // narrow fixed tile); 4,096 chunks of 256 (the wide one, on devices of up to 256 multiprocessors).
    check_device_scan<ssm::diagonal_real, ssm::zoh_euler, ssm::bfloat16>(
        p, {ssm::chunked{.chunk = 1000}, ssm::look_back{.chunk = 1000}, ssm::look_back{.chunk = 256}});
}

TEST_CASE("device scans reject bad shapes before launching", "[cuda]") {
    std::vector<float> host(64, 1.0f);
    const device_buffer<float> buffer(host);
    const ssm::selective_ssm<ssm::diagonal_real> model{{ssm::tensor_view<const float, 2>(buffer.data(), 4, 2)}};
    const ssm::scan_inputs<float> in{.u = {buffer.data(), 1, 3, 4},
                                     .delta = {buffer.data(), 1, 3, 4},
                                     .B = {buffer.data(), 1, 3, 1, 2},
                                     .C = {buffer.data(), 1, 2, 1, 2}};
    REQUIRE_THROWS_WITH(ssm::selective_scan(ssm::cuda_exec{}, ssm::sequential{}, model, in,
                                            ssm::scan_outputs<float>{.y = {buffer.data(), 1, 3, 4}}),
                        Catch::Contains("C has extent 2 in dimension 1 (length), expected 3"));
    const ssm::scan_inputs<float> good{.u = {buffer.data(), 1, 3, 4},
                                       .delta = {buffer.data(), 1, 3, 4},
                                       .B = {buffer.data(), 1, 3, 1, 2},
                                       .C = {buffer.data(), 1, 3, 1, 2}};
    const ssm::scan_outputs<float> out{.y = {buffer.data(), 1, 3, 4}};
    REQUIRE_THROWS_WITH(ssm::selective_scan(ssm::cuda_exec{}, ssm::chunked{.chunk = 0}, model, good, out),
                        Catch::Contains("selective_scan: chunked chunk length must be positive, got 0"));
    REQUIRE_THROWS_WITH(ssm::selective_scan(ssm::cuda_exec{}, ssm::look_back{.chunk = -3}, model, good, out),
                        Catch::Contains("selective_scan: look_back chunk length must be positive, got -3"));

    // SSD takes Mamba-2 models with exponential decay only, and head dimensions up to 128.
    STATIC_REQUIRE(ssm::ssd_model<ssm::selective_ssm<ssm::scalar_identity, ssm::zoh_euler, ssm::spectrum_scaler>>);
    STATIC_REQUIRE_FALSE(ssm::ssd_model<ssm::selective_ssm<ssm::diagonal_real>>);
    STATIC_REQUIRE_FALSE(ssm::ssd_model<ssm::selective_ssm<ssm::scalar_identity, ssm::bilinear>>);
    const ssm::index_t head_dim = 160, channels = 2 * head_dim;
    std::vector<float> wide(std::size_t(channels), 0.5f);
    const device_buffer<float> data(wide);
    const ssm::selective_ssm<ssm::scalar_identity> mamba2{{{data.data(), 2}, head_dim, 4}};
    const ssm::scan_inputs<float> ssd_in{.u = {data.data(), 1, 1, channels},
                                         .delta = {data.data(), 1, 1, 2},
                                         .B = {data.data(), 1, 1, 1, 4},
                                         .C = {data.data(), 1, 1, 1, 4}};
    std::vector<float> poisoned(std::size_t(channels), ref::poison<float>());
    const device_buffer<float> y(poisoned);
    REQUIRE_THROWS_WITH(ssm::selective_scan(ssm::cuda_exec{}, ssm::ssd{}, mamba2, ssd_in,
                                            ssm::scan_outputs<float>{.y = {y.data(), 1, 1, channels}}),
                        Catch::Contains("ssd supports head_dim up to 128, got 160"));
    // Heads a block must divide a group's (2 here) and be at most 8; a span holds 1, 2 or 4 chunks.
    const ssm::selective_ssm<ssm::scalar_identity> narrow{{{data.data(), 2}, 4, 4}};
    const ssm::scan_inputs<float> narrow_in{.u = {data.data(), 1, 1, 8},
                                            .delta = {data.data(), 1, 1, 2},
                                            .B = {data.data(), 1, 1, 1, 4},
                                            .C = {data.data(), 1, 1, 1, 4}};
    for (const int heads : {-1, 3, 9})
        REQUIRE_THROWS_WITH(
            ssm::selective_scan(ssm::cuda_exec{}, ssm::ssd{.heads_per_block = heads}, narrow, narrow_in,
                                ssm::scan_outputs<float>{.y = {y.data(), 1, 1, 8}}),
            Catch::Contains("ssd heads_per_block must divide the 2 heads of a group and lie in [1, 8], got " +
                            std::to_string(heads)));
    for (const int span : {-1, 3, 8})
        REQUIRE_THROWS_WITH(
            ssm::selective_scan(ssm::cuda_exec{}, ssm::ssd{.chunks_per_span = span}, narrow, narrow_in,
                                ssm::scan_outputs<float>{.y = {y.data(), 1, 1, 8}}),
            Catch::Contains("ssd chunks_per_span must be 1, 2 or 4, got " + std::to_string(span)));
    // A span whose staged chunks do not fit in shared memory: float, head_dim 128, state 256.
    const ssm::selective_ssm<ssm::scalar_identity> large{{{data.data(), 2}, 128, 256}};
    const ssm::scan_inputs<float> large_in{.u = {data.data(), 1, 1, 256},
                                           .delta = {data.data(), 1, 1, 2},
                                           .B = {data.data(), 1, 1, 1, 256},
                                           .C = {data.data(), 1, 1, 1, 256}};
    REQUIRE_THROWS_WITH(ssm::selective_scan(ssm::cuda_exec{}, ssm::ssd{.chunks_per_span = 4}, large, large_in,
                                            ssm::scan_outputs<float>{.y = {y.data(), 1, 1, 256}}),
                        Catch::Contains("for head_dim 128, state 256 and 4 chunks a span; the device offers"));
    const auto untouched = y.to_host();
    REQUIRE(std::all_of(untouched.begin(), untouched.end(), [](float v) { return std::isnan(v); }));
}
