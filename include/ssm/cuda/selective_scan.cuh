#pragma once
// CUDA execution of the selective scan: the same policies and the same fused inner loop as the host
// (scan/segment.hpp), instantiated for the device. Views must point to device memory.
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../scan/selective_scan.hpp"

namespace ssm {

// Where device work runs: a CUDA stream (the default stream when null).
struct cuda_exec {
    cudaStream_t stream = nullptr;
};

// Device strategy: time cut into chunks, one block a chunk and channel tile, chained by decoupled
// look-back within one kernel (cuda::look_back_kernel). Where the chunked strategy runs a summary
// pass over the whole input before any output, a look-back block rescans only its own short chunk
// (mostly from L2), and not at all once its predecessor has finished.
struct look_back {
    index_t chunk = 512;  // tokens per chunk
};

namespace cuda {
// Throws ssm::error naming the operation when a CUDA call failed.
inline void check(cudaError_t status, const char* what) {
    detail::require(status == cudaSuccess, what, ": ", cudaGetErrorName(status), ": ", cudaGetErrorString(status));
}

// An attribute of the current device (multiprocessors, shared-memory limits) for launch choices.
inline int device_attribute(cudaDeviceAttr attribute, const char* what) {
    int device = 0, value = 0;
    check(cudaGetDevice(&device), what);
    check(cudaDeviceGetAttribute(&value, attribute, device), what);
    return value;
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
    // All overlapped kernels ask for the same split of on-chip memory between L1 and shared memory (the
    // most shared memory): a multiprocessor changes its split only when idle, so blocks of kernels the
    // driver gave different splits cannot share it, and the overlap is lost (bf16 decoding 4-9% faster
    // with one split, docs/performance.md).
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared),
          what);
    check(cudaLaunchKernelEx(&config, kernel, args...), what);
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

// Chunked device scan. Each channel's N states are spread over `slices` threads (a power of two
// <= 32), S states per thread in registers; the slices' shares of y meet in shared memory. Time is
// cut into chunks handled by separate blocks. With one chunk this is a single
// pass. With several: a summary pass scans every chunk but the last from a zero state and records
// its end state and decay product, a carry pass chains them into each chunk's true starting state,
// and the output pass rescans every chunk from there, writing y.
// Where a chunked scan keeps values per (batch, channel, chunk, state), in that order.
struct chunk_layout {
    index_t chunks;  // chunks a sequence
    index_t chunk;   // tokens a chunk

    SSM_HOST_DEVICE index_t slot(const scan_shape& s, index_t b, index_t d, index_t k, index_t n) const {
        return ((b * s.channels + d) * chunks + k) * s.state + n;
    }
};

template <class V>
struct chunk_workspace : chunk_layout {
    V* start;  // state entering each chunk
    V* decay;  // product of Ā over the chunk before
};

// Geometry of one block of chunk_kernel: `channels` channels of one group, one batch row and one
// chunk, each channel's states spread over `slices` consecutive threads. Tokens pass through shared
// memory `tokens` at a time, so that global reads are coalesced across channels and a whole tile of
// them is in flight at once. `width` is the floats of B (or C) per token; in shared memory their
// rows are `row` floats, zero-padded to whole slices, so that the token loop reads without branches.
struct tile_shape {
    int slices, channels, tokens, width, row;
    template <class T>
    static constexpr int lanes = 1;  // channels of storage type T a loader thread moves with one access
    static constexpr int channels_per_thread = 1;
    // Blocks a multiprocessor holds (up to 168 registers a thread): at four (128 registers) the
    // kernels spill with a geometry known only at run time (0.65 instead of 0.51 ms at the Mamba-1
    // shape (8, 2048) when every tile was one, docs/performance.md).
    static constexpr int blocks_per_multiprocessor = 3;
    SSM_HOST_DEVICE int threads() const { return slices * channels; }
    SSM_HOST_DEVICE int partial_row() const { return partial_row_of(slices, channels); }
    SSM_HOST_DEVICE int floats() const { return floats_of(slices, channels, tokens, row); }

