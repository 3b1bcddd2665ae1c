// Argument validation: every malformed call throws ssm::error naming the argument, before any
// output is touched.
#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "reference.hpp"

namespace {

using ssm::index_t;

using Catch::Contains;

constexpr float sentinel = 7.25f;

const std::vector<const char*> token_dims{"batch", "length", "channels"};
const std::vector<const char*> delta_dims{"batch", "length", "delta channels"};
const std::vector<const char*> bc_dims{"batch", "length", "groups", "state x components"};
const std::vector<const char*> state_dims{"batch", "channels", "state x components"};

// A valid float call (batch 2, length 5, groups 2) with every optional view present. Buffers are
// larger than the views, so that views grown by a few elements still point into memory.
struct call {
    index_t batch = 2, length = 5, channels, delta_channels, width, groups = 2;
    std::vector<float> A, u, delta, B, C, z, D, delta_bias, initial_state, y, final_state;
    ssm::scan_inputs<float> in;
    ssm::scan_outputs<float> out;

    call(index_t channels_, index_t delta_channels_, index_t width_)
        : channels(channels_), delta_channels(delta_channels_), width(width_) {
        auto buffer = [](index_t size, float value) { return std::vector<float>(std::size_t(4 * size + 64), value); };
        A = buffer(channels * width, -0.5f);
        u = buffer(batch * length * channels, 0.3f);
        delta = buffer(batch * length * delta_channels, 0.1f);
        B = buffer(batch * length * groups * width, 0.2f);
        C = buffer(batch * length * groups * width, 0.4f);
        z = buffer(batch * length * channels, 1.0f);
        D = buffer(channels, 1.0f);
        delta_bias = buffer(delta_channels, 0.0f);
        initial_state = buffer(batch * channels * width, 0.5f);
        y = buffer(batch * length * channels, sentinel);
        final_state = buffer(batch * channels * width, sentinel);
        in = {.u = {u.data(), batch, length, channels},
              .delta = {delta.data(), batch, length, delta_channels},
              .B = {B.data(), batch, length, groups, width},
              .C = {C.data(), batch, length, groups, width},
              .z = {z.data(), batch, length, channels},
              .D = {D.data(), channels},
              .delta_bias = {delta_bias.data(), delta_channels},
              .delta_softplus = true,
              .initial_state = {initial_state.data(), batch, channels, width}};
        out = {.y = {y.data(), batch, length, channels}, .final_state = {final_state.data(), batch, channels, width}};
    }

    bool outputs_untouched() const {
        auto intact = [](const std::vector<float>& v) {
            return std::all_of(v.begin(), v.end(), [](float e) { return e == sentinel; });
        };
        return intact(y) && intact(final_state);
    }
};

// The Mamba-1 call: diagonal_real A of shape (4, 3).
struct real_call : call {
    real_call() : call(4, 4, 3) {}
    ssm::selective_ssm<ssm::diagonal_real> model() const {
        return {{ssm::tensor_view<const float, 2>(A.data(), channels, width)}};
    }
};

template <class E, int Rank>
ssm::tensor_view<E, Rank> with_extent(const ssm::tensor_view<E, Rank>& v, int dim, index_t extent) {
    auto extents = v.extents();
    extents[std::size_t(dim)] = extent;
    return {v.data(), extents, v.strides()};
}

// run() throws ssm::error containing `message` and leaves c's outputs as they were.
template <class Run>
void require_rejected(const call& c, Run&& run, const std::string& message) {
    INFO("expected message: " << message);
    REQUIRE_THROWS_AS(run(), ssm::error);
    REQUIRE_THROWS_WITH(run(), Contains(message));
    REQUIRE(c.outputs_untouched());
}

// Every host strategy rejects model + in/out with `message`, before writing any output.
template <class Model>
void require_scan_rejected(const call& c, const Model& model, const ssm::scan_inputs<float>& in,
                           const ssm::scan_outputs<float>& out, const std::string& message) {
    for (const auto& how : ref::every_strategy()) {
        INFO(ref::describe(how));
        require_rejected(
            c,
            [&] {
                std::visit([&](const auto& s) { ssm::selective_scan(ssm::host_exec{.threads = 2}, s, model, in, out); },
                           how);
            },
            message);
    }
}

std::string extent_message(const std::string& where, const std::string& name, index_t got, int dim,
                           const char* dim_name, index_t expected) {
    return where + ": " + name + " has extent " + std::to_string(got) + " in dimension " + std::to_string(dim) +
           " (" + dim_name + "), expected " + std::to_string(expected);
}

// For each listed dimension of the view get(in, out) returns, a view one larger and (when
// possible) one smaller in that dimension is rejected with a message naming view and dimension.
template <class Get>
void check_dimensions(const char* name, Get&& get, const std::vector<const char*>& dim_names,
                      std::initializer_list<int> dims) {
    real_call c;
    for (const int dim : dims) {
        auto in = c.in;
        auto out = c.out;
        auto& view = get(in, out);
        const index_t expected = view.extent(dim);
        for (const index_t bad : {expected + 1, expected - 1}) {
            if (bad < 1) continue;
            view = with_extent(view, dim, bad);
            require_scan_rejected(c, c.model(), in, out,
                                  extent_message("selective_scan", name, bad, dim, dim_names[std::size_t(dim)], expected));
        }
    }
}

}  // namespace

