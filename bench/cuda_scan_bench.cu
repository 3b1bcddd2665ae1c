// Device selective-scan strategies side by side at the shapes mamba_ssm is usually measured at.
// Reports time per scan, elements/s (batch·length·channels·state), the bytes that must move (every
// input read once, y written once) per second, and that rate as a share of the measured
// device-to-device copy bandwidth.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <algorithm>
#include <stdexcept>
#include <vector>

#include <ssm/cuda/selective_scan.cuh>
#include <ssm/cuda/ssd.cuh>

namespace {

void check(cudaError_t status) {
    if (status != cudaSuccess) throw std::runtime_error(cudaGetErrorString(status));
}

// Uniform values in [lo, hi) from a hash of (seed, index), filled on the device: generating the
// hundreds of millions of inputs of the long shapes on the host took seconds per benchmark.
template <class E>
__global__ void fill_uniform(E* data, std::size_t count, float lo, float hi, unsigned seed) {
    for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < count;
         i += std::size_t(gridDim.x) * blockDim.x) {
        std::uint64_t h = (std::uint64_t(seed) << 40) ^ i;  // splitmix64's finalizer
        h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
        h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
        h ^= h >> 31;
        data[i] = ssm::from_float<E>(lo + (hi - lo) * float(h >> 40) * 0x1p-24f);
    }
}

template <class E>
E* device_random(std::size_t count, float lo, float hi, unsigned seed) {
    E* data = nullptr;
    check(cudaMalloc(&data, count * sizeof(E)));
    fill_uniform<<<1024, 256>>>(data, count, lo, hi, seed);
    check(cudaGetLastError());
    check(cudaDeviceSynchronize());
    return data;
}