    // Floats between two slices' rows of C·h partial sums: ≡ 32 / slices (mod 32), so that the
    // slices of a warp's channels write, and a loader's channels read, distinct banks.
    SSM_HOST_DEVICE static constexpr int partial_row_of(int slices, int channels) {
        return channels + (32 / slices - channels % 32 + 32) % 32;
    }
    SSM_HOST_DEVICE static constexpr int floats_of(int slices, int channels, int tokens, int row) {
        return tokens * (3 * channels + 2 * row + slices * partial_row_of(slices, channels));
    }
};

// The same geometry fixed at compile time, for the shape most scans have (16 real states a channel,
// Mamba-1's): the tile loops then unroll completely, with constant offsets for indices and no
// branches on the geometry, which had cost more instructions than the state updates themselves.
// A thread holds its slice of `ChannelsPerThread` adjacent channels, whose updates share the token
// loop's shared-memory reads of B and C.
template <int Slices, int Channels, int Tokens, int Width, int Row, int ChannelsPerThread>
struct fixed_tile {
    static constexpr int slices = Slices, channels = Channels, tokens = Tokens, width = Width, row = Row;
    static constexpr int channels_per_thread = ChannelsPerThread;
    static constexpr int blocks_per_multiprocessor = 4;  // fits 128 registers a thread without spilling
    // A loader thread moves adjacent channels of a token with one access, where u, Δ, z and y allow
    // it (fixed_tile_accesses_fit): four floats in 16 bytes, two 16-bit values in 4 (held as words,
    // packed_lanes; four in 8 bytes were as fast at the long shapes, slower at (8, 2048)).
    template <class T>
    static constexpr int lanes = sizeof(T) == 4 ? 4 : 2;
    // Whether a problem's run-time geometry has this tile's states (host side only).
    static bool holds_states_of(const tile_shape& t) { return t.slices == Slices && t.width == Width && t.row == Row; }
    SSM_HOST_DEVICE static constexpr int threads() { return Slices * Channels / ChannelsPerThread; }
    SSM_HOST_DEVICE static constexpr int partial_row() { return tile_shape::partial_row_of(Slices, Channels); }
    SSM_HOST_DEVICE static constexpr int floats() { return tile_shape::floats_of(Slices, Channels, Tokens, Row); }
};
// 16 real states: a channel a thread, 32 channels a block; and two channels a thread, 64 a block,
// for grids with blocks to spare. Shared-memory reads bound the first (a 16-byte read costs a warp
// four cycles of the shared-memory pipe whatever its addresses, and a token's update of 4 states
// reads 10 floats); the second reads 12 floats for 8 updates, but has half the blocks.
using sixteen_real_states_tile = fixed_tile<4, 32, 32, 16, 16, 1>;
using sixteen_real_states_wide_tile = fixed_tile<4, 64, 16, 16, 16, 2>;

// Tile elements each thread carries from global memory into shared memory, per array.
inline constexpr int tile_loads = 8;
inline constexpr int block_threads = 128;

// What one block of a chunked scan computes: chunk k (tokens t0 .. t1) of the `valid` channels
// d0 .. d0 + valid - 1 (of group g) in batch row b.
struct chunk_block {
    index_t k, g, d0, b, t0, t1;
    int valid;
};

// The block at `position` among a chunk's blocks (groups x channel tiles, channel tiles fastest).
template <class Tile>
__device__ chunk_block locate(const scan_shape& shape, const Tile& tile, index_t chunk, index_t k, index_t position,
                              index_t b) {
    const index_t per_group = shape.channels / shape.groups;
    const index_t tiles_per_group = (per_group + tile.channels - 1) / tile.channels;
    const index_t g = position / tiles_per_group;
    const index_t first = position % tiles_per_group * tile.channels;
    const index_t t0 = k * chunk, t1 = t0 + chunk < shape.length ? t0 + chunk : shape.length;
    return {k, g, g * per_group + first, b, t0, t1,
            int(per_group - first < tile.channels ? per_group - first : tile.channels)};
}

// The states a thread of such a block holds: states s·S .. s·S + S - 1 of each of the block's
// channels c .. c + CT - 1, `count` in all, the i-th being state n(i) of channel c + i / S. Channels
// past the block's last hold none (holds() is false), and a thread without any computes nothing.
template <int S, int CT>
struct thread_states {
    static constexpr int count = S * CT;
    int c, s, valid;
    bool computes;
    index_t d0;
    template <class Tile>
    __device__ thread_states(const Tile& tile, const chunk_block& at)
        : c(int(threadIdx.x) / tile.slices * CT), s(int(threadIdx.x) % tile.slices), valid(at.valid),
          computes(c < at.valid), d0(at.d0) {}
    __device__ bool has_channel(int i) const { return c + i / S < valid; }
    __device__ index_t d(int i) const { return d0 + (has_channel(i) ? c + i / S : 0); }
    __device__ index_t n(int i) const { return index_t(s) * S + i % S; }
    __device__ bool holds(int i, const scan_shape& shape) const { return has_channel(i) && n(i) < shape.state; }
};
template <int S, class Tile>
using thread_states_of = thread_states<S, Tile::channels_per_thread>;

// N adjacent values moved with one access (of N·sizeof(T) bytes, aligned to that).
template <int N, class T>
struct alignas(N * sizeof(T)) lanes_of {
    T v[N];
};
template <int N, class T>
__device__ lanes_of<N, T> load_lanes(const T* from) {
    return *reinterpret_cast<const lanes_of<N, T>*>(from);
}

// N adjacent values of a 16-bit type T as they lie in memory, in 32-bit words, unpacked where they
// are used: loaded as a vector of 16-bit values, an access was split into its 16-bit registers on
// arrival, and the thread waited for its load right there.
template <int N, class T>
struct alignas(N * sizeof(T)) packed_lanes {
    std::uint32_t w[N * sizeof(T) / 4];
};
// 16-bit values are stored as packed_lanes words: stored as they are, their accesses were split into
// 16-bit stores.
template <int N, class T>
__device__ void store_lanes(T* to, const lanes_of<N, T>& values) {
    if constexpr (sizeof(T) == 2 && N % 2 == 0) {
        packed_lanes<N, T> words;
#pragma unroll
        for (int i = 0; i < N / 2; ++i)
            words.w[i] = std::uint32_t(values.v[2 * i].bits) | std::uint32_t(values.v[2 * i + 1].bits) << 16;
        *reinterpret_cast<packed_lanes<N, T>*>(to) = words;
    } else {
        *reinterpret_cast<lanes_of<N, T>*>(to) = values;
    }
}
template <int N, class T>
__device__ float lane_value(const lanes_of<N, T>& l, int i) {
    return to_float(l.v[i]);
}
template <int N, class T>
__device__ float lane_value(const packed_lanes<N, T>& l, int i) {
    return to_float(T{std::uint16_t(l.w[i / 2] >> (16 * (i % 2)))});
}
// How a thread holds N values of T between their load and their use.
template <int N, class T>
using held_lanes = std::conditional_t<sizeof(T) == 2 && N % 2 == 0, packed_lanes<N, T>, lanes_of<N, T>>;

// A thread's share of the next tile, held in registers while the current tile computes, `Lanes`
// channels of x, Δ and z an access. The values stay as they were loaded until staged: converting
// or unpacking them on arrival would make the thread wait for its loads before it computes the
// current tile.
template <class T, int Lanes>
struct tile_registers {
    using held = held_lanes<Lanes, T>;
    held x[tile_loads / Lanes], delta[tile_loads / Lanes], z[tile_loads / Lanes];
    T b[tile_loads], c[tile_loads];
};

// One pass of a block over its chunk, advancing the thread's states h. A summary pass reads only
// what the states need (x, Δ, B) and multiplies the decays into `product`; an output pass writes y.
// The caller synchronizes the block between two passes. Tile is a tile_shape or a fixed_tile.
template <int S, bool Summary, class Tile, class Ssm, class T>
__device__ void chunk_pass(const Ssm& model, const scan_problem<T>& p, const Tile& tile, const chunk_block& at,
                           typename Ssm::value_type (&h)[thread_states_of<S, Tile>::count],
                           typename Ssm::value_type (&product)[thread_states_of<S, Tile>::count]) {
    using V = typename Ssm::value_type;
    extern __shared__ float shared[];
    const int W = tile.channels, TT = tile.tokens, slices = tile.slices, threads = tile.threads();
    const int partial_row = tile.partial_row();
    float2* const dxs = reinterpret_cast<float2*>(shared);  // [token][channel]: Δ (after bias, softplus
                                                             // and modulation) and x
    float* const zs = shared + 2 * TT * W;                  // [token][channel]: gate
    float* const bs = zs + TT * W;                          // [token][state·components]
    float* const cs = bs + TT * tile.row;
    float* const partial = cs + TT * tile.row;  // [token][slice][partial_row]: C·h over a slice's states

    const index_t b = at.b, g = at.g, t0 = at.t0, t1 = at.t1;
    const int valid = at.valid;
    const auto& in = p.in;
    const bool gated = !Summary && in.z.data();

    // Loader role: thread `tid` loads (and later stores y of) the `lanes` channels load_channel ..
    // load_channel + lanes - 1 of tokens load_token + j·token_step, and the B and C tile elements
    // tid + j·threads (token e / width, column e % width). Addresses advance by pointer steps: index
    // arithmetic in 64 bits for every element had cost more instructions than the loads.
    constexpr int lanes = Tile::template lanes<T>;
    const int tid = threadIdx.x;
    const int load_channel = tid % (W / lanes) * lanes, load_token = tid / (W / lanes);
    const int token_step = threads * lanes / W, token_loads = tile_loads / lanes;
    if constexpr (lanes > 1)  // a fixed tile: its loader threads cover every token of a tile
        static_assert(Tile::channels % lanes == 0 &&
                      Tile::tokens <= tile_loads / lanes * (Tile::threads() * lanes / Tile::channels));
    const bool loads_channel = load_channel < valid;  // all of its lanes or none (fixed_tile_accesses_fit)
    const index_t load_d = at.d0 + (loads_channel ? load_channel : 0);
    float load_bias[lanes];
    index_t load_dc[lanes];
#pragma unroll
    for (int i = 0; i < lanes; ++i) {
        load_dc[i] = model.transition.delta_channel(load_d + i);
        load_bias[i] = in.delta_bias.data() ? in.delta_bias(load_dc[i]) : 0.0f;
    }
    const float scale = model.transition.output_scale();
    const T* const u_row = in.u.data() + b * in.u.stride(0) + load_d * in.u.stride(2);
    const T* const delta_row = in.delta.data() + b * in.delta.stride(0) + load_dc[0] * in.delta.stride(2);
    const T* const z_row = gated ? in.z.data() + b * in.z.stride(0) + load_d * in.z.stride(2) : nullptr;
    const T* const b_row = in.B.data() + b * in.B.stride(0) + g * in.B.stride(2);
    const T* const c_row = Summary ? nullptr : in.C.data() + b * in.C.stride(0) + g * in.C.stride(2);
    // B and C elements: the first one's (token, column), and the step between two of a thread's.
    const int first_token = tid / tile.width, first_col = tid % tile.width;
    const int step_tokens = threads / tile.width, step_cols = threads % tile.width;
    const int state_loads = (TT * tile.width + threads - 1) / threads;  // a constant for fixed tiles
    auto fetch = [&](index_t first, tile_registers<T, lanes>& r) {
        const int count = int(t1 - first < TT ? t1 - first : TT);
        const T* u = u_row + (first + load_token) * in.u.stride(1);
        const T* delta = delta_row + (first + load_token) * in.delta.stride(1);
        const T* z = gated ? z_row + (first + load_token) * in.z.stride(1) : nullptr;
        using held = typename tile_registers<T, lanes>::held;
#pragma unroll
        for (int j = 0; j < token_loads; ++j) {
            const bool ok = load_token + j * token_step < count && loads_channel;
            r.x[j] = ok ? *reinterpret_cast<const held*>(u) : held{};
            r.delta[j] = ok ? *reinterpret_cast<const held*>(delta) : held{};
            r.z[j] = ok && gated ? *reinterpret_cast<const held*>(z) : held{};
            u += token_step * in.u.stride(1);
            delta += token_step * in.delta.stride(1);
            z += gated ? token_step * in.z.stride(1) : 0;
        }
        int token = first_token, col = first_col;
        const T* bp = b_row + (first + token) * in.B.stride(1) + col * in.B.stride(3);
        const T* cp = Summary ? nullptr : c_row + (first + token) * in.C.stride(1) + col * in.C.stride(3);
#pragma unroll
        for (int j = 0; j < tile_loads && j < state_loads; ++j) {
            const bool ok = token < count;
            r.b[j] = ok ? *bp : T{};
            r.c[j] = ok && !Summary ? *cp : T{};
            token += step_tokens;
            col += step_cols;
            bp += step_tokens * in.B.stride(1) + step_cols * in.B.stride(3);
            if constexpr (!Summary) cp += step_tokens * in.C.stride(1) + step_cols * in.C.stride(3);
            if (step_cols != 0 && col >= tile.width) {
                col -= tile.width, ++token;
                bp += in.B.stride(1) - tile.width * in.B.stride(3);
                if constexpr (!Summary) cp += in.C.stride(1) - tile.width * in.C.stride(3);
            }
        }
    };
    auto stage = [&](const tile_registers<T, lanes>& r) {
#pragma unroll
        for (int j = 0; j < token_loads; ++j) {
            const int t = load_token + j * token_step;
            if (t >= TT) continue;
            lanes_of<lanes, float2> dx;
            lanes_of<lanes, float> gate;
#pragma unroll
            for (int i = 0; i < lanes; ++i) {
                float dt = lane_value(r.delta[j], i) + load_bias[i];
                dt = in.delta_softplus ? math::softplus(dt) : dt;
                dx.v[i] = {model.modulation.delta(dt, load_dc[i]), lane_value(r.x[j], i)};
                gate.v[i] = lane_value(r.z[j], i);
            }
            store_lanes(dxs + t * W + load_channel, dx);
            store_lanes(zs + t * W + load_channel, gate);
        }
        int token = first_token, col = first_col;
#pragma unroll
        for (int j = 0; j < tile_loads && j < state_loads; ++j) {
            if (token < TT) {
                bs[token * tile.row + col] = to_float(r.b[j]);
                cs[token * tile.row + col] = scale * to_float(r.c[j]);
            }
            token += step_tokens;
            col += step_cols;
            if (step_cols != 0 && col >= tile.width) col -= tile.width, ++token;
        }
    };
    // y = (scale·Σ_slices C·h + D·x)·SiLU(z) from the slices' partial sums of the tile, which hold the
    // scale (C is staged times it) and D·x (slice 0 adds it), so that the outputs read no x: its reads
    // here, eight-way bank conflicts, had been an eighth of the shared-memory traffic that bounds the
    // one-pass kernel (docs/performance.md).
    T* const y_row = p.out.y.data() + b * p.out.y.stride(0) + load_d * p.out.y.stride(2);
    auto store_outputs = [&](index_t first) {
        if (!loads_channel) return;
        const int count = int(t1 - first < TT ? t1 - first : TT);
        T* y = y_row + (first + load_token) * p.out.y.stride(1);
#pragma unroll
        for (int j = 0; j < token_loads; ++j, y += token_step * p.out.y.stride(1)) {
            const int t = load_token + j * token_step;
            if (t >= count) continue;
            const float* const sums = partial + t * slices * partial_row + load_channel;
            lanes_of<lanes, float> acc = load_lanes<lanes>(sums);
            for (int s = 1; s < slices; ++s) {
                const lanes_of<lanes, float> more = load_lanes<lanes>(sums + s * partial_row);
#pragma unroll
                for (int i = 0; i < lanes; ++i) acc.v[i] += more.v[i];
            }
            const lanes_of<lanes, float> gate = load_lanes<lanes>(zs + t * W + load_channel);
            lanes_of<lanes, T> out;
#pragma unroll
            for (int i = 0; i < lanes; ++i) {
                float value = acc.v[i];
                if (gated) value *= math::silu(gate.v[i]);
                out.v[i] = from_float<T>(value);
            }
            store_lanes(y, out);
        }
    };

    // Compute role: the thread's S states of each of its CT channels c .. c + CT - 1.
    constexpr int CT = Tile::channels_per_thread, count_states = thread_states_of<S, Tile>::count;
    const thread_states_of<S, Tile> mine(tile, at);
    const int c = mine.c, s = mine.s;
    constexpr int comps = components<V>;
    using Rule = typename Ssm::discretization_type;
    // Rules with a base-2 form take λ·log₂e, scaled here once instead of on every update.
    constexpr bool base2 = std::same_as<V, float> && base2_discretization<Rule> &&
                           !Ssm::structure_type::state_invariant_decay;
    V lambda[count_states];
#pragma unroll
    for (int i = 0; i < count_states; ++i) {
        lambda[i] = mine.holds(i, p.shape)
                        ? model.modulation.eigenvalue(model.transition.eigenvalue(mine.d(i), mine.n(i)),
                                                      model.transition.delta_channel(mine.d(i)))
                        : V{};
        if constexpr (base2) lambda[i] = lambda[i] * math::log2e;
    }
    // D of the thread's channels where it is slice 0 (see store_outputs), else 0.
    float skip[CT];
#pragma unroll
    for (int k = 0; k < CT; ++k)
        skip[k] = !Summary && s == 0 && mine.has_channel(k * S) && in.D.data() ? in.D(mine.d(k * S)) : 0.0f;
    // A thread's S states of a B or C row in float4 loads: rows are whole slices of S·comps floats
    // (a multiple of 4), and every array of the tile starts at a multiple of 4 floats.
    static_assert(S * comps % 4 == 0);
    auto load_states = [&](const float* row, float (&v)[S * comps]) {
        const float4* from = reinterpret_cast<const float4*>(row + s * S * comps);
#pragma unroll
        for (int i = 0; i < S * comps / 4; ++i) {
            const float4 q = from[i];
            v[4 * i] = q.x;
            v[4 * i + 1] = q.y;
            v[4 * i + 2] = q.z;
            v[4 * i + 3] = q.w;
        }
    };
    auto state_value = [](const float (&v)[S * comps], int j) -> V {
        if constexpr (std::same_as<V, cfloat>) return {v[2 * j], v[2 * j + 1]};
        else return v[j];
    };

    // The token loop carries only h from token to token: the reduction over slices, the skip and the
    // gate wait for the tile's end, so that the loads and exps of successive tokens overlap.
    // A summary pass of a base-2 rule multiplies its decays at the end, as 2^(λ·log₂e·ΣΔ): an exp a
    // state per pass instead of a multiply a state and token.
    float delta_sum[CT] = {};
    tile_registers<T, lanes> next;
    fetch(t0, next);
    for (int i = tid; i < TT * tile.row; i += threads) bs[i] = cs[i] = 0.0f;  // the padding stays 0
    for (index_t first = t0; first < t1; first += TT) {
        __syncthreads();  // the previous tile's outputs are stored: its buffers may be overwritten
        stage(next);
        __syncthreads();
        if (first + TT < t1) fetch(first + TT, next);  // in flight while this tile computes
        const int count = int(t1 - first < TT ? t1 - first : TT);
        // Tokens in groups of `group` whose partial sums are stored after the group: a store between
        // tokens would keep the next token's shared-memory loads from being issued early.
        constexpr int group = 8;
        // (input·x)·B, so that an input that does not depend on the state (Δ in Mamba's rule) is
        // multiplied by x once a token. Returns each channel's C·h over the thread's states.
        auto advance = [&](int t) {
            const lanes_of<CT, float2> dx = load_lanes<CT>(dxs + t * W + c);
            float bv[S * comps], cv[S * comps];
            load_states(bs + t * tile.row, bv);
            if constexpr (!Summary) load_states(cs + t * tile.row, cv);
            lanes_of<CT, float> acc;
#pragma unroll
            for (int k = 0; k < CT; ++k) {
                const float dt = dx.v[k].x, x = dx.v[k].y;
                acc.v[k] = skip[k] * x;
                discretized<V> shared_q{};
                if constexpr (Ssm::structure_type::state_invariant_decay) shared_q = Rule::apply(lambda[k * S], dt);
                if constexpr (Summary && base2) delta_sum[k] += dt;
#pragma unroll
                for (int j = 0; j < S; ++j) {
                    const int i = k * S + j;
                    discretized<V> q;
                    if constexpr (base2) q = Rule::apply_base2(lambda[i], dt);
                    else q = ssm::detail::discretize<Ssm>(shared_q, lambda[i], dt);
                    h[i] = q.decay * h[i] + q.input * x * state_value(bv, j);
                    if constexpr (Summary && !base2) product[i] = product[i] * q.decay;
                    else acc.v[k] += ssm::detail::real_product(state_value(cv, j), h[i]);
                }
            }
            return acc;
        };
        float* const my_partial = partial + s * partial_row + c;
        const int computed = mine.computes ? count : 0;
        int t = 0;
        for (; t + group <= computed; t += group) {
            lanes_of<CT, float> acc[group];
#pragma unroll
            for (int i = 0; i < group; ++i) acc[i] = advance(t + i);
            if constexpr (!Summary)
#pragma unroll
                for (int i = 0; i < group; ++i) store_lanes(my_partial + (t + i) * slices * partial_row, acc[i]);
        }
        for (; t < computed; ++t) {
            const lanes_of<CT, float> acc = advance(t);
            if constexpr (!Summary) store_lanes(my_partial + t * slices * partial_row, acc);
        }
        if constexpr (!Summary) {
            __syncthreads();
            store_outputs(first);
        }
    }
    if constexpr (Summary && base2)
#pragma unroll
        for (int i = 0; i < count_states; ++i) product[i] = product[i] * math::exp2(lambda[i] * delta_sum[i / S]);
}

// The thread's states at the start of the sequence: the initial state, or zeros.
template <int S, int CT, class V, class T>
__device__ void load_initial_states(const scan_problem<T>& p, const chunk_block& at,
                                    const thread_states<S, CT>& mine, V (&h)[S * CT]) {
#pragma unroll
    for (int i = 0; i < S * CT; ++i)
        h[i] = mine.holds(i, p.shape) && p.in.initial_state.data()
                   ? detail::state_element<V>(p.in.initial_state, at.b, mine.d(i), mine.n(i))
                   : V{};
}

template <int S, int CT, class V, class T>
__device__ void store_final_states(const scan_problem<T>& p, const chunk_block& at, const thread_states<S, CT>& mine,
                                   const V (&h)[S * CT]) {
    if (!p.out.final_state.data()) return;
#pragma unroll
    for (int i = 0; i < S * CT; ++i)
        if (mine.holds(i, p.shape))
            detail::store_state_element(p.out.final_state, at.b, mine.d(i), mine.n(i), h[i]);
}

// Blocks: (chunk, group, channel tile) flattened over x, the batch row over y.
template <int S, bool Summary, class Tile, class Ssm, class T>
__global__ void __launch_bounds__(block_threads, Tile::blocks_per_multiprocessor)
chunk_kernel(Ssm model, scan_problem<T> p, Tile tile, chunk_workspace<typename Ssm::value_type> w) {
    using V = typename Ssm::value_type;
    const index_t per_chunk = index_t(gridDim.x) / w.chunks;
    const chunk_block at = locate(p.shape, tile, w.chunk, blockIdx.x / per_chunk, blockIdx.x % per_chunk, blockIdx.y);
    if (Summary && at.k + 1 == w.chunks) return;
    const thread_states_of<S, Tile> mine(tile, at);
    constexpr int count = thread_states_of<S, Tile>::count;
    V h[count], product[count];
#pragma unroll
    for (int i = 0; i < count; ++i) {
        product[i] = ssm::detail::lift<V>(1.0f);
        h[i] = V{};
    }
    if (at.k == 0) load_initial_states(p, at, mine, h);
    else if (!Summary)
#pragma unroll
        for (int i = 0; i < count; ++i)
            if (mine.holds(i, p.shape)) h[i] = w.start[w.slot(p.shape, at.b, mine.d(i), at.k, mine.n(i))];
    chunk_pass<S, Summary>(model, p, tile, at, h, product);
    if constexpr (Summary) {
#pragma unroll
        for (int i = 0; i < count; ++i) {
            if (!mine.holds(i, p.shape)) continue;
            w.start[w.slot(p.shape, at.b, mine.d(i), at.k + 1, mine.n(i))] = h[i];
            w.decay[w.slot(p.shape, at.b, mine.d(i), at.k + 1, mine.n(i))] = product[i];
        }
    } else if (at.k + 1 == w.chunks) {
        store_final_states(p, at, mine, h);
    }
}

// start[k] = decay[k] · start[k-1] + start[k] for k >= 2, one thread per (batch, channel, state).
template <class V>
__global__ void chunk_carry_kernel(scan_shape shape, chunk_workspace<V> w) {
    const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= shape.batch * shape.channels * shape.state) return;
    const index_t n = i % shape.state, d = i / shape.state % shape.channels, b = i / shape.state / shape.channels;
    for (index_t k = 2; k < w.chunks; ++k) {
        const index_t here = w.slot(shape, b, d, k, n);
        w.start[here] = w.decay[here] * w.start[w.slot(shape, b, d, k - 1, n)] + w.start[here];
    }
}

