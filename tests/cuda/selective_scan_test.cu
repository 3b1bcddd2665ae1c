// The device instantiation of the selective scan against the float64 reference, on fresh random
// inputs, with outputs poisoned before every call.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <cstdio>
#include <string>
#include <variant>
#include <ssm/cuda/matvec.cuh>
#include <ssm/cuda/selective_scan.cuh>
#include <ssm/cuda/ssd.cuh>

#include "reference.hpp"

namespace {



void cuda_require(cudaError_t status, const char* what) {
    INFO(what << ": " << cudaGetErrorString(status));
    REQUIRE(status == cudaSuccess);
}

// Device memory holding a copy of a host vector (absent when the vector is empty).
template <class E>
class device_buffer {
public:
    explicit device_buffer(const std::vector<E>& host) : size_(host.size()) {
        if (host.empty()) return;
        cuda_require(cudaMalloc(&data_, bytes()), "cudaMalloc");
        cuda_require(cudaMemcpy(data_, host.data(), bytes(), cudaMemcpyHostToDevice), "cudaMemcpy to device");
    }
    device_buffer(const device_buffer&) = delete;
    device_buffer& operator=(const device_buffer&) = delete;
    ~device_buffer() { cudaFree(data_); }

    E* data() const { return data_; }
    bool empty() const { return data_ == nullptr; }
    std::vector<E> to_host() const {
        std::vector<E> host(size_);
        cuda_require(cudaMemcpy(host.data(), data_, bytes(), cudaMemcpyDeviceToHost), "cudaMemcpy to host");
        return host;
    }

private:
    std::size_t bytes() const { return size_ * sizeof(E); }
    E* data_ = nullptr;
    std::size_t size_ = 0;
};

template <class E>
std::vector<E> stored(const std::vector<double>& values) {
    std::vector<E> out(values.size());
    std::transform(values.begin(), values.end(), out.begin(), [](double x) { return ref::store<E>(x); });
    return out;
}

template <class E, class... Extents>
ssm::tensor_view<const E, int(sizeof...(Extents))> view(const device_buffer<E>& b, Extents... extents) {
    if (b.empty()) return {};
    return {b.data(), extents...};
}

// Every element written (finite: the poison is NaN), in float64.
template <class E>
std::vector<double> written(const device_buffer<E>& b, const char* what) {
    std::vector<double> out;
    for (const E& e : b.to_host()) out.push_back(ref::load(e));
    const auto bad = std::find_if(out.begin(), out.end(), [](double v) { return !std::isfinite(v); });
    INFO(what << ": element " << (bad - out.begin()) << " was not written or is not finite");
    REQUIRE(bad == out.end());
    return out;
}

using device_strategy = std::variant<ssm::sequential, ssm::chunked, ssm::look_back, ssm::ssd>;

// The device strategies every test runs: one thread per channel, the chunked scan as one pass and
// with chunks of 1, 7 and 64 tokens, and the look-back scan with chunks of 1, 7 and 64 tokens.
std::vector<device_strategy> device_strategies() {
    return {ssm::sequential{},          ssm::chunked{.chunk = ssm::index_t(1) << 40},
            ssm::chunked{.chunk = 1},   ssm::chunked{.chunk = 7},
            ssm::chunked{.chunk = 64},  ssm::look_back{.chunk = 1},
            ssm::look_back{.chunk = 7}, ssm::look_back{.chunk = 64}};
}

std::string describe(const device_strategy& s) {
    if (const auto* c = std::get_if<ssm::chunked>(&s)) return "chunked{" + std::to_string(c->chunk) + "}";
    if (const auto* c = std::get_if<ssm::look_back>(&s)) return "look_back{" + std::to_string(c->chunk) + "}";
    return std::holds_alternative<ssm::ssd>(s) ? "ssd" : "sequential";
}

template <class Structure>
Structure device_structure(const ref::problem& p, const device_buffer<float>& A) {
    if constexpr (std::is_same_v<Structure, ssm::diagonal_real>) return {view(A, p.channels, p.state)};
    else if constexpr (std::is_same_v<Structure, ssm::scalar_identity>)
        return {view(A, p.delta_channels()), p.head_dim, p.state};
    else return {view(A, p.channels, p.state, ssm::index_t(2)), p.conjugate_pairs};
}

template <class Structure, class Rule, class T, class Modulation = ssm::no_modulation>
void check_device_scan(ref::problem p, const std::vector<device_strategy>& strategies = device_strategies(),
                       const Modulation& modulation = {}) {
    INFO("storage " << ssm::storage_name<T>);
    ref::round_to_storage<T>(p);
    const ref::result want = ref::scan(p);
    for (const auto& how : strategies) {
    INFO("strategy " << describe(how));
    const device_buffer<float> A(stored<float>(p.A)), D(stored<float>(p.D)), bias(stored<float>(p.delta_bias)),
        initial(stored<float>(p.initial_state));
    const device_buffer<T> u(stored<T>(p.u)), delta(stored<T>(p.delta)), B(stored<T>(p.B)), C(stored<T>(p.C)),
        z(stored<T>(p.z));
    const device_buffer<T> y(std::vector<T>(std::size_t(p.batch * p.length * p.channels), ref::poison<T>()));
    const device_buffer<float> final_state(
        std::vector<float>(std::size_t(p.batch * p.channels * p.width()), ref::poison<float>()));

    const ssm::selective_ssm<Structure, Rule, Modulation> model{device_structure<Structure>(p, A), Rule{}, modulation};

    const ssm::scan_inputs<T> in{.u = view(u, p.batch, p.length, p.channels),
                                 .delta = view(delta, p.batch, p.length, p.delta_channels()),
                                 .B = view(B, p.batch, p.length, p.groups, p.width()),
                                 .C = view(C, p.batch, p.length, p.groups, p.width()),
                                 .z = view(z, p.batch, p.length, p.channels),
                                 .D = view(D, p.channels),
                                 .delta_bias = view(bias, p.delta_channels()),
                                 .delta_softplus = p.delta_softplus,
                                 .initial_state = view(initial, p.batch, p.channels, p.width())};
    const ssm::scan_outputs<T> out{.y = {y.data(), p.batch, p.length, p.channels},
                                   .final_state = {final_state.data(), p.batch, p.channels, p.width()}};
    std::visit([&](const auto& strategy) {
        if constexpr (requires { ssm::selective_scan(ssm::cuda_exec{}, strategy, model, in, out); })
            ssm::selective_scan(ssm::cuda_exec{}, strategy, model, in, out);
        else FAIL("the strategy does not apply to this model");
    }, how);
    cuda_require(cudaDeviceSynchronize(), "selective_scan kernel");

    // SSD's products run on tensor cores: TF32 split in three for float inputs (float32 accuracy
    // up to the summation order), one TF32 product for 16-bit inputs (its intermediate C·Bᵀ and
    // states rounded to TF32's 11 bits).
    const bool tensor_cores = std::holds_alternative<ssm::ssd>(how);
    const double relative = !tensor_cores ? 1e-5 : std::is_same_v<T, float> ? 1e-4 : 2e-3;
    ref::tolerance y_tolerance = ref::scan_tolerance<T>();
    y_tolerance.relative = relative;
    ref::require_close(written(y, "y"), want.y, y_tolerance, "y", want.y_scale);
    ref::require_close(written(final_state, "final_state"), want.final_state, {relative}, "final_state",
                       want.final_state_scale);
    }
}

template <class Structure, class Rule>
void check_storage_types(const ref::problem& p) {
    check_device_scan<Structure, Rule, float>(p);
    check_device_scan<Structure, Rule, ssm::bfloat16>(p);
    check_device_scan<Structure, Rule, ssm::float16>(p);
}

template <class Structure>
void check_structure(ref::random_source& rng, const ref::shape& s) {
    ref::for_each_rule([&]<class Rule>(std::type_identity<Rule>) {
        const auto p = ref::random_problem(rng, ref::structure_of<Structure>, ref::rule_of<Rule>, s);
        INFO(ref::name(p.kind) << " / " << ref::name(p.discretization) << " / " << s);
        check_storage_types<Structure, Rule>(p);
    });
}

}  // namespace

