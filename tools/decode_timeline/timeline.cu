// Decodes one token of mamba-130m-shaped models from a CUDA graph with the probed headers of
// probe_headers.py and prints, for each probed kernel of the step, its times from the step's first
// kernel start (ns): gap = its wait's end - the previous kernel's end; work = end - wait's end, split
// into inputs (the step's, in step_product), weights, products and outputs for matrix-vector kernels.
// See run.sh.
#include <algorithm>
#include <cstdio>
#include <vector>

#include <ssm/models/device_lm.cuh>

#include "model_shapes.hpp"

using ssm::cuda_exec;
using ssm::index_t;
using ssm::cuda::check;

template <class Device, class Host>
void run(const char* name, const Host& host) {
    const Device m(host);
    const index_t vocab = m.config().vocab_size;
    cudaStream_t s;
    check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream");
    const cuda_exec exec{s};
    std::vector<std::int32_t> prompt(64, 5), next(1, 7);
    auto p = ssm::cuda::device_array<std::int32_t>::copy_of(prompt),
         n = ssm::cuda::device_array<std::int32_t>::copy_of(next);
    ssm::cuda::device_array<float> logits{std::size_t(vocab)};
    auto cache = m.make_cache(1);
    m.forward(exec, {p.data(), 1, 64}, cache, {logits.data(), 1, 1, vocab});
    for (int k = 0; k < 5; ++k) m.forward(exec, {n.data(), 1, 1}, cache, {logits.data(), 1, 1, vocab});
    check(cudaStreamSynchronize(s), "warm-up");
    static unsigned long long init[1024][6];
    for (auto& r : init) r[0] = r[1] = ~0ull, r[2] = r[3] = r[4] = r[5] = 0;
    for (int rep = 0; rep < 3; ++rep) {
        check(cudaMemcpyToSymbol(ssm::cuda::probe_t, init, sizeof init), "probe reset");
        m.forward(exec, {n.data(), 1, 1}, cache, {logits.data(), 1, 1, vocab});
        check(cudaStreamSynchronize(s), "step");
    }
    static unsigned long long t[1024][6];
    check(cudaMemcpyFromSymbol(t, ssm::cuda::probe_t, sizeof t), "probe copy");
    unsigned long long t0 = ~0ull;
    for (auto& r : t)
        if (r[2]) t0 = std::min(t0, r[0]);
    printf("== %s (ns from first start: start, waited, end; gap = waited - previous end; work = end - waited)\n", name);
    unsigned long long prev = 0;
    double gaps = 0, works = 0;
    int count = 0;
    for (int i = 0; i < 1024; ++i) {
        if (!t[i][2]) continue;
        long long gap = prev ? (long long)(t[i][1] - prev) : 0;
        printf("%4d %8llu %8llu %8llu gap %6lld work %6llu", i, t[i][0] - t0, t[i][1] - t0, t[i][2] - t0, gap,
               t[i][2] - t[i][1]);
        if (t[i][3])
            printf("  inputs %6llu weights %6llu products %6llu outputs %6llu", t[i][3] - t[i][1], t[i][4] - t[i][3],
                   t[i][5] - t[i][4], t[i][2] - t[i][5]);
        printf("\n");
        if (prev) gaps += gap;
        works += t[i][2] - t[i][1];
        ++count;
        prev = t[i][2];
    }
    printf("kernels %d, sum of gaps %.1f us, sum of work %.1f us, total %.1f us\n", count, gaps / 1e3, works / 1e3,
           (prev - t0) / 1e3);
    check(cudaStreamDestroy(s), "stream");
}
int main() {
    using namespace ssm::models;
    const auto h1 = mamba_lm::random(bench::mamba_130m(), 7);
    run<device_mamba_lm<float>>("mamba fp32", h1);
    run<device_mamba_lm<ssm::bfloat16>>("mamba bf16", h1);
    const auto h2 = mamba2_lm::random(bench::mamba2_130m(), 7);
    run<device_mamba2_lm<float>>("mamba2 fp32", h2);
    run<device_mamba2_lm<ssm::bfloat16>>("mamba2 bf16", h2);
}
