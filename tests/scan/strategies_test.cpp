// Every host strategy against the float64 reference, over structures, discretization rules,
// storage types, shapes and optional inputs.
#include <atomic>
#include <stdexcept>
#include <vector>

#include "reference.hpp"

namespace {

using ssm::index_t;

struct scan_case {
    ref::shape shape;
    int threads = 1;
    index_t spread = 1;  // innermost stride of the tensors (1: contiguous)
    bool final_state = true;
};

// Lengths 1 to 1000 (97 and 257 prime), channel counts that leave partial lane blocks (1, 5, 17,
// 33) and that fill them, one or several groups (uniform and mixed within a lane block), batch 1 and 3, one and two
// threads, and each optional input both present and absent. Channels are head_dim × heads for
// scalar_identity; the other structures use only their product.
const std::vector<scan_case>& scan_cases() {
    static const std::vector<scan_case> cases = {
        // batch, length, channels, head_dim, state, groups; z, D, delta_bias, softplus, initial_state
        {{1, 1, 1, 1, 1, 1, false, false, false, false, false}, 1, 1, false},
        {{3, 2, 5, 1, 4, 5, true, true, true, true, true}, 2, 1, true},
        {{1, 3, 17, 17, 16, 1, true, false, true, false, true}, 1, 2, false},
        {{3, 17, 33, 11, 3, 3, false, true, false, true, false}, 2, 1, true},
        {{1, 97, 17, 1, 8, 17, true, true, false, true, true}, 2, 1, true},
        {{3, 257, 5, 5, 16, 1, false, false, true, true, true}, 1, 2, true},
        {{1, 1000, 33, 3, 4, 11, true, true, true, true, true}, 2, 1, true},
        {{3, 1000, 1, 1, 16, 1, false, true, true, false, false}, 1, 1, true},
        {{2, 64, 32, 8, 64, 2, true, true, true, true, true}, 2, 1, true},
        {{1, 97, 64, 16, 5, 2, true, true, true, true, false}, 2, 1, true},
    };
    return cases;
}

// A case of random shape: up to 12 heads of up to 6 channels, groups dividing the heads.
scan_case random_case(ref::random_source& rng) {
    const index_t heads = rng.integer(1, 12), head_dim = rng.integer(1, 6);
    std::vector<index_t> divisors;
    for (index_t g = 1; g <= heads; ++g)
        if (heads % g == 0) divisors.push_back(g);
    return {.shape = {.batch = rng.integer(1, 3),
                      .length = rng.integer(1, 300),
                      .channels = heads * head_dim,
                      .head_dim = head_dim,
                      .state = rng.integer(1, 24),
                      .groups = divisors[std::size_t(rng.integer(0, index_t(divisors.size()) - 1))],
                      .z = rng.coin(),
                      .D = rng.coin(),
                      .delta_bias = rng.coin(),
                      .softplus = rng.coin(),
                      .initial_state = rng.coin()},
            .threads = int(rng.integer(1, 3)),
            .spread = rng.integer(1, 2),
            .final_state = rng.coin()};
}

template <class T, class Structure>
struct combination {
    using storage = T;
    using structure = Structure;
};

using float_real = combination<float, ssm::diagonal_real>;
using float_heads = combination<float, ssm::scalar_identity>;
using float_complex = combination<float, ssm::diagonal_complex>;
using double_real = combination<double, ssm::diagonal_real>;
using double_heads = combination<double, ssm::scalar_identity>;
using double_complex = combination<double, ssm::diagonal_complex>;
using bfloat16_real = combination<ssm::bfloat16, ssm::diagonal_real>;
using bfloat16_heads = combination<ssm::bfloat16, ssm::scalar_identity>;
using bfloat16_complex = combination<ssm::bfloat16, ssm::diagonal_complex>;
using float16_real = combination<ssm::float16, ssm::diagonal_real>;
using float16_heads = combination<ssm::float16, ssm::scalar_identity>;
using float16_complex = combination<ssm::float16, ssm::diagonal_complex>;

}  // namespace

TEMPLATE_TEST_CASE("every strategy matches the float64 reference", "[scan][strategies]", float_real, float_heads,
                   float_complex, double_real, double_heads, double_complex, bfloat16_real, bfloat16_heads,
                   bfloat16_complex, float16_real, float16_heads, float16_complex) {
    using T = typename TestType::storage;
    using Structure = typename TestType::structure;
    SSM_SEEDED_RANDOM(rng);
    ref::for_each_rule([&](auto rule_tag) {
        using Rule = typename decltype(rule_tag)::type;
        auto cases = scan_cases();
        for (int i = 0; i < 3; ++i) cases.push_back(random_case(rng));
        for (const scan_case& c : cases) {
            INFO(c.shape << ", threads " << c.threads << ", spread " << c.spread);
            auto p = ref::random_problem(rng, ref::structure_of<Structure>, ref::rule_of<Rule>, c.shape);
            ref::round_to_storage<T>(p);
            const auto want = ref::scan(p);
            const ref::run_options options{.exec = {.threads = c.threads}, .spread = c.spread, .final_state = c.final_state};
            for (const auto& how : ref::every_strategy()) {
                INFO(ref::describe(how));
                const auto got = ref::run_scan<Structure, Rule, T>(p, how, options);
                ref::require_close(got, want, ref::scan_tolerance<T>(), c.final_state);
            }
        }
    });
}