// A value another block published, read from L2 (L1 is not coherent between multiprocessors).
template <class V>
__device__ V load_past_l1(const V* from) {
    if constexpr (std::same_as<V, cfloat>) return {__ldcg(&from->re), __ldcg(&from->im)};
    else return __ldcg(from);
}

// Look-back scan: one kernel, blocks as in chunk_kernel. What each chunk publishes for its
// successors, per (batch, channel, chunk, state), and how far it has got.
enum chunk_status : unsigned { chunk_pending = 0, chunk_aggregate = 1, chunk_inclusive = 2 };
template <class V>
struct look_back_workspace : chunk_layout {
    V* aggregate;       // the chunk's end state from a zero start
    V* decay;           // the product of Ā over the chunk
    V* inclusive;       // the chunk's true end state
    unsigned* status;   // [batch][chunk][position]: a chunk_status a block
    unsigned* ticket;   // blocks started so far: the order in which blocks take their work
};

// Single-pass chunked scan with decoupled look-back. Blocks take their chunk in the order they start
// (a ticket), every chunk's blocks before the next chunk's, so a block waits only for blocks already
// running. A block whose predecessor chunk has finished (its inclusive state published) scans its
// chunk once from that state. Otherwise it scans its chunk from zero, publishes that aggregate (end
// state and decay product), and looks back over the predecessors' aggregates until it meets an
// inclusive state; it then publishes its own inclusive state and rescans its chunk from its true
// start, writing y (the second read of a short chunk comes mostly from L2).
template <int S, class Tile, class Ssm, class T>
__global__ void __launch_bounds__(block_threads, Tile::blocks_per_multiprocessor)
look_back_kernel(Ssm model, scan_problem<T> p, Tile tile, look_back_workspace<typename Ssm::value_type> w) {
    using V = typename Ssm::value_type;
    __shared__ unsigned ticket, seen;
    if (threadIdx.x == 0) ticket = atomicAdd(w.ticket, 1u);
    __syncthreads();
    const index_t per_chunk = index_t(gridDim.x) / (w.chunks * p.shape.batch);
    const index_t k = ticket / (per_chunk * p.shape.batch), rest = ticket % (per_chunk * p.shape.batch);
    const chunk_block at = locate(p.shape, tile, w.chunk, k, rest % per_chunk, rest / per_chunk);
    const thread_states_of<S, Tile> mine(tile, at);
    constexpr int count = thread_states_of<S, Tile>::count;
    const auto status = [&](index_t chunk) -> volatile unsigned& {
        return w.status[(at.b * w.chunks + chunk) * per_chunk + rest % per_chunk];
    };
    const auto slot = [&](index_t chunk, int i) { return w.slot(p.shape, at.b, mine.d(i), chunk, mine.n(i)); };
    // Thread 0 sets a status once every thread's stores before the call are visible device-wide.
    const auto publish = [&](chunk_status value) {
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) status(k) = value;
    };
    // The block's view of a predecessor's status, waiting while it is pending; what it published
    // is then visible (read it past L1, which is not coherent).
    const auto wait_for = [&](index_t chunk) {
        __syncthreads();  // every thread has read the last status seen
        if (threadIdx.x == 0) {
            unsigned s;
            while ((s = status(chunk)) == chunk_pending) __nanosleep(64);
            __threadfence();
            seen = s;
        }
        __syncthreads();
        return chunk_status(seen);
    };

    V h[count], product[count];
