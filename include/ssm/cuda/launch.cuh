#pragma once
// How device work is launched: the stream it runs on, checked CUDA calls, overlapped launches, and
// phases — dependent steps of work run as one kernel, separated by grid barriers.
#include <cuda/atomic>
#include <cuda_runtime.h>

#include <concepts>
#include <cstddef>

#include "../core/error.hpp"

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

// Overlapped launches (programmatic dependent launch, sm_90): a kernel started by launch_overlapped
// may begin while the kernel before it in the stream still runs, once every block of that one has
// called let_next_kernel_start (or ended), so that its launch and its weight loads hide behind the
// other's tail. Before wait_for_previous_kernel returns (when the earlier kernels have finished and
// their writes are visible) it may read only what no kernel writes, and write nothing. On other
// devices, and for kernels launched the usual way, both calls do nothing.
__device__ inline void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ inline void let_next_kernel_start() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
template <class... Params, class... Args>
void launch_overlapped(const char* what, void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes,
                       cudaStream_t stream, const Args&... args) {
    cudaLaunchAttribute overlap{};
    overlap.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    overlap.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config{};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = shared_bytes;
    config.stream = stream;
    config.attrs = &overlap;
    config.numAttrs = 1;
    check(cudaLaunchKernelEx(&config, kernel, args...), what);
}

// A phase: items() pieces of work, each done by one block of phase_threads threads with
// shared_bytes() of dynamic shared memory. prepare(item, shared) starts asynchronous copies of what no
// kernel writes (weights) and may run before the data it works on is ready; run(item, shared) waits
// for those copies and does the work.
inline constexpr int phase_threads = 128;

template <class P>
concept phase = std::copyable<P> && requires(const P& p, int item, unsigned char* shared) {
    { p.items() } -> std::convertible_to<int>;
    { p.shared_bytes() } -> std::convertible_to<std::size_t>;
    p.prepare(item, shared);
    p.run(item, shared);
};

// A barrier for every block of a grid whose blocks are all resident at once. Arrivals count up to the
// grid's size; the last one resets the count and advances the generation the others wait for, so the
// two words (zero at first) serve any number of barriers and launches. The release and acquire make
// every block's writes before the barrier visible to every block after it.
struct grid_barrier {
    unsigned* words = nullptr;  // arrivals, generation

    __device__ void sync() const {
        __syncthreads();
        if (threadIdx.x == 0) {
            ::cuda::atomic_ref<unsigned, ::cuda::thread_scope_device> arrived(words[0]), generation(words[1]);
            const unsigned seen = generation.load(::cuda::memory_order_relaxed);
            if (arrived.fetch_add(1, ::cuda::memory_order_acq_rel) == gridDim.x - 1) {
                arrived.store(0, ::cuda::memory_order_relaxed);
                generation.fetch_add(1, ::cuda::memory_order_release);
            } else {
                while (generation.load(::cuda::memory_order_acquire) == seen) {
                }
            }
        }
        __syncthreads();
    }
};

template <class P, class... Rest>
__device__ void prepare_first(unsigned char* shared, const P& p, const Rest&...) {
    if (int(blockIdx.x) < p.items()) p.prepare(int(blockIdx.x), shared);
}

// Each block takes items blockIdx.x, + gridDim.x, ... of each phase in turn (its first item of a phase
// prepared before the barrier that opens the phase).
template <class P, class... Rest>
__device__ void run_phases(grid_barrier barrier, unsigned char* shared, const P& p, const Rest&... rest) {
    for (int item = int(blockIdx.x); item < p.items(); item += int(gridDim.x)) {
        if (item != int(blockIdx.x)) {
            __syncthreads();  // the previous item's shared memory is free
            p.prepare(item, shared);
        }
        p.run(item, shared);
    }
    if constexpr (sizeof...(Rest) > 0) {
        __syncthreads();
        prepare_first(shared, rest...);
        barrier.sync();
        run_phases(barrier, shared, rest...);
    }
}

template <phase... Phases>
__global__ void __launch_bounds__(phase_threads, 2) phases_kernel(grid_barrier barrier, Phases... phases) {
    extern __shared__ __align__(16) unsigned char phase_shared[];
    prepare_first(phase_shared, phases...);
    let_next_kernel_start();
    wait_for_previous_kernel();
    run_phases(barrier, phase_shared, phases...);
}

// Dynamic and static shared memory beyond 48 KiB must be asked for; the phases' static arrays add up,
// so any dynamic amount is.
template <class Kernel>
void allow_shared_bytes(Kernel kernel, std::size_t bytes, const char* what) {
    if (bytes > 0) check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), what);
}

// Queues one phase as a kernel of p.items() blocks, launched overlapped.
template <phase P>
void launch_phase(const cuda_exec& exec, const char* what, const P& p) {
    if (p.items() == 0) return;
    const auto kernel = phases_kernel<P>;
    allow_shared_bytes(kernel, p.shared_bytes(), what);
    launch_overlapped(what, kernel, dim3(unsigned(p.items())), dim3(phase_threads), p.shared_bytes(), exec.stream,
                      grid_barrier{}, p);
}

// The grid of a multi-phase launch: `blocks` blocks resident at once (two a multiprocessor), each with
// at most `shared_bytes` of dynamic shared memory; phases are planned for it.
struct phase_grid {
    int blocks = 0;
    std::size_t shared_bytes = 0;
};
inline constexpr std::size_t phase_shared_bytes = 100 * 1024;

inline phase_grid resident_grid() {
    int device = 0, processors = 0;
    check(cudaGetDevice(&device), "phases: device");
    check(cudaDeviceGetAttribute(&processors, cudaDevAttrMultiProcessorCount, device), "phases: device attribute");
    return {2 * processors, phase_shared_bytes};
}

// Queues the phases in order as one kernel on grid.blocks blocks, launched overlapped; a phase starts
// when every block has finished the one before. `barrier` points to two unsigned words in device memory,
// zero before their first use, which no other work uses while this runs.
template <phase... Phases>
void launch_phases(const cuda_exec& exec, const char* what, const phase_grid& grid, unsigned* barrier,
                   const Phases&... phases) {
    std::size_t bytes = 0;
    ((bytes = std::max(bytes, phases.shared_bytes())), ...);
    detail::require(bytes <= grid.shared_bytes, what, ": phases need ", bytes,
                    " bytes of shared memory a block, the grid has ", grid.shared_bytes);
    const auto kernel = phases_kernel<Phases...>;
    allow_shared_bytes(kernel, bytes, what);
    // The barrier needs every block resident: a grid the device cannot hold at once is refused.
    int device = 0, processors = 0, per_processor = 0;
    check(cudaGetDevice(&device), what);
    check(cudaDeviceGetAttribute(&processors, cudaDevAttrMultiProcessorCount, device), what);
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_processor, kernel, phase_threads, bytes), what);
    detail::require(grid.blocks <= per_processor * processors, what, ": a grid of ", grid.blocks,
                    " blocks is not resident at once (", per_processor, " blocks a multiprocessor, ", processors,
                    " multiprocessors)");
    launch_overlapped(what, kernel, dim3(unsigned(grid.blocks)), dim3(phase_threads), bytes, exec.stream,
                      grid_barrier{barrier}, phases...);
}

}  // namespace cuda
}  // namespace ssm