TEST_CASE("device scans match the float64 reference", "[cuda]") {
    SSM_SEEDED_RANDOM(rng);
    for (const ssm::index_t length : {1, 2, 97, 1000}) {
        for (const ssm::index_t channels : {1, 5, 130}) {
            const ref::shape s{.batch = 2, .length = length, .channels = channels, .state = 5, .groups = 1,
                               .z = true, .D = true, .delta_bias = true, .softplus = true, .initial_state = true};
            check_structure<ssm::diagonal_real>(rng, s);
            check_structure<ssm::diagonal_complex>(rng, s);
            // 16 real states: the tile geometry the kernels fix at compile time (cuda::fixed_tile), with
            // channels a multiple of four (float: four channels an access) and not (float: the run-time
            // geometry; 16-bit types: the fixed tile, one channel an access).
            ref::shape sixteen = s;
            sixteen.state = 16;
            check_structure<ssm::diagonal_real>(rng, sixteen);
            sixteen.channels = (channels + 3) / 4 * 4;
            check_structure<ssm::diagonal_real>(rng, sixteen);
        }
        // Mamba-2 shape: 6 heads of 8 channels, 3 groups, state 64.
        check_structure<ssm::scalar_identity>(rng, {.batch = 2, .length = length, .channels = 48, .head_dim = 8,
                                                    .state = 64, .groups = 3, .z = true, .D = true,
                                                    .delta_bias = true, .softplus = true, .initial_state = true});
    }
}