#pragma unroll
    for (int i = 0; i < count; ++i) {
        product[i] = ssm::detail::lift<V>(1.0f);
        h[i] = V{};
    }
    bool published = false;
    if (k == 0) {
        load_initial_states(p, at, mine, h);
    } else {
        if (threadIdx.x == 0) seen = status(k - 1);
        __syncthreads();
        // A summary pass unless the predecessor has finished, or no successor needs the aggregate.
        const bool summary = seen != chunk_inclusive && k + 1 != w.chunks;
        if (summary) {
            chunk_pass<S, true>(model, p, tile, at, h, product);
#pragma unroll
            for (int i = 0; i < count; ++i) {
                if (!mine.holds(i, p.shape)) continue;
                w.aggregate[slot(k, i)] = h[i];
                w.decay[slot(k, i)] = product[i];
            }
            publish(chunk_aggregate);
        }
        // start = agg[k-1] + decay[k-1]·(agg[k-2] + decay[k-2]·(… + decay[j+1]·inclusive[j])).
        V start[count], carried[count];
#pragma unroll
        for (int i = 0; i < count; ++i) {
            start[i] = V{};
            carried[i] = ssm::detail::lift<V>(1.0f);
        }
        for (index_t before = k - 1;; --before) {
            const chunk_status s = wait_for(before);
#pragma unroll
            for (int i = 0; i < count; ++i) {
                if (!mine.holds(i, p.shape)) continue;
                if (s == chunk_inclusive) {
                    start[i] = start[i] + carried[i] * load_past_l1(&w.inclusive[slot(before, i)]);
                } else {
                    start[i] = start[i] + carried[i] * load_past_l1(&w.aggregate[slot(before, i)]);
                    carried[i] = carried[i] * load_past_l1(&w.decay[slot(before, i)]);
                }
            }
            if (s == chunk_inclusive) break;
        }
        if (summary) {
#pragma unroll
            for (int i = 0; i < count; ++i)
                if (mine.holds(i, p.shape)) w.inclusive[slot(k, i)] = h[i] + product[i] * start[i];
            publish(chunk_inclusive);
            published = true;
        }
#pragma unroll
        for (int i = 0; i < count; ++i) h[i] = start[i];
        __syncthreads();  // the summary pass's tile buffers are free
    }
    chunk_pass<S, false>(model, p, tile, at, h, product);
    if (k + 1 == w.chunks) {
        store_final_states(p, at, mine, h);
    } else if (!published) {
#pragma unroll
        for (int i = 0; i < count; ++i)
            if (mine.holds(i, p.shape)) w.inclusive[slot(k, i)] = h[i];
        publish(chunk_inclusive);
    }
}

