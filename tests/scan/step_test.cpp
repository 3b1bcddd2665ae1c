// The recurrent step: token by token it reproduces the whole-sequence scan, updating one state
// buffer in place.
#include <array>
#include <vector>

#include "reference.hpp"

namespace {

using ssm::index_t;

// View of token t of a (batch, length, ...) view: the length axis dropped.
template <class E, int Rank>
ssm::tensor_view<E, Rank - 1> token_slice(const ssm::tensor_view<E, Rank>& v, index_t t) {
    if (v.empty()) return {};
    std::array<index_t, Rank - 1> extents{}, strides{};
    extents[0] = v.extent(0), strides[0] = v.stride(0);
    for (int r = 2; r < Rank; ++r) extents[r - 1] = v.extent(r), strides[r - 1] = v.stride(r);
    return {v.data() + t * v.stride(1), extents, strides};
}

// Steps through p one token at a time with one state buffer that is both read and written, and
// checks y and the state against the sequential scan of the whole sequence and the reference.
template <class Structure, class Rule, class T>
void check_steps_match_scan(const ref::problem& p, int threads, const ref::tolerance& tolerance) {
    const auto scan = ref::run_scan<Structure, Rule, T>(p, ssm::sequential{}, {.exec = {.threads = threads}});

    ref::library_problem<T> lib(p, 1);
    const auto in = lib.inputs();
    const auto out = lib.outputs(false);  // y poisoned; steps write it token by token
    std::vector<float> state(std::size_t(p.batch * p.channels * p.width()), 0.0f);
    for (std::size_t i = 0; i < p.initial_state.size(); ++i) state[i] = float(p.initial_state[i]);
    const ssm::tensor_view<float, 3> state_view(state.data(), p.batch, p.channels, p.width());
    const ssm::selective_ssm<Structure, Rule> model{lib.template structure<Structure>()};
    for (index_t t = 0; t < p.length; ++t) {
        const ssm::step_inputs<T> step_in{.u = token_slice(in.u, t),
                                          .delta = token_slice(in.delta, t),
                                          .B = token_slice(in.B, t),
                                          .C = token_slice(in.C, t),
                                          .z = token_slice(in.z, t),
                                          .D = in.D,
                                          .delta_bias = in.delta_bias,
                                          .delta_softplus = in.delta_softplus};
        ssm::step(ssm::host_exec{.threads = threads}, model, step_in, state_view, token_slice(out.y, t));
    }
    const auto stepped = lib.written_outputs(false);
    const auto want = ref::scan(p);
    ref::require_close(stepped.y, scan.y, tolerance, "y of steps vs scan", want.y_scale);
    ref::require_close(std::vector<double>(state.begin(), state.end()), scan.final_state, {1e-6},
                       "state after steps vs scan", want.final_state_scale);
    ref::require_close(stepped.y, want.y, ref::scan_tolerance<T>(), "y of steps vs reference", want.y_scale);
}

}  // namespace

TEST_CASE("steps token by token equal the whole-sequence scan", "[scan][step]") {
    SSM_SEEDED_RANDOM(rng);
    ref::for_each_structure([&](auto structure_tag) {
        using Structure = typename decltype(structure_tag)::type;
        for (const bool extras : {false, true}) {
            for (const int threads : {1, 2}) {
                INFO("optional inputs " << extras << ", threads " << threads);
                // 33 channels: two full lane blocks and a partial one, updated concurrently.
                const ref::shape shape{.batch = 2, .length = 40, .channels = 33, .head_dim = 11, .state = 5,
                                       .groups = 3, .z = extras, .D = extras, .delta_bias = extras,
                                       .softplus = extras, .initial_state = extras};
                auto p = ref::random_problem(rng, ref::structure_of<Structure>, ref::rule::zoh, shape);
                ref::round_to_storage<float>(p);
                check_steps_match_scan<Structure, ssm::zoh, float>(p, threads, {1e-6});
            }
        }
    });
}

TEST_CASE("steps match the scan for every rule and storage type", "[scan][step]") {
    SSM_SEEDED_RANDOM(rng);
    const ref::shape shape{.batch = 3, .length = 25, .channels = 17, .head_dim = 17, .state = 16, .groups = 1,
                           .z = true, .D = true, .delta_bias = true, .softplus = true, .initial_state = true};
    ref::for_each_rule([&](auto rule_tag) {
        using Rule = typename decltype(rule_tag)::type;
        auto run = [&](auto storage_tag, const ref::tolerance& tolerance) {
            using T = typename decltype(storage_tag)::type;
            INFO(ssm::storage_name<T>);
            auto p = ref::random_problem(rng, ref::structure::diagonal_complex, ref::rule_of<Rule>, shape);
            ref::round_to_storage<T>(p);
            check_steps_match_scan<ssm::diagonal_complex, Rule, T>(p, 2, tolerance);
        };
        run(std::type_identity<float>{}, {1e-6});
        run(std::type_identity<double>{}, {1e-6});
        // The same float y may round to a neighbouring 16-bit value when the step's float result
        // differs from the scan's in the last bit.
        run(std::type_identity<ssm::bfloat16>{}, {1e-6, 2 * ref::unit_roundoff<ssm::bfloat16>});
        run(std::type_identity<ssm::float16>{}, {1e-6, 2 * ref::unit_roundoff<ssm::float16>, 0x1p-24});
    });
}

TEST_CASE("a step starts from the state buffer's contents", "[scan][step]") {
    SSM_SEEDED_RANDOM(rng);
    // One token from a given state equals a scan of length 1 with that initial state.
    auto p = ref::random_problem(rng, ref::structure::diagonal_real, ref::rule::zoh_euler,
                                 {.batch = 2, .length = 1, .channels = 20, .state = 7, .groups = 4, .D = true,
                                  .initial_state = true});
    ref::round_to_storage<float>(p);
    check_steps_match_scan<ssm::diagonal_real, ssm::zoh_euler, float>(p, 1, {1e-6});
    const auto want = ref::scan(p);
    const auto scan = ref::run_scan<ssm::diagonal_real, ssm::zoh_euler, float>(p, ssm::sequential{});
    ref::require_close(scan, want, {1e-5});
    // The state moved: a step that ignored the buffer would start from zero instead.
    p.initial_state.clear();
    CHECK(ref::relative_error(ref::scan(p).final_state, want.final_state) > 0.1);
}