// The fixed tile's loaders move four float channels at once only where every row of u, Δ, z and y
// allows it; elsewhere float scans take the run-time geometry (whose results the case above checks).
// 16-bit types move one channel an access, which fits every problem.
TEST_CASE("fixed-tile accesses fit only where every float row of u, delta, z and y is four-aligned", "[cuda]") {
    alignas(16) static float memory[2 * 8 * 16];
    const auto problem = [](float* base, ssm::index_t channels, ssm::index_t row, ssm::index_t groups = 1) {
        ssm::scan_problem<float> p{};
        p.shape.channels = channels;
        p.shape.groups = groups;
        const ssm::tensor_view<float, 3> rows(base, {2, 8, channels}, {8 * row, row, 1});
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
    ssm::scan_problem<ssm::bfloat16> narrow{};
    narrow.shape.channels = 6;
    narrow.shape.groups = 1;
    const ssm::tensor_view<ssm::bfloat16, 3> odd(halves + 1, {2, 8, 6}, {70, 7, 1});
    narrow.in.u = narrow.in.delta = narrow.in.z = odd;
    narrow.out.y = odd;
    CHECK(fixed_tile_accesses_fit(narrow));
}

TEST_CASE("device scans carry state over a million tokens", "[cuda]") {
    SSM_SEEDED_RANDOM(rng);
    auto p = ref::random_problem(rng, ref::structure::diagonal_real, ref::rule::zoh_euler,
                                 {.batch = 1, .length = ssm::index_t(1) << 20, .channels = 3, .state = 16,
                                  .z = true, .D = true, .softplus = true});
    for (auto& a : p.A) a *= 0.01;  // slow decay: the state remembers across the whole sequence
    check_device_scan<ssm::diagonal_real, ssm::zoh_euler, float>(
        p, {ssm::sequential{}, ssm::chunked{.chunk = 4096}, ssm::look_back{.chunk = 4096}});
    // 1,049 chunks chained by look-back, most of them waiting on predecessors still running.
    check_device_scan<ssm::diagonal_real, ssm::zoh_euler, ssm::bfloat16>(
        p, {ssm::chunked{.chunk = 1000}, ssm::look_back{.chunk = 1000}});
}

// SSD on tensor cores: lengths around the chunk of 64 tokens, head dimensions and state sizes that
// are not multiples of 16, several groups, every storage type, both exponential rules, and the Δ
// modulator with the spectrum scaler fused in.
TEST_CASE("device SSD matches the float64 reference", "[cuda][ssd]") {
    SSM_SEEDED_RANDOM(rng);
    struct dims {
        ssm::index_t heads, head_dim, state, groups;
    };
    for (const ssm::index_t length : {1, 2, 63, 64, 65, 129, 1000}) {
        for (const dims d : {dims{2, 8, 16, 1}, dims{6, 13, 37, 3}, dims{4, 64, 128, 2}, dims{1, 128, 64, 1}}) {
            const ref::shape s{.batch = 2, .length = length, .channels = d.heads * d.head_dim, .head_dim = d.head_dim,
                               .state = d.state, .groups = d.groups, .z = true, .D = true, .delta_bias = true,
                               .softplus = true, .initial_state = true};
            INFO(s);
            auto zoh = ref::random_problem(rng, ref::structure::scalar_identity, ref::rule::zoh, s);
            check_device_scan<ssm::scalar_identity, ssm::zoh, float>(zoh, {ssm::ssd{}});
            check_device_scan<ssm::scalar_identity, ssm::zoh, ssm::float16>(zoh, {ssm::ssd{}});
            auto mamba = ref::random_problem(rng, ref::structure::scalar_identity, ref::rule::zoh_euler, s);
            check_device_scan<ssm::scalar_identity, ssm::zoh_euler, float>(mamba, {ssm::ssd{}});
            check_device_scan<ssm::scalar_identity, ssm::zoh_euler, ssm::bfloat16>(mamba, {ssm::ssd{}});
            mamba.delta_factor = 1.7;
            mamba.spectrum = {{.alpha = 0.6}};
            check_device_scan<ssm::scalar_identity, ssm::zoh_euler, float>(
                mamba, {ssm::ssd{}}, ssm::compose(ssm::delta_modulator{.factor = 1.7f}, ssm::spectrum_scaler{.alpha = 0.6f}));
        }
    }
}

TEST_CASE("device SSD carries state over a million tokens", "[cuda][ssd]") {
    SSM_SEEDED_RANDOM(rng);
    auto p = ref::random_problem(rng, ref::structure::scalar_identity, ref::rule::zoh_euler,
                                 {.batch = 1, .length = ssm::index_t(1) << 20, .channels = 16, .head_dim = 8,
                                  .state = 16, .z = true, .D = true, .softplus = true, .initial_state = true});
    for (auto& a : p.A) a *= 0.01;  // slow decay: the state remembers across the whole sequence
    check_device_scan<ssm::scalar_identity, ssm::zoh_euler, float>(p, {ssm::ssd{}});
    check_device_scan<ssm::scalar_identity, ssm::zoh_euler, ssm::bfloat16>(p, {ssm::ssd{}});
}

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
    const auto untouched = y.to_host();
    REQUIRE(std::all_of(untouched.begin(), untouched.end(), [](float v) { return std::isnan(v); }));
}

int main(int argc, char** argv) {
    int devices = 0;
    const cudaError_t status = cudaGetDeviceCount(&devices);
    if (status != cudaSuccess || devices == 0) {
        std::printf("SKIPPED: no CUDA device (%s); the device tests did not run\n",
                    status != cudaSuccess ? cudaGetErrorString(status) : "device count is 0");
        return 77;
    }
    return Catch::Session().run(argc, argv);
}
