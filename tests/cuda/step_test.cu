// Decoding on the device: ssm::step token by token against the reference scan, and
// cuda::step_product (a step whose outputs go through a matrix) against the float64 reference.
#include <catch2/catch.hpp>
#include <ssm/cuda/matvec.cuh>

#include "device_test.cuh"

using namespace device_test;

// Decoding token by token with ssm::step on the device, state in place, equals the reference scan.
template <class Structure, class Rule>
void check_device_step(ref::random_source& rng, const ref::shape& s) {
    ref::problem p = ref::random_problem(rng, ref::structure_of<Structure>, ref::rule_of<Rule>, s);
    INFO(ref::name(p.kind) << " / " << ref::name(p.discretization) << " / " << s);
    ref::round_to_storage<float>(p);
    const device_buffer<float> A(stored<float>(p.A)), D(stored<float>(p.D)), bias(stored<float>(p.delta_bias)),
        u(stored<float>(p.u)), delta(stored<float>(p.delta)), B(stored<float>(p.B)), C(stored<float>(p.C)),
        z(stored<float>(p.z)), state(stored<float>(p.initial_state));
    const device_buffer<float> y(std::vector<float>(std::size_t(p.batch * p.length * p.channels), ref::poison<float>()));
    const ssm::selective_ssm<Structure, Rule> model{device_structure<Structure>(p, A)};
    // Token t of every batch row: views with the length axis fixed at t.
    auto at = [&](const device_buffer<float>& b, ssm::index_t width, ssm::index_t t) -> ssm::tensor_view<const float, 2> {
        if (b.empty()) return {};
        return {b.data() + t * width, {p.batch, width}, {p.length * width, 1}};
    };
    const ssm::index_t gw = p.groups * p.width();
    for (ssm::index_t t = 0; t < p.length; ++t) {
        const ssm::step_inputs<float> token{
            .u = at(u, p.channels, t), .delta = at(delta, p.delta_channels(), t),
            .B = {B.data() + t * gw, {p.batch, p.groups, p.width()}, {p.length * gw, p.width(), 1}},
            .C = {C.data() + t * gw, {p.batch, p.groups, p.width()}, {p.length * gw, p.width(), 1}},
            .z = at(z, p.channels, t), .D = view(D, p.channels), .delta_bias = view(bias, p.delta_channels()),
            .delta_softplus = p.delta_softplus};
        ssm::step(ssm::cuda_exec{}, model, token, {state.data(), p.batch, p.channels, p.width()},
                  {y.data() + t * p.channels, {p.batch, p.channels}, {p.length * p.channels, 1}});
    }
    cuda_require(cudaDeviceSynchronize(), "step kernels");
    const ref::result want = ref::scan(p);
    ref::require_close(written(y, "y"), want.y, {1e-5}, "y", want.y_scale);
    ref::require_close(written(state, "state"), want.final_state, {1e-5}, "state", want.final_state_scale);
}

TEST_CASE("device step decodes like the scan", "[cuda]") {
    SSM_SEEDED_RANDOM(rng);
    const ref::shape mamba1{.batch = 3, .length = 40, .channels = 37, .state = 16, .z = true, .D = true,
                            .delta_bias = true, .softplus = true, .initial_state = true};
    check_device_step<ssm::diagonal_real, ssm::zoh_euler>(rng, mamba1);
    check_device_step<ssm::diagonal_complex, ssm::zoh>(rng, mamba1);
    check_device_step<ssm::scalar_identity, ssm::zoh_euler>(
        rng, {.batch = 3, .length = 40, .channels = 64, .head_dim = 16, .state = 128, .groups = 2, .z = true,
              .D = true, .delta_bias = true, .softplus = true, .initial_state = true});
    // States that fill no whole number of lanes: 5 and 37 (4 a lane), 200 (8 a lane).
    for (const ssm::index_t n : {5, 37, 200})
        check_device_step<ssm::diagonal_real, ssm::zoh_euler>(
            rng, {.batch = 2, .length = 9, .channels = 7, .state = n, .z = true, .D = true, .softplus = true,
                  .initial_state = true});
}