// Bytes read plus written per second by a large device-to-device copy (median of 20).
double copy_bandwidth() {
    static const double measured = [] {
        const std::size_t bytes = std::size_t(1) << 30;
        void *a = nullptr, *b = nullptr;
        check(cudaMalloc(&a, bytes));
        check(cudaMalloc(&b, bytes));
        check(cudaMemset(a, 1, bytes));
        cudaEvent_t start, stop;
        check(cudaEventCreate(&start));
        check(cudaEventCreate(&stop));
        std::vector<float> ms;
        for (int i = 0; i < 23; ++i) {
            check(cudaEventRecord(start));
            check(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
            check(cudaEventRecord(stop));
            check(cudaEventSynchronize(stop));
            float t = 0;
            check(cudaEventElapsedTime(&t, start, stop));
            if (i >= 3) ms.push_back(t);
        }
        std::sort(ms.begin(), ms.end());
        cudaFree(a);
        cudaFree(b);
        const double rate = 2.0 * double(bytes) / (ms[ms.size() / 2] * 1e-3);
        std::printf("measured device-to-device copy: %.0f GB/s (read + write)\n", rate / 1e9);
        return rate;
    }();
    return measured;
}

enum class variant { mamba1, mamba2 };

// state.range: batch, length; the channel layout comes from the variant (Mamba-2: 1536 channels in
// heads of head_dim).
template <variant Kind, class T, class Strategy>
void bench_scan(benchmark::State& state, Strategy strategy, ssm::index_t head_dim = 64) {
    const ssm::index_t batch = state.range(0), length = state.range(1);
    const bool mamba1 = Kind == variant::mamba1;
    const ssm::index_t heads = 1536 / head_dim;
    const ssm::index_t channels = mamba1 ? 1536 : heads * head_dim, N = mamba1 ? 16 : 128;
    const ssm::index_t delta_channels = mamba1 ? channels : heads;
    const std::size_t tokens = std::size_t(batch * length);
    float* A = device_random<float>(std::size_t(mamba1 ? channels * N : heads), -2.0f, -0.05f, 1);
    float* D = device_random<float>(std::size_t(channels), -1.0f, 1.0f, 2);
    float* bias = device_random<float>(std::size_t(delta_channels), -0.5f, 0.5f, 3);
    T* u = device_random<T>(tokens * channels, -1.0f, 1.0f, 4);
    T* z = device_random<T>(tokens * channels, -2.0f, 2.0f, 5);
    T* delta = device_random<T>(tokens * delta_channels, -4.0f, 0.0f, 6);
    T* B = device_random<T>(tokens * N, -1.0f, 1.0f, 7);
    T* C = device_random<T>(tokens * N, -1.0f, 1.0f, 8);
    T* y = nullptr;
    check(cudaMalloc(&y, tokens * channels * sizeof(T)));

    const ssm::scan_inputs<T> in{.u = {u, batch, length, channels},
                                 .delta = {delta, batch, length, delta_channels},
                                 .B = {B, batch, length, 1, N},
                                 .C = {C, batch, length, 1, N},
                                 .z = {z, batch, length, channels},
                                 .D = {D, channels},
                                 .delta_bias = {bias, delta_channels},
                                 .delta_softplus = true};
    const ssm::scan_outputs<T> out{.y = {y, batch, length, channels}};
    auto run = [&] {
        if constexpr (mamba1) {
            const ssm::selective_ssm<ssm::diagonal_real> model{{ssm::tensor_view<const float, 2>(A, channels, N)}};
            ssm::selective_scan(ssm::cuda_exec{}, strategy, model, in, out);
        } else {
            const ssm::selective_ssm<ssm::scalar_identity> model{{ssm::tensor_view<const float, 1>(A, heads), head_dim, N}};
            ssm::selective_scan(ssm::cuda_exec{}, strategy, model, in, out);
        }
    };
    cudaEvent_t start, stop;
    check(cudaEventCreate(&start));
    check(cudaEventCreate(&stop));
    run();
    check(cudaDeviceSynchronize());
    for (auto _ : state) {
        check(cudaEventRecord(start));
        run();
        check(cudaEventRecord(stop));
        check(cudaEventSynchronize(stop));
        float ms = 0;
        check(cudaEventElapsedTime(&ms, start, stop));
        state.SetIterationTime(ms * 1e-3);
    }
    const double bytes = double(tokens) * double(sizeof(T)) * double(3 * channels + delta_channels + 2 * N);
    state.SetBytesProcessed(int64_t(bytes) * state.iterations());
    state.SetItemsProcessed(int64_t(tokens * channels * N) * state.iterations());
    state.counters["copy_bw_share"] = benchmark::Counter(bytes / copy_bandwidth(), benchmark::Counter::kIsIterationInvariantRate);
    for (void* p : {(void*)A, (void*)D, (void*)bias, (void*)u, (void*)z, (void*)delta, (void*)B, (void*)C, (void*)y})
        cudaFree(p);
}

// mamba_ssm's reference shapes: (batch, length) with 1536 channels.
void shapes(benchmark::internal::Benchmark* b) {
    b->Args({8, 2048})->Args({4, 8192})->Args({1, 65536})->UseManualTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    // Freed workspaces stay in the stream-ordered pool, as in a long-running process; by default the
    // pool returns them at every synchronization, and the next call pays for mapping them again.
    cudaMemPool_t pool;
    check(cudaDeviceGetDefaultMemPool(&pool, 0));
    std::uint64_t keep_all = UINT64_MAX;
    check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_all));
    auto add = [](const char* name, auto run) { shapes(benchmark::RegisterBenchmark(name, run)); };
    add("mamba1/f32/sequential", [](benchmark::State& s) { bench_scan<variant::mamba1, float>(s, ssm::sequential{}); });
    for (const ssm::index_t chunk : {ssm::index_t(1) << 30, ssm::index_t(2048), ssm::index_t(512)}) {
        const std::string suffix = chunk > (1 << 20) ? "one_pass" : std::to_string(chunk);
        add(("mamba1/f32/chunked/" + suffix).c_str(),
            [chunk](benchmark::State& s) { bench_scan<variant::mamba1, float>(s, ssm::chunked{chunk}); });
        add(("mamba1/bf16/chunked/" + suffix).c_str(),
            [chunk](benchmark::State& s) { bench_scan<variant::mamba1, ssm::bfloat16>(s, ssm::chunked{chunk}); });
        add(("mamba2/bf16/chunked/" + suffix).c_str(),
            [chunk](benchmark::State& s) { bench_scan<variant::mamba2, ssm::bfloat16>(s, ssm::chunked{chunk}); });
    }
    // Look-back: one kernel, chunks chained within it.
    for (const ssm::index_t chunk : {256, 512, 1024, 2048}) {
        const std::string suffix = std::to_string(chunk);
        add(("mamba1/f32/look_back/" + suffix).c_str(),
            [chunk](benchmark::State& s) { bench_scan<variant::mamba1, float>(s, ssm::look_back{chunk}); });
        add(("mamba1/bf16/look_back/" + suffix).c_str(),
            [chunk](benchmark::State& s) { bench_scan<variant::mamba1, ssm::bfloat16>(s, ssm::look_back{chunk}); });
    }
    add("mamba2/f32/ssd", [](benchmark::State& s) { bench_scan<variant::mamba2, float>(s, ssm::ssd{}); });
    add("mamba2/bf16/ssd", [](benchmark::State& s) { bench_scan<variant::mamba2, ssm::bfloat16>(s, ssm::ssd{}); });
    // SSD with heads of 128 channels (12 of them).
    add("mamba2/f32/ssd/head_dim:128", [](benchmark::State& s) { bench_scan<variant::mamba2, float>(s, ssm::ssd{}, 128); });
    add("mamba2/bf16/ssd/head_dim:128",
        [](benchmark::State& s) { bench_scan<variant::mamba2, ssm::bfloat16>(s, ssm::ssd{}, 128); });
    // SSD in windows of whole chunks: workspaces of 64 and 256 MiB, and of 1 TiB (one window).
    for (const int mib : {64, 256, 1 << 20}) {
        const ssm::ssd how{.workspace = std::size_t(mib) << 20};
        add(("mamba2/bf16/ssd/workspace:" + std::to_string(mib) + "MiB").c_str(),
            [how](benchmark::State& s) { bench_scan<variant::mamba2, ssm::bfloat16>(s, how); });
    }
    // SSD with 1 to 8 of the 24 heads a block (sharing its staged B, C and C·Bᵀ).
    for (const int heads : {1, 2, 3, 4, 6, 8}) {
        const ssm::ssd how{.heads_per_block = heads};
        add(("mamba2/bf16/ssd/heads_per_block:" + std::to_string(heads)).c_str(),
            [how](benchmark::State& s) { bench_scan<variant::mamba2, ssm::bfloat16>(s, how); });
        add(("mamba2/f32/ssd/heads_per_block:" + std::to_string(heads)).c_str(),
            [how](benchmark::State& s) { bench_scan<variant::mamba2, float>(s, how); });
    }
    // SSD with its state pass chaining spans of 1 to 4 chunks.
    for (const int span : {1, 2, 4}) {
        const ssm::ssd how{.chunks_per_span = span};
        add(("mamba2/bf16/ssd/chunks_per_span:" + std::to_string(span)).c_str(),
            [how](benchmark::State& s) { bench_scan<variant::mamba2, ssm::bfloat16>(s, how); });
        add(("mamba2/f32/ssd/chunks_per_span:" + std::to_string(span)).c_str(),
            [how](benchmark::State& s) { bench_scan<variant::mamba2, float>(s, how); });
    }
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
