// Host benchmarks of the selective scan.
//
//   strategy/<name>/length:L/channels:D/threads:T
//       Mamba-1 problems (diagonal_real, zoh_euler, float, softplus on Δ + bias, D skip, z gate,
//       state 16, batch 1) scanned by each host strategy, so that the point where one strategy
//       overtakes another shows up side by side in one run.
//   mamba1_ref/<type>/threads:T, mamba2_ref/<type>/threads:T
//       The fused scan at the reference model shapes (Mamba-1: d_inner 1536, N 16, length 2048;
//       Mamba-2: 24 heads x 64, N 128, length 2048, one group), sequential strategy. Mamba-1 also
//       reports x_ggml: ggml's CPU ssm_scan time at that shape (170 ms) over ours.
//   exp/ssm_math, exp/std
//       Throughput of ssm::math::exp over an L1-resident array (the loop vectorizes) and of
//       std::exp (scalar libm): the bound for a scan that does one exp per state element.
//
// Every scan benchmark reports items_per_second = state elements (batch·length·channels·state)
// per second and bytes_per_second = bytes that must move (every input read once, y written once).
// Scan times are wall-clock (UseRealTime), since the scans run on their own threads.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <ssm/ssm.hpp>

namespace {

using ssm::index_t;

// ggml's CPU ssm_scan at the Mamba-1 reference shape on a 2-core AMD EPYC (AVX-512), without the
// D skip and z gate: about 170 ms.
constexpr double ggml_mamba1_seconds = 0.170;

// Inputs above this many bytes are not benchmarked (length 2^20 with 1536 channels needs 19 GB).
constexpr double max_input_bytes = 1.5e9;

// Uniform values in [lo, hi), converted to the storage type.
template <class T>
void fill_uniform(std::vector<T>& v, std::mt19937& rng, float lo, float hi) {
    const float scale = (hi - lo) * 0x1p-32f;
    const float top = std::nextafter(hi, lo);  // float rounding may otherwise reach hi
    for (auto& e : v) e = ssm::from_float<T>(std::min(lo + float(rng()) * scale, top));
}

struct scan_shape {
    index_t batch = 1, length = 0, channels = 0, state = 16, groups = 1;
    index_t heads = 0;  // 0: Mamba-1 (one Δ per channel); otherwise Mamba-2 heads of channels/heads
    bool operator==(const scan_shape&) const = default;
    index_t delta_channels() const { return heads ? heads : channels; }
    index_t elements() const { return batch * length * channels * state; }
};

template <class T>
double input_bytes(const scan_shape& s) {
    const double per_token = double(2 * s.channels + s.delta_channels() + 2 * s.groups * s.state) * sizeof(T);
    const double params = double(s.heads ? s.heads : s.channels * s.state) + s.channels + s.delta_channels();
    return double(s.batch * s.length) * per_token + params * sizeof(float);
}

template <class T>
double moved_bytes(const scan_shape& s) {  // inputs read once + y written once
    return input_bytes<T>(s) + double(s.batch * s.length * s.channels) * sizeof(T);
}

// Random problem data in the ranges a trained Mamba block sees: Δ after softplus(Δ + bias) mostly in
// [0.001, 0.1] (dt_bias initialised as softplus⁻¹ of that range), A = -(1..N) (S4D-real) for
// Mamba-1 and a_h in [-16, -1] for Mamba-2, u, z, B, C in [-1, 1], D in [0.5, 1.5].
template <class T>
struct scan_data {
    scan_shape shape;
    std::vector<float> A, D, bias;
    std::vector<T> u, delta, B, C, z, y;