TEST_CASE("chunked scan of a million tokens carries the state across chunks", "[scan][strategies][long]") {
    SSM_SEEDED_RANDOM(rng);
    // Two channels, state 2, eigenvalues near 0: a chunk of 4096 tokens decays the state by at
    // most e^{-0.08}, so every chunk's output depends on the carries from many chunks before it.
    constexpr index_t length = index_t(1) << 20, chunk = 4096;
    auto p = ref::random_problem(rng, ref::structure::diagonal_real, ref::rule::zoh_euler,
                                 {.batch = 1, .length = length, .channels = 2, .state = 2, .D = true});
    for (auto& a : p.A) a = -rng.log_uniform(1e-5, 1e-4);
    for (auto& d : p.delta) d = rng.uniform(0.05, 0.2);
    // Inputs with a nonzero mean, so that the state grows well beyond one chunk's contribution.
    for (auto& x : p.u) x = rng.uniform(-0.5, 1.0);
    ref::round_to_storage<float>(p);
    const auto want = ref::scan(p);

    const auto got = ref::run_scan<ssm::diagonal_real, ssm::zoh_euler, float>(p, ssm::chunked{.chunk = chunk},
                                                                              {.exec = {.threads = 2}});
    // Ā = e^{λΔ} lies within 2e-5 of 1, where floats are 6e-8 apart: float32 state alone is off by up
    // to about 5e-5 here, the sequential scan as much as the chunked one.
    ref::require_close(got.y, want.y, {2e-4}, "y");
    ref::require_close(got.final_state, want.final_state, {2e-4}, "final_state", want.final_state_scale);
    // Against the sequential scan, which rounds Ā the same way, the chunked scan differs only in
    // rounding order. The sequential scan carries its float state through all 2^20 tokens, so its
    // rounding grows further: in the sanitizer build (-O1) it measured up to 3.6e-4 of the largest y
    // over 17 seeds (the chunked scan up to 5.3e-5), hence its 1e-3 and the two scans' 1.2e-3 apart. A
    // carry factor kept as a float product of 4096 factors near 1 would drift by about 1e-3, which
    // the check against the reference above, at 2e-4, catches.
    const auto sequential = ref::run_scan<ssm::diagonal_real, ssm::zoh_euler, float>(p, ssm::sequential{});
    ref::require_close(sequential.y, want.y, {1e-3}, "y of the sequential scan");
    ref::require_close(got.y, sequential.y, {1.2e-3}, "y against the sequential scan");

    // The same scan with the state cleared at every chunk boundary is far off: the checks above
    // would notice a chunked scan that dropped or mangled its carries.
    p.reset_every = chunk;
    const auto without_carry = ref::scan(p);
    CHECK(ref::relative_error(without_carry.y, want.y) > 0.5);
}

TEST_CASE("strategies agree with each other to float rounding", "[scan][strategies]") {
    SSM_SEEDED_RANDOM(rng);
    // A Mamba-2-sized head layout with a wide state: every strategy against the sequential one.
    auto p = ref::random_problem(rng, ref::structure::scalar_identity, ref::rule::zoh_euler,
                                 {.batch = 2, .length = 300, .channels = 48, .head_dim = 16, .state = 128,
                                  .groups = 1, .z = true, .D = true, .delta_bias = true, .softplus = true});
    ref::round_to_storage<float>(p);
    const auto want = ref::scan(p);
    const auto sequential = ref::run_scan<ssm::scalar_identity, ssm::zoh_euler, float>(p, ssm::sequential{});
    ref::require_close(sequential, want, {1e-4});
    for (const auto& how : ref::every_strategy()) {
        INFO(ref::describe(how));
        const auto got = ref::run_scan<ssm::scalar_identity, ssm::zoh_euler, float>(p, how, {.exec = {.threads = 2}});
        ref::require_close(got.y, sequential.y, {1e-5}, "y", want.y_scale);
        ref::require_close(got.final_state, sequential.final_state, {1e-5}, "final_state", want.final_state_scale);
    }
}

TEST_CASE("host parallel_for runs each task once and rethrows the first failure", "[scan][threads]") {
    for (const int threads : {1, 2, 5}) {
        INFO("threads " << threads);
        std::vector<std::atomic<int>> visits(1000);
        ssm::detail::parallel_for(ssm::host_exec{.threads = threads}, index_t(visits.size()),
                                  [&](index_t i) { ++visits[std::size_t(i)]; });
        for (std::size_t i = 0; i < visits.size(); ++i) {
            INFO("task " << i);
            REQUIRE(visits[i] == 1);
        }
        REQUIRE_THROWS_WITH(ssm::detail::parallel_for(ssm::host_exec{.threads = threads}, 100,
                                                      [](index_t i) {
                                                          if (i == 37) throw std::runtime_error("task 37 failed");
                                                      }),
                            "task 37 failed");
    }
    CHECK(ssm::host_exec{.threads = 3}.worker_count() == 3);
    CHECK(ssm::host_exec{}.worker_count() >= 1);
}