// A decoding step's input for one channel: x (= u) and Δ after bias and softplus, before modulation.
struct token_input {
    float x, delta;
};

// Brings the 128-byte line at p into L2 ahead of a load: a hint, safe at any time (L2 is where every
// multiprocessor sees memory, so nothing stale can be read through it).
__device__ inline void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// prefetch_l2 for the 128-byte lines of `rows` rows of `bytes` bytes each (row r at first + r·stride
// bytes), the block's threads taking a line each.
__device__ inline void prefetch_rows_l2(const void* first, int rows, index_t stride, int bytes) {
    const int lines = bytes / 128 + 2;  // a row not aligned to a line touches one more
    for (int i = int(threadIdx.x); i < rows * lines; i += int(blockDim.x)) {
        const char* const row = static_cast<const char*>(first) + (i / lines) * stride;
        const char* const line = row + (i % lines) * 128 - reinterpret_cast<std::uintptr_t>(row) % 128;
        if (line < row + bytes) prefetch_l2(line);
    }
}

// A token policy of step_kernel: token(b, d, dc, lane, lanes, active) gives a channel's x and Δ;
// prefetch(d, lane, lanes) is called before the previous kernel has finished, to start the loads of
// what no kernel writes; with `constant_parameters` the model's parameters (A and its modulation) are
// such data too (a model's weights) and are read then; else (a caller's tensors, which the previous
// kernel may have written) after it has finished.
//
// The step's token inputs as the problem holds them: u, and Δ with its bias and softplus.
template <class T>
struct problem_token {
    static constexpr bool constant_parameters = false;
    scan_problem<T> p;
    __device__ void prefetch(index_t, int, int) const {}
    __device__ token_input operator()(index_t b, index_t d, index_t dc, int, int, bool) const {
        float dt = to_float(p.in.delta(b, 0, dc)) + (p.in.delta_bias.data() ? p.in.delta_bias(dc) : 0.0f);
        return {to_float(p.in.u(b, 0, d)), p.in.delta_softplus ? math::softplus(dt) : dt};
    }
};