    explicit scan_data(const scan_shape& s) : shape(s) {
        std::mt19937 rng(20240611u + unsigned(s.length * 131 + s.channels * 7 + s.state));
        const auto tokens = std::size_t(s.batch * s.length);
        u.resize(tokens * s.channels);
        z.resize(u.size());
        y.resize(u.size());
        delta.resize(tokens * s.delta_channels());
        B.resize(tokens * s.groups * s.state);
        C.resize(B.size());
        fill_uniform(u, rng, -1.0f, 1.0f);
        fill_uniform(z, rng, -1.0f, 1.0f);
        fill_uniform(delta, rng, -0.5f, 0.5f);
        fill_uniform(B, rng, -1.0f, 1.0f);
        fill_uniform(C, rng, -1.0f, 1.0f);
        D.resize(std::size_t(s.channels));
        fill_uniform(D, rng, 0.5f, 1.5f);
        bias.resize(std::size_t(s.delta_channels()));
        std::uniform_real_distribution<float> log_dt(std::log(0.001f), std::log(0.1f));
        for (auto& b : bias) b = std::log(std::expm1(std::exp(log_dt(rng))));  // softplus⁻¹(dt)
        if (s.heads) {
            A.resize(std::size_t(s.heads));
            fill_uniform(A, rng, -16.0f, -1.0f);
        } else {
            A.resize(std::size_t(s.channels * s.state));
            for (index_t d = 0; d < s.channels; ++d)
                for (index_t n = 0; n < s.state; ++n) A[std::size_t(d * s.state + n)] = -float(n + 1);
        }
    }

    ssm::scan_inputs<T> inputs() const {
        const auto& s = shape;
        return {.u = {u.data(), s.batch, s.length, s.channels},
                .delta = {delta.data(), s.batch, s.length, s.delta_channels()},
                .B = {B.data(), s.batch, s.length, s.groups, s.state},
                .C = {C.data(), s.batch, s.length, s.groups, s.state},
                .z = {z.data(), s.batch, s.length, s.channels},
                .D = {D.data(), s.channels},
                .delta_bias = {bias.data(), s.delta_channels()},
                .delta_softplus = true};
    }
    ssm::scan_outputs<T> outputs() { return {.y = {y.data(), shape.batch, shape.length, shape.channels}}; }

