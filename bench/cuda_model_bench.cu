// Device benchmarks of whole models: prefill and decode throughput of mamba-130m-shaped models
// (24 layers, d_model 768, random weights) with float32 or bf16 products, timed by CUDA events.
//
//   prefill/<arch>/<type>/batch:B/length:L   one forward over B sequences of L tokens from an empty
//                                            cache, logits of the last position
//   decode/<arch>/<type>/batch:B/graph:G     one token per sequence after a 64-token prefill; G = 1
//                                            replays the captured CUDA graph, G = 0 launches each kernel
//   prefill_decimated/<arch>/<type>/...      prefill with layer 12 decimating to 2000 tokens (DeciMamba's
//                                            setting for this model)
//   prefill_global/mamba/..., decode_global/mamba/...
//                                            with the global selection module (K_g = 128, as the paper's
//                                            Mamba-130M) in every layer
//
// items_per_second counts tokens (B·L for prefill, B per decode step).
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include <ssm/models/device_lm.cuh>

#include "model_shapes.hpp"

namespace {

using ssm::index_t;
using ssm::cuda::device_array;

enum variant { plain, decimated, global };

template <class Host, bool Global>
const Host& host_model() {
    static const Host m = [] {
        auto config = std::same_as<Host, ssm::models::mamba_lm> ? bench::mamba_130m() : bench::mamba2_130m();
        if (Global) config.global_selection_kernel = 128;
        return Host::random(config, 7);
    }();
    return m;
}

template <class Device, variant V = plain>
const Device& device_model() {
    static const Device m = [] {
        Device d(host_model<typename Device::host_type, V == global>());
        if (V == decimated) d.set_decimation({.layers = {12}, .schedule = {.base_length = 2000}, .response_length = 1});
        return d;
    }();
    return m;
}

// Times `work` on `stream` with CUDA events, as manual time per iteration.
template <class Work>
void timed_loop(benchmark::State& state, cudaStream_t stream, Work&& work) {
    cudaEvent_t start, stop;
    ssm::cuda::check(cudaEventCreate(&start), "event");
    ssm::cuda::check(cudaEventCreate(&stop), "event");
    work();  // warm-up: allocations, graph capture
    for (auto _ : state) {
        ssm::cuda::check(cudaEventRecord(start, stream), "event record");
        work();
        ssm::cuda::check(cudaEventRecord(stop, stream), "event record");
        ssm::cuda::check(cudaEventSynchronize(stop), "event sync");
        float ms = 0.0f;
        ssm::cuda::check(cudaEventElapsedTime(&ms, start, stop), "event time");
        state.SetIterationTime(ms / 1e3);
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
}

struct stream_holder {
    cudaStream_t stream = nullptr;
    stream_holder() { ssm::cuda::check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream"); }
    ~stream_holder() { cudaStreamDestroy(stream); }
};

template <class Device, variant V = plain>
void bm_prefill(benchmark::State& state) {
    const Device& m = device_model<Device, V>();
    const index_t batch = state.range(0), length = state.range(1), vocab = m.config().vocab_size;
    const auto tokens = device_array<std::int32_t>::copy_of(bench::tokens(batch * length, vocab));
    device_array<float> logits(std::size_t(batch * vocab));
    stream_holder s;
    auto cache = m.make_cache(batch);
    timed_loop(state, s.stream, [&] {
        // A prefill continues from the cache's state: clear it, as in a fresh cache (no allocation timed).
        cache.position = 0;
        for (auto& layer : cache.layers)
            for (auto* a : {&layer.conv, &layer.ssm, &layer.global})
                if (!a->empty())
                    ssm::cuda::check(cudaMemsetAsync(a->data(), 0, a->size() * sizeof(float), s.stream), "clear");
        m.forward(ssm::cuda_exec{s.stream}, {tokens.data(), batch, length}, cache, {logits.data(), batch, 1, vocab});
    });
    state.SetItemsProcessed(state.iterations() * batch * length);
}

template <class Device, variant V = plain>
void bm_decode(benchmark::State& state) {
    const Device& m = device_model<Device, V>();
    const index_t batch = state.range(0), vocab = m.config().vocab_size, prompt = 64;
    const bool graph = state.range(1) != 0;
    const auto prompt_tokens = device_array<std::int32_t>::copy_of(bench::tokens(batch * prompt, vocab));
    const auto next = device_array<std::int32_t>::copy_of(bench::tokens(batch, vocab));
    device_array<float> logits(std::size_t(batch * vocab));
    stream_holder s;
    // Without a graph the work goes to the legacy default stream, which is never captured.
    const ssm::cuda_exec exec{graph ? s.stream : nullptr};
    auto cache = m.make_cache(batch);
    m.forward(exec, {prompt_tokens.data(), batch, prompt}, cache, {logits.data(), batch, 1, vocab});
    timed_loop(state, exec.stream,
               [&] { m.forward(exec, {next.data(), batch, 1}, cache, {logits.data(), batch, 1, vocab}); });
    state.SetItemsProcessed(state.iterations() * batch);
}

template <class Device>
void register_model(const std::string& name) {
    benchmark::RegisterBenchmark(("prefill/" + name).c_str(), bm_prefill<Device>)
        ->ArgsProduct({{1, 16}, {2048}})
        ->ArgNames({"batch", "length"})
        ->Unit(benchmark::kMillisecond)
        ->UseManualTime();
    benchmark::RegisterBenchmark(("prefill/" + name).c_str(), bm_prefill<Device>)
        ->ArgsProduct({{1}, {8192, 65536}})
        ->ArgNames({"batch", "length"})
        ->Unit(benchmark::kMillisecond)
        ->UseManualTime();
    benchmark::RegisterBenchmark(("prefill_decimated/" + name).c_str(), bm_prefill<Device, decimated>)
        ->ArgsProduct({{1}, {8192, 65536}})
        ->ArgNames({"batch", "length"})
        ->Unit(benchmark::kMillisecond)
        ->UseManualTime();
    benchmark::RegisterBenchmark(("decode/" + name).c_str(), bm_decode<Device>)
        ->ArgsProduct({{1, 4, 16}, {0, 1}})
        ->ArgNames({"batch", "graph"})
        ->Unit(benchmark::kMicrosecond)
        ->UseManualTime();
    if constexpr (std::same_as<typename Device::host_type, ssm::models::mamba_lm>) {
        benchmark::RegisterBenchmark(("prefill_global/" + name).c_str(), bm_prefill<Device, global>)
            ->ArgsProduct({{1}, {2048, 8192}})
            ->ArgNames({"batch", "length"})
            ->Unit(benchmark::kMillisecond)
            ->UseManualTime();
        benchmark::RegisterBenchmark(("decode_global/" + name).c_str(), bm_decode<Device, global>)
            ->ArgsProduct({{1}, {1}})
            ->ArgNames({"batch", "graph"})
            ->Unit(benchmark::kMicrosecond)
            ->UseManualTime();
    }
}

}  // namespace

int main(int argc, char** argv) {
    using namespace ssm::models;
    register_model<device_mamba_lm<float>>("mamba/fp32");
    register_model<device_mamba_lm<ssm::bfloat16>>("mamba/bf16");
    register_model<device_mamba2_lm<float>>("mamba2/fp32");
    register_model<device_mamba2_lm<ssm::bfloat16>>("mamba2/bf16");
    benchmark::Initialize(&argc, argv);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
}