// 16 bytes holding 16 / sizeof(T) values of the storage type T (one 16-byte load), as floats.
template <class T>
__device__ inline void unpack(const uint4& raw, float (&to)[16 / sizeof(T)]) {
    const unsigned words[4] = {raw.x, raw.y, raw.z, raw.w};
    if constexpr (std::same_as<T, float>) {
#pragma unroll
        for (int k = 0; k < 4; ++k) to[k] = __uint_as_float(words[k]);
    } else if constexpr (std::same_as<T, bfloat16>) {  // two a word, the lower half first
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            to[2 * k] = __uint_as_float(words[k] << 16);
            to[2 * k + 1] = __uint_as_float(words[k] & 0xffff0000u);
        }
    } else {
        T values[16 / sizeof(T)];
        memcpy(values, words, sizeof words);
#pragma unroll
        for (int j = 0; j < int(16 / sizeof(T)); ++j) to[j] = to_float(values[j]);
    }
}

// Sum over the `lanes` lanes (a power of two <= 32) that share a channel; every lane gets the sum.
__device__ inline float lanes_sum(float v, int lanes) {
    for (int offset = lanes / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset, lanes);
    return v;
}

// A channel's decoding step for kernels that do more after it (step_product_kernel; step_kernel keeps
// its own copy of these lines: Mamba-2 decoded up to 4% slower on this class), served by `lanes`
// consecutive threads of a warp (a power of two <= 32), S states each, so that its state is read and
// written in whole lines. Construct it before the previous kernel has finished (it starts the loads
// of constants), call advance after: every thread loads all its states (and B, C) before it writes
// any, so the initial and final state may be the same memory and a step waits for one round trip, not
// one a state. `token` (see problem_token) gives the channel's x and Δ. Every thread of the warp takes
// part, inactive ones (past the last channel, with b = d = 0) too, and then writes nothing.
template <int S, class Ssm, class T, class Token>
class channel_step {
    using V = typename Ssm::value_type;
    static constexpr int components = std::same_as<V, cfloat> ? 2 : 1;

public:
    __device__ channel_step(const Ssm& model, const scan_problem<T>& p, const Token& token, index_t b, index_t d,
                            int lane, int lanes, bool active)
        : model_(model), p_(p), token_(token), b_(b), d_(d), dc_(model.transition.delta_channel(d)),
          g_(d / (p.shape.channels / p.shape.groups)), first_(index_t(lane) * S), lane_(lane), lanes_(lanes),
          active_(active) {
        if (here(0) && p.in.initial_state.data()) prefetch_l2(&p.in.initial_state(b, d, components * first_));
        token.prefetch(d, lane, lanes);
        if constexpr (Token::constant_parameters) eigenvalues();
    }

    // The state advanced (and written to the final state); returns this lane's share of C·h.
    __device__ float advance() {
        if constexpr (!Token::constant_parameters) eigenvalues();
        const auto& start = p_.in.initial_state;
        const auto& end = p_.out.final_state;
        V h[S], bv[S], cv[S];
#pragma unroll
        for (int j = 0; j < S; ++j) {
            if (!here(j)) continue;
            const index_t n = first_ + j;
            h[j] = V{};
            if (start.data()) {
                if constexpr (components == 2) h[j] = {start(b_, d_, 2 * n), start(b_, d_, 2 * n + 1)};
                else h[j] = start(b_, d_, n);
            }
            bv[j] = detail::load_value<V>(p_.in.B, b_, 0, g_, n);
            cv[j] = detail::load_value<V>(p_.in.C, b_, 0, g_, n);
        }
        in_ = token_(b_, d_, dc_, lane_, lanes_, active_);
        const float dt = model_.modulation.delta(in_.delta, dc_);
        float acc = 0.0f;
        discretized<V> shared_q{};
#pragma unroll
        for (int j = 0; j < S; ++j) {
            if (!here(j)) continue;
            if constexpr (Ssm::structure_type::state_invariant_decay)
                if (j == 0) shared_q = Ssm::discretization_type::apply(lambda_[0], dt);
            const auto q = detail::discretize<Ssm>(shared_q, lambda_[j], dt);
            h[j] = q.decay * h[j] + q.input * bv[j] * in_.x;
            acc += detail::real_product(cv[j], h[j]);
        }
        if (end.data()) {
#pragma unroll
            for (int j = 0; j < S; ++j) {
                if (!here(j)) continue;
                const index_t n = first_ + j;
                if constexpr (components == 2) {
                    end(b_, d_, 2 * n) = h[j].re;
                    end(b_, d_, 2 * n + 1) = h[j].im;
                } else {
                    end(b_, d_, n) = h[j];
                }
            }
        }
        return acc;
    }

    // The channel's output from the lanes' summed shares of C·h (after advance).
    __device__ float output(float ch) const {
        float out = model_.transition.output_scale() * ch + (p_.in.D.data() ? p_.in.D(d_) : 0.0f) * in_.x;
        if (p_.in.z.data()) out *= math::silu(to_float(p_.in.z(b_, 0, d_)));
        return out;
    }

private:
    __device__ bool here(int j) const { return active_ && first_ + j < p_.shape.state; }
    __device__ void eigenvalues() {
#pragma unroll
        for (int j = 0; j < S; ++j)
            if (here(j)) lambda_[j] = model_.modulation.eigenvalue(model_.transition.eigenvalue(d_, first_ + j), dc_);
    }

    const Ssm& model_;
    const scan_problem<T>& p_;
    const Token& token_;
    index_t b_, d_, dc_, g_, first_;
    int lane_, lanes_;
    bool active_;
    V lambda_[S];
    token_input in_{};
};

// One decoding step (length-1 problems): each (batch, channel) is served by `lanes` consecutive threads
// of a warp (a power of two <= 32), S states each, so that its state is read and written in whole
// lines; the lanes' shares of C·h meet by shuffles. Every thread loads all its states (and B, C)
// before it writes any, so the initial and final state may be the same memory and a step waits for
// one round trip, not one a state. `token` (see problem_token) gives the channel's x and Δ (read from
// the problem, or computed by a model's fused decoding kernel). Blocks are whole warps; every thread
// calls `token` and joins the shuffles, inactive ones (past the last channel, with b = d = 0) too, and
// must then write nothing.
template <int S, class Ssm, class T, class Token>
__global__ void step_kernel(Ssm model, scan_problem<T> p, int lanes, Token token) {
    using V = typename Ssm::value_type;
    constexpr int components = std::same_as<V, cfloat> ? 2 : 1;
    const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
    const index_t slot = i / lanes;
    const int lane = int(i % lanes);
    const index_t channels = p.shape.channels, first = index_t(lane) * S;
    const bool active = slot < p.shape.batch * channels;
    const index_t b = active ? slot / channels : 0, d = active ? slot % channels : 0;
    const index_t g = d / (channels / p.shape.groups);
    const index_t dc = model.transition.delta_channel(d);
    const auto& start = p.in.initial_state;
    const auto& end = p.out.final_state;
    const auto here = [&](int j) { return active && first + j < p.shape.state; };
    // Before the previous kernel has finished: the state's line into L2, the token's constants, and
    // the eigenvalues when they are constants.
    if (here(0) && start.data()) prefetch_l2(&start(b, d, components * first));
    token.prefetch(d, lane, lanes);
    V lambda[S];
    const auto eigenvalues = [&] {
#pragma unroll
        for (int j = 0; j < S; ++j)
            if (here(j)) lambda[j] = model.modulation.eigenvalue(model.transition.eigenvalue(d, first + j), dc);
    };
    if constexpr (Token::constant_parameters) eigenvalues();
    wait_for_previous_kernel();
    if constexpr (!Token::constant_parameters) eigenvalues();
    V h[S], bv[S], cv[S];
#pragma unroll
    for (int j = 0; j < S; ++j) {
        if (!here(j)) continue;
        const index_t n = first + j;
        h[j] = V{};
        if (start.data()) {
            if constexpr (components == 2) h[j] = {start(b, d, 2 * n), start(b, d, 2 * n + 1)};
            else h[j] = start(b, d, n);
        }
        bv[j] = detail::load_value<V>(p.in.B, b, 0, g, n);
        cv[j] = detail::load_value<V>(p.in.C, b, 0, g, n);
    }
    const token_input in = token(b, d, dc, lane, lanes, active);
    const float dt = model.modulation.delta(in.delta, dc);
    float acc = 0.0f;
    discretized<V> shared_q{};
#pragma unroll
    for (int j = 0; j < S; ++j) {
        if (!here(j)) continue;
        if constexpr (Ssm::structure_type::state_invariant_decay)
            if (j == 0) shared_q = Ssm::discretization_type::apply(lambda[0], dt);
        const auto q = detail::discretize<Ssm>(shared_q, lambda[j], dt);
        h[j] = q.decay * h[j] + q.input * bv[j] * in.x;
        acc += detail::real_product(cv[j], h[j]);
    }
    if (end.data()) {
#pragma unroll
        for (int j = 0; j < S; ++j) {
            if (!here(j)) continue;
            const index_t n = first + j;
            if constexpr (components == 2) {
                end(b, d, 2 * n) = h[j].re;
                end(b, d, 2 * n + 1) = h[j].im;
            } else {
                end(b, d, n) = h[j];
            }
        }
    }
    let_next_kernel_start();
    acc = lanes_sum(acc, lanes);
    if (!active || lane != 0) return;
    float out = model.transition.output_scale() * acc + (p.in.D.data() ? p.in.D(d) : 0.0f) * in.x;
    if (p.in.z.data()) out *= math::silu(to_float(p.in.z(b, 0, d)));
    p.out.y(b, 0, d) = from_float<T>(out);
}