// cuda::step_product: one decoding step (state in place) whose outputs, rounded to X, go through a
// matrix W (outs, channels) into rows of `hidden` (+= W·y + bias), against the float64 reference; the
// consumed sums it is given are cleared.
template <class X>
void check_step_product(ref::random_source& rng, const ref::shape& s, ssm::index_t outs) {
    ref::problem p = ref::random_problem(rng, ref::structure::diagonal_real, ref::rule::zoh_euler, s);
    const bool with_bias = rng.coin();
    INFO(s << ", outs " << outs << ", " << ssm::storage_name<X> << ", bias " << with_bias);
    ref::round_to_storage<float>(p);
    const auto w = rng.uniform(outs * p.channels, -1.0, 1.0);
    const auto out_bias = with_bias ? rng.uniform(outs, -1.0, 1.0) : std::vector<double>{};
    const auto base = rng.uniform(p.batch * outs, -1.0, 1.0);
    const device_buffer<float> A(stored<float>(p.A)), D(stored<float>(p.D)), bias(stored<float>(p.delta_bias)),
        u(stored<float>(p.u)), delta(stored<float>(p.delta)), B(stored<float>(p.B)), C(stored<float>(p.C)),
        z(stored<float>(p.z)), state(stored<float>(p.initial_state)), hidden(stored<float>(base)),
        bias_o(stored<float>(out_bias)), sums(stored<float>(rng.uniform(7, -1.0, 1.0)));
    const device_buffer<X> weight(stored<X>(w));
    const device_buffer<unsigned> arrivals(std::vector<unsigned>{0});
    const device_buffer<float> y(std::vector<float>(std::size_t(p.batch * p.channels), ref::poison<float>()));
    const ssm::selective_ssm<ssm::diagonal_real, ssm::zoh_euler> model{device_structure<ssm::diagonal_real>(p, A)};
    const ssm::tensor_view<float, 3> cached(state.data(), p.batch, p.channels, p.width());
    const ssm::scan_inputs<float> in{.u = view(u, p.batch, ssm::index_t(1), p.channels),
                                     .delta = view(delta, p.batch, ssm::index_t(1), p.channels),
                                     .B = view(B, p.batch, ssm::index_t(1), p.groups, p.width()),
                                     .C = view(C, p.batch, ssm::index_t(1), p.groups, p.width()),
                                     .z = view(z, p.batch, ssm::index_t(1), p.channels),
                                     .D = view(D, p.channels),
                                     .delta_bias = view(bias, p.channels),
                                     .delta_softplus = p.delta_softplus,
                                     .initial_state = cached};
    const auto problem = ssm::make_problem("step_product", model, in,
                                           ssm::scan_outputs<float>{.y = {y.data(), p.batch, 1, p.channels},
                                                                    .final_state = cached});
    ssm::cuda::step_product(ssm::cuda_exec{}, model, problem, ssm::cuda::problem_token<float>{problem},
                            ssm::cuda::split_product<X>{weight.data(), bias_o.data(), outs, hidden.data(), outs},
                            ssm::cuda::consumed_sums{sums.data(), 7, arrivals.data()});
    cuda_require(cudaDeviceSynchronize(), "step_product kernel");
    const ref::result want = ref::scan(p);
    ref::require_close(written(state, "state"), want.final_state, {1e-5}, "state", want.final_state_scale);
    // hidden against base + bias + W·y, W and y as the kernel reads them: y rounded to X from a float
    // y that may lie on the other side of a rounding boundary than the exact one (an ulp of X a term).
    const double ulp = std::is_same_v<X, float> ? 1e-5 : 1.0 / 128;
    const auto got = written(hidden, "hidden");
    for (ssm::index_t b = 0; b < p.batch; ++b)
        for (ssm::index_t o = 0; o < outs; ++o) {
            const std::size_t k = std::size_t(b * outs + o);
            // The kernel adds in float, in an order of its own: base and bias count at their own
            // size, not at their sum's, which may cancel.
            const double added[] = {double(float(base[k])), with_bias ? double(float(out_bias[std::size_t(o)])) : 0.0};
            double sum = added[0] + added[1];
            double size = std::abs(added[0]) + std::abs(added[1]);
            for (ssm::index_t c = 0; c < p.channels; ++c) {
                const double term = ref::load(ref::store<X>(w[std::size_t(o * p.channels + c)])) *
                                    ref::load(ref::store<X>(want.y[std::size_t(b * p.channels + c)]));
                sum += term, size += std::abs(term);
            }
            INFO("batch row " << b << ", output " << o << ": " << got[k] << " against " << sum);
            REQUIRE(std::abs(got[k] - sum) <= ulp * size + 1e-30);
        }
    REQUIRE(sums.to_host() == std::vector<float>(7, 0.0f));
    REQUIRE(arrivals.to_host() == std::vector<unsigned>{0});
}

TEST_CASE("device step_product: a decoding step times a matrix equals the float64 reference", "[cuda][matvec]") {
    SSM_SEEDED_RANDOM(rng);
    // Channels: one, a prime (blocks short of channels), Mamba-130m's 1536; states of 1, 2 and 16 lanes
    // (8 to 32 channels a block), 37 (4 a lane); outputs a multiple of 4 (four an atomic add) or not.
    for (const ssm::index_t channels : {1, 37, 1536})
        for (const ssm::index_t n : {1, 5, 16, 37})
            for (const ssm::index_t outs : {13, 768}) {
                const ref::shape s{.batch = rng.coin() ? 1 : 3, .length = 1, .channels = channels, .state = n,
                                   .z = true, .D = true, .delta_bias = true, .softplus = true,
                                   .initial_state = true};
                check_step_product<float>(rng, s, outs);
                check_step_product<ssm::bfloat16>(rng, s, outs);
            }
}