TEST_CASE("the valid baseline call succeeds", "[scan][errors]") {
    real_call c;
    ssm::selective_scan(ssm::host_exec{}, ssm::sequential{}, c.model(), c.in, c.out);
    CHECK_FALSE(c.outputs_untouched());
    CHECK(std::all_of(c.y.begin(), c.y.begin() + c.batch * c.length * c.channels, [](float v) { return std::isfinite(v); }));
}

TEST_CASE("a view with a wrong extent is rejected with its name and dimension", "[scan][errors]") {
    check_dimensions("u", [](auto& in, auto&) -> auto& { return in.u; }, token_dims, {2});
    check_dimensions("delta", [](auto& in, auto&) -> auto& { return in.delta; }, delta_dims, {0, 1, 2});
    check_dimensions("B", [](auto& in, auto&) -> auto& { return in.B; }, bc_dims, {0, 1, 3});
    check_dimensions("C", [](auto& in, auto&) -> auto& { return in.C; }, bc_dims, {0, 1, 2, 3});
    check_dimensions("z", [](auto& in, auto&) -> auto& { return in.z; }, token_dims, {0, 1, 2});
    check_dimensions("D", [](auto& in, auto&) -> auto& { return in.D; }, {"channels"}, {0});
    check_dimensions("delta_bias", [](auto& in, auto&) -> auto& { return in.delta_bias; }, {"delta channels"}, {0});
    check_dimensions("initial_state", [](auto& in, auto&) -> auto& { return in.initial_state; }, state_dims, {0, 1, 2});
    check_dimensions("y", [](auto&, auto& out) -> auto& { return out.y; }, token_dims, {0, 1, 2});
    check_dimensions("final_state", [](auto&, auto& out) -> auto& { return out.final_state; }, state_dims, {0, 1, 2});
}

TEST_CASE("u sets batch and length, and the first view that disagrees is named", "[scan][errors]") {
    real_call c;
    auto in = c.in;
    in.u = with_extent(c.in.u, 0, 3);
    require_scan_rejected(c, c.model(), in, c.out, extent_message("selective_scan", "delta", 2, 0, "batch", 3));
    in.u = with_extent(c.in.u, 1, 4);
    require_scan_rejected(c, c.model(), in, c.out, extent_message("selective_scan", "delta", 5, 1, "length", 4));
}

TEST_CASE("empty and missing arguments are rejected", "[scan][errors]") {
    real_call c;
    const auto model = c.model();
    auto without = [&](auto change, const std::string& message) {
        auto in = c.in;
        auto out = c.out;
        change(in, out);
        require_scan_rejected(c, model, in, out, "selective_scan: " + message);
    };
    without([&](auto& in, auto&) { in.u = with_extent(c.in.u, 1, 0); }, "u has length 0; a scan needs at least one token");
    without([&](auto& in, auto&) { in.u = with_extent(c.in.u, 0, 0); }, "u has an empty batch dimension");
    without([](auto& in, auto&) { in.u = {}; }, "u is missing");
    without([](auto& in, auto&) { in.delta = {}; }, "delta is missing");
    without([](auto& in, auto&) { in.B = {}; }, "B is missing");
    without([](auto& in, auto&) { in.C = {}; }, "C is missing");
    without([](auto&, auto& out) { out.y = {}; }, "y is missing");

    const ssm::selective_ssm<ssm::diagonal_real> no_A{};
    require_scan_rejected(c, no_A, c.in, c.out, "selective_scan: diagonal_real needs a non-empty A of shape (channels, state)");
}