inline unsigned blocks_for(index_t threads, int block) { return unsigned((threads + block - 1) / block); }

// The block geometry for a problem: up to 32 channels a block (block_threads threads), and as many
// tokens a tile as keep each thread's share of a tile within tile_loads elements per array.
template <int S>
tile_shape tile_for(const scan_shape& shape) {
    tile_shape tile{1, 0, 0, int(shape.state * shape.components), 0};
    while (tile.slices * S < shape.state) tile.slices *= 2;
    tile.row = int(tile.slices * S * shape.components);
    tile.channels = block_threads / tile.slices < 32 ? block_threads / tile.slices : 32;
    tile.tokens = 32;
    while (tile.tokens > tile_loads * tile.slices || tile.tokens * tile.width > tile_loads * tile.threads())
        tile.tokens /= 2;
    return tile;
}

// Whether the fixed tile's loader accesses fit the problem: always with one channel an access (16-bit
// types); with several (float), where u, Δ, z and y hold every `lanes` adjacent channels of a group in
// one aligned access, as a model's contiguous activations do: channels contiguous, Δ one a channel, a
// group's channels a multiple of `lanes`, every row starting aligned.
template <class T>
bool fixed_tile_accesses_fit(const scan_problem<T>& p) {
    constexpr int lanes = sixteen_real_states_tile::lanes<T>;
    const auto aligned = [](const auto& view) {
        if (!view.data()) return true;
        return view.stride(2) == 1 && view.stride(0) % lanes == 0 && view.stride(1) % lanes == 0 &&
               reinterpret_cast<std::uintptr_t>(view.data()) % (lanes * sizeof(T)) == 0;
    };
    return lanes == 1 ||
           (p.shape.channels / p.shape.groups % lanes == 0 && p.in.delta.extent(2) == p.shape.channels &&
            aligned(p.in.u) && aligned(p.in.delta) && aligned(p.in.z) && aligned(p.out.y));
}

// Blocks of `channels` channels that cover every group's channels: the blocks of one chunk of a row.
inline index_t channel_tiles(const scan_shape& shape, int channels) {
    const index_t per_group = shape.channels / shape.groups;
    return shape.groups * ((per_group + channels - 1) / channels);
}

// Calls launch(tile, grid_blocks, shared_bytes) with the problem's tile geometry, as a fixed_tile
// where it is the common one (real states, 16 a channel) and its accesses fit (`accesses_fit`, as
// fixed_tile_accesses_fit): the wide one where `wide`. grid_blocks counts the blocks a chunk needs
// (channel tiles of every group). Kernels needing more than the default 48 KB of shared memory ask
// for it.
template <int S, class V, class Kernels, class Launch>
void with_tile(const scan_shape& shape, bool accesses_fit, bool wide, Kernels kernels, Launch launch) {
    const auto run = [&](auto tile) {
        const auto bytes = std::size_t(tile.floats()) * sizeof(float);
        if (bytes > 48 * 1024)
            for (const void* kernel : kernels(tile))
                check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
                      "selective_scan: shared memory of the tile");
        launch(tile, channel_tiles(shape, tile.channels), bytes);
    };
    const tile_shape tile = tile_for<S>(shape);
    if constexpr (S == 4 && std::same_as<V, float>)
        if (accesses_fit && sixteen_real_states_tile::holds_states_of(tile))
            return wide ? run(sixteen_real_states_wide_tile{}) : run(sixteen_real_states_tile{});
    run(tile);
}

template <int S, class Ssm, class T>
void run_chunked_with(const cuda_exec& exec, const chunked& strategy, const Ssm& model, const scan_problem<T>& p) {
    using V = typename Ssm::value_type;
    chunk_workspace<V> w{{(p.shape.length + strategy.chunk - 1) / strategy.chunk, strategy.chunk}, nullptr, nullptr};
    const auto kernels = [](auto tile) {
        using Tile = decltype(tile);
        return std::array<const void*, 2>{reinterpret_cast<const void*>(chunk_kernel<S, true, Tile, Ssm, T>),
                                          reinterpret_cast<const void*>(chunk_kernel<S, false, Tile, Ssm, T>)};
    };
    // The wide tile wherever there are several chunks: each pass then has blocks to spare (measured:
    // docs/performance.md, "Two channels a thread").
    const bool accesses_fit = fixed_tile_accesses_fit(p), wide = w.chunks > 1;
    with_tile<S, V>(p.shape, accesses_fit, wide, kernels, [&](auto tile, index_t per_chunk, std::size_t shared_bytes) {
        using Tile = decltype(tile);
        const index_t blocks = w.chunks * per_chunk;
        detail::require(blocks < (index_t(1) << 31) && p.shape.batch <= 65535, "selective_scan: ", p.shape.batch,
                        " batch rows of ", blocks,
                        " blocks exceed the CUDA grid; use longer chunks or smaller batches");
        const dim3 grid(unsigned(blocks), unsigned(p.shape.batch));
        if (w.chunks > 1) {
            const auto bytes = std::size_t(p.shape.batch * p.shape.channels * w.chunks * p.shape.state) * sizeof(V);
            check(cudaMallocAsync(&w.start, 2 * bytes, exec.stream), "selective_scan: chunk workspace");
            w.decay = w.start + bytes / sizeof(V);
            chunk_kernel<S, true, Tile><<<grid, tile.threads(), shared_bytes, exec.stream>>>(model, p, tile, w);
            check(cudaGetLastError(), "selective_scan: chunk summary launch");
            constexpr int block = 256;
            chunk_carry_kernel<<<blocks_for(p.shape.batch * p.shape.channels * p.shape.state, block), block, 0,
                                 exec.stream>>>(p.shape, w);
            check(cudaGetLastError(), "selective_scan: chunk carry launch");
        }
        chunk_kernel<S, false, Tile><<<grid, tile.threads(), shared_bytes, exec.stream>>>(model, p, tile, w);
        check(cudaGetLastError(), "selective_scan: chunk output launch");
        if (w.start) check(cudaFreeAsync(w.start, exec.stream), "selective_scan: chunk workspace");
    });
}

