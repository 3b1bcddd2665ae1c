// Host benchmarks of whole models: prefill and decode throughput of mamba-130m-shaped models
// (24 layers, d_model 768; random weights, float32) on the CPU.
//
//   prefill/<arch>/batch:B/length:L/threads:T   one forward over B sequences of L tokens from an
//                                               empty cache, logits of the last position
//   decode/<arch>/batch:B/threads:T             one token per sequence after a 64-token prefill
//   prefill/<arch>/.../variant:V                V = 0 as trained, 1 with Δ and spectrum factors on every
//                                               layer (the cost of the fused policies), 2 with layer 12
//                                               decimating to 2000 tokens (DeciMamba's setting for this
//                                               model), 3 with the global selection module (K_g = 128;
//                                               Mamba-1 only), logits of the last position
//
// items_per_second counts tokens (B·L for prefill, B per decode step).
#include <benchmark/benchmark.h>

#include <array>
#include <cstdint>
#include <vector>

#include <ssm/models/causal_lm.hpp>

#include "model_shapes.hpp"

namespace {

using ssm::index_t;

enum variant { as_trained = 0, scaled = 1, decimated = 2, global = 3 };

template <class Model>
const Model& model(int v = as_trained) {
    static const std::array<Model, 4> models = [] {
        constexpr bool mamba1 = std::same_as<Model, ssm::models::mamba_lm>;
        const Model m = Model::random(mamba1 ? bench::mamba_130m() : bench::mamba2_130m(), 7);
        std::array<Model, 4> out{m, m, m, m};
        if constexpr (mamba1) {
            auto with_module = bench::mamba_130m();
            with_module.global_selection_kernel = 128;
            out[global] = Model::random(with_module, 7);
        }
        std::vector<ssm::models::layer_scaling> factors(static_cast<std::size_t>(m.config().layers));
        for (auto& f : factors) f = {.delta = 0.9f, .clip = {0.01f, 50.0f}, .spectrum = {.alpha = 0.5f, .max_magnitude = 2.0f}};
        out[scaled].set_scaling(factors);
        out[decimated].set_decimation({.layers = {12}, .schedule = {.base_length = 2000}, .response_length = 1});
        return out;
    }();
    return models[std::size_t(v)];
}

template <class Model>
void bm_prefill(benchmark::State& state) {
    const Model& m = model<Model>(int(state.range(3)));
    const index_t batch = state.range(0), length = state.range(1), vocab = m.config().vocab_size;
    const ssm::host_exec exec{.threads = int(state.range(2))};
    const auto input = bench::tokens(batch * length, vocab);
    std::vector<float> logits(static_cast<std::size_t>(batch * vocab));
    for (auto _ : state) {
        auto cache = m.make_cache(batch);
        m.forward(exec, {input.data(), batch, length}, cache, {logits.data(), batch, 1, vocab});
        benchmark::DoNotOptimize(logits.data());
    }
    state.SetItemsProcessed(state.iterations() * batch * length);
}

template <class Model>
void bm_decode(benchmark::State& state) {
    const Model& m = model<Model>();
    const index_t batch = state.range(0), vocab = m.config().vocab_size, prompt = 64;
    const ssm::host_exec exec{.threads = int(state.range(1))};
    const auto input = bench::tokens(batch * prompt, vocab);
    std::vector<float> logits(static_cast<std::size_t>(batch * vocab));
    auto cache = m.make_cache(batch);
    m.forward(exec, {input.data(), batch, prompt}, cache, {logits.data(), batch, 1, vocab});
    std::vector<std::int32_t> next(input.begin(), input.begin() + batch);
    for (auto _ : state) {
        m.forward(exec, {next.data(), batch, 1}, cache, {logits.data(), batch, 1, vocab});
        benchmark::DoNotOptimize(logits.data());
    }
    state.SetItemsProcessed(state.iterations() * batch);
}

void register_all() {
    const int threads = int(ssm::host_exec{}.worker_count());
    for (auto [name, prefill, decode] :
         {std::tuple{"mamba", &bm_prefill<ssm::models::mamba_lm>, &bm_decode<ssm::models::mamba_lm>},
          std::tuple{"mamba2", &bm_prefill<ssm::models::mamba2_lm>, &bm_decode<ssm::models::mamba2_lm>}}) {
        const bool mamba1 = std::string(name) == "mamba";
        for (const index_t length : {128, 512})
            benchmark::RegisterBenchmark((std::string("prefill/") + name).c_str(), prefill)
                ->ArgsProduct({{1}, {length}, {threads}, mamba1 ? std::vector<std::int64_t>{as_trained, scaled, global}
                                                                : std::vector<std::int64_t>{as_trained, scaled}})
                ->ArgNames({"batch", "length", "threads", "variant"})
                ->Unit(benchmark::kMillisecond)
                ->UseRealTime()
                ->MinTime(1.0);
        benchmark::RegisterBenchmark((std::string("prefill/") + name).c_str(), prefill)
            ->ArgsProduct({{1}, {4096}, {threads}, {as_trained, decimated}})
            ->ArgNames({"batch", "length", "threads", "variant"})
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime()
            ->MinTime(1.0);
        benchmark::RegisterBenchmark((std::string("decode/") + name).c_str(), decode)
            ->ArgsProduct({{1, 16}, {threads}})
            ->ArgNames({"batch", "threads"})
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime()
            ->MinTime(1.0);
    }
}

}  // namespace

int main(int argc, char** argv) {
    register_all();
    benchmark::Initialize(&argc, argv);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
}