    ssm::selective_ssm<ssm::diagonal_real> mamba1() const {
        return {.transition = {.A = {A.data(), shape.channels, shape.state}}};
    }
    ssm::selective_ssm<ssm::scalar_identity> mamba2() const {
        return {.transition = {.A = {A.data(), shape.heads},
                               .head_dim = shape.channels / shape.heads,
                               .state = shape.state}};
    }
};

// Benchmarks are registered shape by shape, so one cached problem per storage type is enough; the
// previous one is freed before the next is built.
template <class T>
scan_data<T>& cached(const scan_shape& s) {
    static std::unique_ptr<scan_data<T>> data;
    if (!data || !(data->shape == s)) {
        data.reset();
        data = std::make_unique<scan_data<T>>(s);
    }
    return *data;
}

template <class T>
void report(benchmark::State& st, const scan_shape& s) {
    st.SetItemsProcessed(st.iterations() * s.elements());
    st.SetBytesProcessed(st.iterations() * std::int64_t(moved_bytes<T>(s)));
}

// ---- 1. Strategy comparison --------------------------------------------------------------------

// Chunks of length/8 tokens, between 64 and 4096: at least a few chunks per channel block so that
// threads have chunks to share even when there is a single block, without many tiny chunks.
index_t chunk_for(index_t length) { return std::clamp<index_t>(length / 8, 64, 4096); }

ssm::sequential make_strategy(ssm::sequential, index_t) { return {}; }
ssm::chunked make_strategy(ssm::chunked, index_t length) { return {.chunk = chunk_for(length)}; }
ssm::parallel_prefix make_strategy(ssm::parallel_prefix, index_t) { return {}; }

std::string describe(const ssm::sequential&) { return ""; }
std::string describe(const ssm::chunked& c) { return "chunk=" + std::to_string(c.chunk); }
std::string describe(const ssm::parallel_prefix& p) { return "tile=" + std::to_string(p.tile); }

template <class Strategy>
void bm_strategy(benchmark::State& st) {
    const scan_shape s{.length = st.range(0), .channels = st.range(1), .state = 16};
    const ssm::host_exec exec{.threads = int(st.range(2))};
    const Strategy strategy = make_strategy(Strategy{}, s.length);
    auto& data = cached<float>(s);
    const auto model = data.mamba1();
    const auto in = data.inputs();
    const auto out = data.outputs();
    for (auto _ : st) {
        ssm::selective_scan(exec, strategy, model, in, out);
        benchmark::ClobberMemory();
    }
    report<float>(st, s);
    st.SetLabel(describe(strategy));
}

// ---- 2. Reference shapes -----------------------------------------------------------------------

constexpr scan_shape mamba1_shape{.length = 2048, .channels = 1536, .state = 16};
constexpr scan_shape mamba2_shape{.length = 2048, .channels = 24 * 64, .state = 128, .groups = 1, .heads = 24};

template <class T, bool Mamba2>
void bm_reference(benchmark::State& st) {
    const scan_shape s = Mamba2 ? mamba2_shape : mamba1_shape;
    const ssm::host_exec exec{.threads = int(st.range(0))};
    auto& data = cached<T>(s);
    const auto in = data.inputs();
    const auto out = data.outputs();
    for (auto _ : st) {
        if constexpr (Mamba2) ssm::selective_scan(exec, ssm::sequential{}, data.mamba2(), in, out);
        else ssm::selective_scan(exec, ssm::sequential{}, data.mamba1(), in, out);
        benchmark::ClobberMemory();
    }
    report<T>(st, s);
    // Rate counter: 0.170 s per iteration over our seconds per iteration = speed-up over ggml.
    if (!Mamba2)
        st.counters["x_ggml"] = benchmark::Counter(ggml_mamba1_seconds, benchmark::Counter::kIsIterationInvariantRate);
}

// ---- 3. exp throughput -------------------------------------------------------------------------

constexpr std::size_t exp_count = 4096;  // 16 KiB in, 16 KiB out: stays in L1

std::vector<float> exp_arguments() {
    std::vector<float> x(exp_count);
    std::mt19937 rng(7u);
    fill_uniform(x, rng, -20.0f, 0.0f);  // Δ·λ of a decaying mode
    return x;
}

// One exp per element of an L1-resident array; Exp is a stateless callable (a lambda type), so the
// call inlines and the loop vectorizes when Exp's body can.
template <class Exp>
void bm_exp(benchmark::State& st) {
    const std::vector<float> x = exp_arguments();
    std::vector<float> y(exp_count);
    const float* in = x.data();
    float* out = y.data();
    for (auto _ : st) {
        benchmark::DoNotOptimize(in);
        for (std::size_t i = 0; i < exp_count; ++i) out[i] = Exp{}(in[i]);
        benchmark::DoNotOptimize(out);
        benchmark::ClobberMemory();
    }
    st.SetItemsProcessed(st.iterations() * std::int64_t(exp_count));
}

using ssm_exp = decltype([](float v) { return ssm::math::exp(v); });
using std_exp = decltype([](float v) { return std::exp(v); });

// ---- Registration ------------------------------------------------------------------------------

template <class Strategy>
void register_strategy(const char* name, index_t length, index_t channels, int threads) {
    benchmark::RegisterBenchmark((std::string("strategy/") + name).c_str(), bm_strategy<Strategy>)
        ->Args({length, channels, threads})
        ->ArgNames({"length", "channels", "threads"})
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
}

void register_all() {
    for (index_t length : {256, 4096, 65536, 1048576})
        for (index_t channels : {16, 64, 1536}) {
            if (input_bytes<float>({.length = length, .channels = channels}) > max_input_bytes) continue;
            for (int threads : {1, 2}) {
                register_strategy<ssm::sequential>("sequential", length, channels, threads);
                register_strategy<ssm::chunked>("chunked", length, channels, threads);
                register_strategy<ssm::parallel_prefix>("parallel_prefix", length, channels, threads);
            }
        }

    auto reference = [](const char* name, auto fn) {
        benchmark::RegisterBenchmark(name, fn)
            ->ArgName("threads")
            ->Arg(1)
            ->Arg(2)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
    };
    reference("mamba1_ref/fp32", bm_reference<float, false>);
    reference("mamba1_ref/bf16", bm_reference<ssm::bfloat16, false>);
    reference("mamba2_ref/fp32", bm_reference<float, true>);
    reference("mamba2_ref/bf16", bm_reference<ssm::bfloat16, true>);

    benchmark::RegisterBenchmark("exp/ssm_math", bm_exp<ssm_exp>)->Unit(benchmark::kMicrosecond);
    // Both cores at once: each thread has its own arrays; shows whether exp/s scales to 2 threads.
    benchmark::RegisterBenchmark("exp/ssm_math", bm_exp<ssm_exp>)->Unit(benchmark::kMicrosecond)->Threads(2)->UseRealTime();
    benchmark::RegisterBenchmark("exp/std", bm_exp<std_exp>)->Unit(benchmark::kMicrosecond);
}

}  // namespace

int main(int argc, char** argv) {
    register_all();
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