template <int S, class Ssm, class T>
void run_look_back_with(const cuda_exec& exec, const look_back& strategy, const Ssm& model,
                        const scan_problem<T>& p) {
    using V = typename Ssm::value_type;
    const index_t chunks = (p.shape.length + strategy.chunk - 1) / strategy.chunk;
    const auto kernels = [](auto tile) {
        return std::array<const void*, 1>{reinterpret_cast<const void*>(look_back_kernel<S, decltype(tile), Ssm, T>)};
    };
    // The wide tile where its blocks fill the device four times over: with fewer, chains of chunks
    // whose blocks wait on their predecessors leave it idle (docs/performance.md, "Two channels a thread").
    using wide_tile = sixteen_real_states_wide_tile;
    const bool accesses_fit = fixed_tile_accesses_fit(p),
               wide = chunks * p.shape.batch * channel_tiles(p.shape, wide_tile::channels) >=
                      index_t(4) * wide_tile::blocks_per_multiprocessor *
                          device_attribute(cudaDevAttrMultiProcessorCount, "selective_scan: multiprocessors");
    with_tile<S, V>(p.shape, accesses_fit, wide, kernels, [&](auto tile, index_t per_chunk, std::size_t shared_bytes) {
        const index_t blocks = chunks * per_chunk * p.shape.batch;
        detail::require(blocks < (index_t(1) << 31), "selective_scan: ", blocks,
                        " blocks exceed the CUDA grid; use longer chunks or smaller batches");
        look_back_workspace<V> w{{chunks, strategy.chunk}, nullptr, nullptr, nullptr, nullptr, nullptr};
        const auto states = std::size_t(p.shape.batch * p.shape.channels * chunks * p.shape.state);
        const auto flags = std::size_t(blocks + 1);
        check(cudaMallocAsync(&w.aggregate, 3 * states * sizeof(V) + flags * sizeof(unsigned), exec.stream),
              "selective_scan: look-back workspace");
        w.decay = w.aggregate + states;
        w.inclusive = w.decay + states;
        w.status = reinterpret_cast<unsigned*>(w.inclusive + states);
        w.ticket = w.status + blocks;
        check(cudaMemsetAsync(w.status, 0, flags * sizeof(unsigned), exec.stream), "selective_scan: look-back flags");
        look_back_kernel<S, decltype(tile)><<<unsigned(blocks), tile.threads(), shared_bytes, exec.stream>>>(
            model, p, tile, w);
        check(cudaGetLastError(), "selective_scan: look-back launch");
        check(cudaFreeAsync(w.aggregate, exec.stream), "selective_scan: look-back workspace");
    });
}

// Calls f(std::integral_constant<int, S>{}) with the states a thread of the chunked kernels holds:
// four up to 128 states (32 threads a channel), eight above.
template <class F>
void with_states_per_thread(const scan_shape& shape, F f) {
    if (shape.state <= 4 * 32) f(std::integral_constant<int, 4>{});
    else f(std::integral_constant<int, 8>{});
}

template <class Ssm, class T>
void run_chunked(const cuda_exec& exec, const chunked& strategy, const Ssm& model, const scan_problem<T>& p) {
    with_states_per_thread(p.shape, [&](auto s) { run_chunked_with<s()>(exec, strategy, model, p); });
}
template <class Ssm, class T>
void run_look_back(const cuda_exec& exec, const look_back& strategy, const Ssm& model, const scan_problem<T>& p) {
    with_states_per_thread(p.shape, [&](auto s) { run_look_back_with<s()>(exec, strategy, model, p); });
}

// How the chunked scan's blocks fill a device for problems of this shape, with real (V = float) or
// complex (V = cfloat) states, in one chunk or in several (whose tile may differ): the blocks one
// chunk takes (every batch row), and how many blocks a multiprocessor holds; `accesses_fit` as
// fixed_tile_accesses_fit of the problem.
struct chunk_occupancy {
    index_t blocks_per_chunk;
    int blocks_per_multiprocessor;
};
template <class V>
chunk_occupancy chunk_occupancy_of(const scan_shape& shape, bool accesses_fit, bool several_chunks) {
    chunk_occupancy occupancy{};
    with_states_per_thread(shape, [&](auto s) {
        with_tile<s(), V>(
            shape, accesses_fit, several_chunks, [](auto) { return std::array<const void*, 0>{}; },
            [&](auto tile, index_t per_chunk, std::size_t) {
                occupancy = {per_chunk * shape.batch, tile.blocks_per_multiprocessor};
            });
    });
    return occupancy;
}


// A length-1 problem through step_kernel: 1, 4 or 8 states a lane, as few lanes as cover the states.
template <int S, class Ssm, class T, class Token>
void run_step_with(const cuda_exec& exec, const Ssm& model, const scan_problem<T>& p, const Token& token) {
    int lanes = 1;
    while (lanes * S < p.shape.state) lanes *= 2;
    constexpr int block = 128;
    launch_overlapped("step: kernel launch", step_kernel<S, Ssm, T, Token>,
                      blocks_for(p.shape.batch * p.shape.channels * lanes, block), block, 0, exec.stream, model, p,
                      lanes, token);
}

template <class Ssm, class T, class Token>
void run_step(const cuda_exec& exec, const Ssm& model, const scan_problem<T>& p, const Token& token) {
    if (p.shape.state <= 32) run_step_with<1>(exec, model, p, token);
    else if (p.shape.state <= 128) run_step_with<4>(exec, model, p, token);
    else run_step_with<8>(exec, model, p, token);
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

// Chunked scan on the device; see cuda::chunk_kernel. strategy.chunk is the tokens per chunk: one
// chunk (>= length) gives a single pass, shorter chunks spread long sequences over more threads.
template <selective_ssm_type Ssm, storage_type T>
void selective_scan(const cuda_exec& exec, const chunked& strategy, const Ssm& model, const scan_inputs<T>& in,
                    const scan_outputs<T>& out) {
    detail::require(strategy.chunk > 0, "selective_scan: chunked chunk length must be positive, got ", strategy.chunk);
    const auto problem = make_problem("selective_scan", model, in, out);
    cuda::run_chunked(exec, strategy, model, problem);
}

// Look-back scan on the device, one kernel; see cuda::look_back_kernel.
template <selective_ssm_type Ssm, storage_type T>
void selective_scan(const cuda_exec& exec, const look_back& strategy, const Ssm& model, const scan_inputs<T>& in,
                    const scan_outputs<T>& out) {
    detail::require(strategy.chunk > 0, "selective_scan: look_back chunk length must be positive, got ",
                    strategy.chunk);
    const auto problem = make_problem("selective_scan", model, in, out);
    cuda::run_look_back(exec, strategy, model, problem);
}

// One decoding step for a batch on the device (see the host ssm::step and cuda::step_kernel); state
// is read and written in place.
template <selective_ssm_type Ssm, storage_type T>
void step(const cuda_exec& exec, const Ssm& model, const step_inputs<T>& in, tensor_view<float, 3> state,
          tensor_view<T, 2> y) {
    const auto [scan_in, scan_out] = detail::step_as_scan(in, state, y);
    const auto problem = make_problem("step", model, scan_in, scan_out);
    cuda::run_step(exec, model, problem, cuda::problem_token<T>{problem});
}

}  // namespace ssm
