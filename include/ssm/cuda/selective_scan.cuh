#pragma once
// CUDA execution of the selective scan: the same policies and the same fused inner loop as the host
// (scan/segment.hpp), instantiated for the device. Views must point to device memory.
#include <cuda_runtime.h>

#include "../scan/host/strategies.hpp"
#include "../scan/problem.hpp"
#include "../scan/segment.hpp"

namespace ssm {

// Where device work runs: a CUDA stream (the default stream when null).
struct cuda_exec {
    cudaStream_t stream = nullptr;
};

namespace cuda {
// Throws ssm::error naming the operation when a CUDA call failed.
inline void check(cudaError_t status, const char* what) {
    detail::require(status == cudaSuccess, what, ": ", cudaGetErrorName(status), ": ", cudaGetErrorString(status));
}

// One thread per (batch, channel), sequential in time: the simplest device strategy, and the
// baseline the faster kernels are measured against.
template <class Ssm, class T>
__global__ void sequential_scan_kernel(Ssm model, scan_problem<T> p) {
    using V = typename Ssm::value_type;
    const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= p.shape.batch * p.shape.channels) return;
    const index_t b = i / p.shape.channels, d = i % p.shape.channels;
    V state[max_state][1];
    detail::load_initial_state<1>(p, b, d, state);
    detail::scan_segment<1>(model, p, b, d, 0, p.shape.length, state, nullptr, true);
    detail::store_final_state<1>(p, b, d, state);
}
}  // namespace cuda

// Runs the selective scan on the device, asynchronously on exec.stream; launch errors throw.
template <selective_ssm_type Ssm, storage_type T>
void selective_scan(const cuda_exec& exec, const sequential&, const Ssm& model, const scan_inputs<T>& in,
                    const scan_outputs<T>& out) {
    const auto problem = make_problem("selective_scan", model, in, out);
    const index_t threads = problem.shape.batch * problem.shape.channels;
    constexpr int block = 128;
    cuda::sequential_scan_kernel<<<unsigned((threads + block - 1) / block), block, 0, exec.stream>>>(model, problem);
    cuda::check(cudaGetLastError(), "selective_scan: kernel launch");
}

}  // namespace ssm