TEST_CASE("groups must divide the channels, and for heads the heads", "[scan][errors]") {
    real_call c;
    for (const index_t groups : {0, 3}) {
        auto in = c.in;
        in.B = with_extent(c.in.B, 2, groups);
        require_scan_rejected(c, c.model(), in, c.out,
                              "selective_scan: B has " + std::to_string(groups) + " groups, which must divide the 4 channels");
    }
    // B with one group, which divides the channels, then disagrees with C's two.
    auto in = c.in;
    in.B = with_extent(c.in.B, 2, 1);
    require_scan_rejected(c, c.model(), in, c.out, extent_message("selective_scan", "C", 2, 2, "groups", 1));

    // Two heads of 3 channels: 3 groups divide the 6 channels but not the heads.
    call heads(6, 2, 3);
    heads.in.B = with_extent(heads.in.B, 2, 3);
    heads.in.C = with_extent(heads.in.C, 2, 3);
    const ssm::selective_ssm<ssm::scalar_identity> mamba2{{ssm::tensor_view<const float, 1>(heads.A.data(), 2), 3, 3}};
    require_scan_rejected(heads, mamba2, heads.in, heads.out, "selective_scan: B has 3 groups, which must divide the 2 heads");
}

TEST_CASE("structures with bad parameters are rejected", "[scan][errors]") {
    real_call c;
    // A state wider than the supported maximum (B and C would be too, but the state is checked first).
    std::vector<float> wide(std::size_t(4 * 257), -1.0f);
    const ssm::selective_ssm<ssm::diagonal_real> too_wide{{ssm::tensor_view<const float, 2>(wide.data(), 4, 257)}};
    require_scan_rejected(c, too_wide, c.in, c.out, "selective_scan: state size 257 exceeds the supported maximum 256");

    call heads(4, 2, 3);
    auto mamba2 = [&](index_t head_dim, index_t state) {
        return ssm::selective_ssm<ssm::scalar_identity>{{ssm::tensor_view<const float, 1>(heads.A.data(), 2), head_dim, state}};
    };
    require_scan_rejected(heads, mamba2(2, 300), heads.in, heads.out,
                          "selective_scan: state size 300 exceeds the supported maximum 256");
    require_scan_rejected(heads, mamba2(0, 3), heads.in, heads.out, "selective_scan: scalar_identity head_dim must be positive, got 0");
    require_scan_rejected(heads, mamba2(2, 0), heads.in, heads.out, "selective_scan: scalar_identity state must be positive, got 0");
    const ssm::selective_ssm<ssm::scalar_identity> no_heads{{{}, 2, 3}};
    require_scan_rejected(heads, no_heads, heads.in, heads.out, "selective_scan: scalar_identity needs A of shape (heads)");

    call complex(4, 4, 6);
    const ssm::selective_ssm<ssm::diagonal_complex> bad_pairs{{ssm::tensor_view<const float, 3>(complex.A.data(), 4, 2, 3)}};
    require_scan_rejected(complex, bad_pairs, complex.in, complex.out,
                          "selective_scan: diagonal_complex needs A of shape (channels, state, 2)");
    // The valid complex call, for contrast.
    const ssm::selective_ssm<ssm::diagonal_complex> good{{ssm::tensor_view<const float, 3>(complex.A.data(), 4, 3, 2)}};
    ssm::selective_scan(ssm::host_exec{}, ssm::sequential{}, good, complex.in, complex.out);
    CHECK_FALSE(complex.outputs_untouched());
}

TEST_CASE("modulations with bad parameters are rejected", "[scan][errors][modulation]") {
    real_call c;
    const ssm::tensor_view<const float, 2> A(c.A.data(), 4, 3);
    auto reject = [&](const auto& modulation, const std::string& message) {
        using M = std::decay_t<decltype(modulation)>;
        const ssm::selective_ssm<ssm::diagonal_real, ssm::zoh_euler, M> model{{A}, {}, modulation};
        require_scan_rejected(c, model, c.in, c.out, "selective_scan: " + message);
    };
    const float nan = std::numeric_limits<float>::quiet_NaN();
    reject(ssm::delta_modulator{.factor = 0.0f}, "delta_modulator factor must be positive, got 0");
    reject(ssm::delta_modulator{.factor = -2.0f}, "delta_modulator factor must be positive, got -2");
    reject(ssm::delta_modulator{.factor = nan}, "delta_modulator factor must be positive");
    const std::vector<float> three{1.0f, 2.0f, 3.0f};
    reject(ssm::delta_modulator{.factor = 1.0f, .channel_factors = {three.data(), 3}},
           "delta_modulator has 3 channel factors, expected one per delta channel (4)");
    reject(ssm::spectrum_scaler{.alpha = 0.0f}, "spectrum_scaler alpha must be positive, got 0");
    reject(ssm::spectrum_scaler{.alpha = nan}, "spectrum_scaler alpha must be positive");
    reject(ssm::spectrum_scaler{.alpha = 0.5f, .min_magnitude = 2.0f, .max_magnitude = 1.0f},
           "spectrum_scaler band is empty: [2, 1]");
    // Composition checks both parts.
    reject(ssm::compose(ssm::delta_modulator{.factor = 2.0f}, ssm::spectrum_scaler{.alpha = -1.0f}),
           "spectrum_scaler alpha must be positive, got -1");
    reject(ssm::compose(ssm::delta_modulator{.factor = -3.0f}, ssm::spectrum_scaler{.alpha = 1.0f}),
           "delta_modulator factor must be positive, got -3");
}

TEST_CASE("chunk and tile lengths must be positive", "[scan][errors]") {
    real_call c;
    const auto model = c.model();
    for (const index_t length : {0, -5}) {
        INFO("length " << length);
        require_rejected(
            c, [&] { ssm::selective_scan(ssm::host_exec{}, ssm::chunked{.chunk = length}, model, c.in, c.out); },
            "selective_scan: chunked chunk length must be positive, got " + std::to_string(length));
        require_rejected(
            c, [&] { ssm::selective_scan(ssm::host_exec{}, ssm::parallel_prefix{.tile = length}, model, c.in, c.out); },
            "selective_scan: parallel_prefix tile length must be positive, got " + std::to_string(length));
    }
}

TEST_CASE("step rejects bad arguments without touching state or y", "[scan][errors][step]") {
    real_call c;
    const auto model = c.model();
    auto token = [](const auto& v) { return with_extent(v, 1, 1); };
    // The step's views: token 0 of the call's, without the length axis.
    auto drop_length = [](const auto& v) {
        constexpr int rank = std::decay_t<decltype(v)>::rank;
        std::array<index_t, rank - 1> extents{}, strides{};
        extents[0] = v.extent(0), strides[0] = v.stride(0);
        for (int r = 2; r < rank; ++r) extents[std::size_t(r - 1)] = v.extent(r), strides[std::size_t(r - 1)] = v.stride(r);
        return ssm::tensor_view<typename std::decay_t<decltype(v)>::element_type, rank - 1>(v.data(), extents, strides);
    };
    const ssm::step_inputs<float> in{.u = drop_length(token(c.in.u)),
                                     .delta = drop_length(token(c.in.delta)),
                                     .B = drop_length(token(c.in.B)),
                                     .C = drop_length(token(c.in.C))};
    const ssm::tensor_view<float, 3> state(c.final_state.data(), c.batch, c.channels, c.width);
    const ssm::tensor_view<float, 2> y(c.y.data(), c.batch, c.channels);
    auto step = [&](const ssm::step_inputs<float>& i, ssm::tensor_view<float, 3> s, ssm::tensor_view<float, 2> out) {
        return [&model, i, s, out] { ssm::step(ssm::host_exec{}, model, i, s, out); };
    };
    require_rejected(c, step(in, {}, y), "step: state is missing");
    require_rejected(c, step(in, with_extent(state, 2, 4), y), "step: initial_state has extent 4 in dimension 2");
    require_rejected(c, step(in, state, with_extent(y, 1, 5)), extent_message("step", "y", 5, 2, "channels", 4));
    require_rejected(c, step(in, state, {}), "step: y is missing");
    auto bad_u = in;
    bad_u.u = with_extent(in.u, 1, 3);
    require_rejected(c, step(bad_u, state, y), extent_message("step", "u", 3, 2, "channels", 4));
    auto bad_B = in;
    bad_B.B = with_extent(in.B, 2, 2);
    require_rejected(c, step(bad_B, state, y), extent_message("step", "B", 2, 3, "state x components", 3));
    // The valid step writes both.
    step(in, state, y)();
    CHECK_FALSE(c.outputs_untouched());
}
