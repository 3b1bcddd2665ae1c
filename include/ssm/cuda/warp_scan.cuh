#pragma once
// The warp-scan strategy of the device selective scan, for real states: a warp per channel walks the
// whole sequence with its lanes along time, so that each state update costs one exponential and no
// pass over the input precedes the outputs (the chunked and look-back scans rescan a chunk from its
// true start once its predecessors are known, an exponential an update each time).
#include "selective_scan.cuh"

namespace ssm {

// Device strategy for real states (V = float): one kernel, no workspace. A warp takes one (batch,
// channel) and walks its tokens in tiles of 64, eight lanes along time (8 tokens each) by four along
// the states (4 each, 16 states at a time). Each lane scans its tokens from a zero state, keeping every
// decay and input in registers; a scan across the eight time lanes gives each its true entering state;
// a second walk over the kept values writes y. See cuda::warp_scan_kernel.
struct warp_scan {};

namespace cuda {

// The warp scan's geometry. Shared-memory rows are padded so that a warp's accesses spread over the
// banks (the comments at each layout say for which access).
struct warp_scan_tile {
    static constexpr int tokens_per_lane = 8, time_lanes = 8, state_lanes = 4, states_per_lane = 4;
    static constexpr int tokens = tokens_per_lane * time_lanes;         // a tile: 64
    static constexpr int state_block = state_lanes * states_per_lane;  // states at a time: 16
    static constexpr int channels = 4;                                  // a block: a warp each
    static constexpr int threads = 32 * channels;
    static constexpr int blocks_per_multiprocessor = 3;  // up to 168 registers a thread
    // Δ, x and y partial sums: [channel][row] with rows ≡ 8 (mod 32) floats apart, so that a staging
    // warp's 8 tokens × 4 channels hit distinct banks. The four state lanes' partial sums of y are
    // `partials` floats apart.
    static constexpr int row = tokens + 8;
    static constexpr int partials = channels * row + 4;
    // B and C of one state block: [token][16], 16 floats more after every 8 tokens, so that the 16-byte
    // reads of two time lanes (8 tokens apart) fall in different banks.
    static constexpr int bc_floats = state_block * (tokens + tokens / tokens_per_lane);
    static SSM_HOST_DEVICE int bc_index(int token, int state) {
        return state_block * (token + token / tokens_per_lane) + state;
    }
    // Per warp: the time lanes' (decay, state) pairs [state][time lane], and the entering states
    // [time lane][state], rows 20 floats apart (16-byte aligned).
    static constexpr int scan_row = 20;
    static constexpr int pair_floats = state_block * scan_row, enter_floats = time_lanes * scan_row;
    // Shared memory for `padded` states a channel (a multiple of state_block): the layouts above, and
    // each channel's eigenvalues and carried state.
    static std::size_t shared_bytes(int padded) {
        return sizeof(float) * std::size_t(2 * channels * row + state_lanes * partials + 2 * bc_floats +
                                           2 * channels * padded + channels * (pair_floats + enter_floats));
    }
};

// What a thread of warp_scan_kernel loads for the next (tile, state block): its two (token, channel)
// cells of u, Δ and z (with the first state block), and its share of B and C in accesses of E values.
template <class T, int E>
struct warp_scan_registers {
    static constexpr int cells = warp_scan_tile::tokens * warp_scan_tile::channels / warp_scan_tile::threads;
    static constexpr int units = warp_scan_tile::tokens * warp_scan_tile::state_block / E / warp_scan_tile::threads;
    T x[cells], delta[cells], z[cells];
    held_lanes<E, T> b[units], c[units];
};

// A block takes `channels` channels of one group and one batch row through every tile. Per tile and
// block of 16 states: the block stages Δ (bias, softplus and modulation applied), x, B and C in shared
// memory; each warp (channel) then
//  1. scans, in each lane, its 8 tokens × 4 states from zero, keeping each update's decay Ā and input
//     B̄x (64 registers), and the lane's total decay and end state;
//  2. chains the eight time lanes' (decay, end state) pairs from the state carried in from the last
//     tile: two lanes a state, four time lanes each, through shared memory;
//  3. rescans its tokens from the entering state, adding C·h to the tokens' partial sums of y.
// After the last state block the block writes y = (scale·Σ C·h + D·x)·SiLU(z). A thread's loads for the
// next step are in flight while a step computes. With `Vector` (B's and C's rows contiguous, their
// state count a multiple of E and every row aligned) B and C move E values an access.
template <bool Vector, class Ssm, class T>
__global__ void __launch_bounds__(warp_scan_tile::threads, warp_scan_tile::blocks_per_multiprocessor)
warp_scan_kernel(Ssm model, scan_problem<T> p, int state_blocks) {
    using G = warp_scan_tile;
    using Rule = typename Ssm::discretization_type;
    constexpr bool invariant = Ssm::structure_type::state_invariant_decay;
    // Rules with a base-2 form take λ·log₂e (scaled once here), and a lane's total decay is one exp.
    constexpr bool base2 = base2_discretization<Rule> && !invariant;
    constexpr int E = Vector ? 16 / int(sizeof(T)) : 1;
    constexpr int K = G::tokens_per_lane, S = G::states_per_lane;
    using loads = warp_scan_registers<T, E>;

    extern __shared__ float4 shared_vectors[];
    const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32;
    const int padded = state_blocks * G::state_block;
    float* const dts = reinterpret_cast<float*>(shared_vectors);
    float* const xs = dts + G::channels * G::row;
    float* const ys = xs + G::channels * G::row;
    float* const bs = ys + G::state_lanes * G::partials;
    float* const cs = bs + G::bc_floats;
    float* const lambdas = cs + G::bc_floats;
    float* const carried = lambdas + G::channels * padded;
    float* const pairs = carried + G::channels * padded + warp * G::pair_floats;
    float* const entering = carried + G::channels * (padded + G::pair_floats) + warp * G::enter_floats;

    const auto& in = p.in;
    const index_t per_group = p.shape.channels / p.shape.groups;
    const index_t tiles_per_group = (per_group + G::channels - 1) / G::channels;
    const index_t b = blockIdx.x / (p.shape.groups * tiles_per_group);
    const index_t g = blockIdx.x / tiles_per_group % p.shape.groups;
    const index_t first = blockIdx.x % tiles_per_group * G::channels;
    const int valid = int(per_group - first < G::channels ? per_group - first : G::channels);
    const index_t d0 = g * per_group + first, N = p.shape.state, length = p.shape.length;

    for (int i = tid; i < G::channels * padded; i += G::threads) {
        const int c = i / padded;
        const index_t n = i % padded, d = d0 + (c < valid ? c : 0);
        const bool here = c < valid && n < N;
        float lambda = here ? model.modulation.eigenvalue(model.transition.eigenvalue(d, n),
                                                          model.transition.delta_channel(d))
                            : 0.0f;
        if constexpr (base2) lambda *= math::log2e;
        lambdas[i] = lambda;
        carried[i] = here && in.initial_state.data() ? in.initial_state(b, d, n) : 0.0f;
    }

    // Staging role: the thread's cells are (token cell_token + j·cell_step, channel cell_channel); it
    // stages them, and later writes their y.
    const int cell_channel = tid % G::channels, cell_token = tid / G::channels;
    constexpr int cell_step = G::threads / G::channels;
    const bool cell_valid = cell_channel < valid;
    const index_t cell_d = d0 + (cell_valid ? cell_channel : 0), cell_dc = model.transition.delta_channel(cell_d);
    const float bias = in.delta_bias.data() ? in.delta_bias(cell_dc) : 0.0f;
    const float skip = in.D.data() ? in.D(cell_d) : 0.0f;
    const float scale = model.transition.output_scale();
    const bool gated = in.z.data() != nullptr;
    const T* const u_row = in.u.data() + b * in.u.stride(0) + cell_d * in.u.stride(2);
    const T* const delta_row = in.delta.data() + b * in.delta.stride(0) + cell_dc * in.delta.stride(2);
    const T* const z_row = gated ? in.z.data() + b * in.z.stride(0) + cell_d * in.z.stride(2) : nullptr;
    T* const y_row = p.out.y.data() + b * p.out.y.stride(0) + cell_d * p.out.y.stride(2);
    // B and C: the thread's unit j is unit tid + j·threads of the state block, token unit / columns,
    // states E·(unit % columns) onwards.
    constexpr int columns = G::state_block / E;
    const T* const b_base = in.B.data() + b * in.B.stride(0) + g * in.B.stride(2);
    const T* const c_base = in.C.data() + b * in.C.stride(0) + g * in.C.stride(2);

    const auto tokens_in = [&](index_t tile) {
        const index_t left = length - tile * G::tokens;
        return int(left < G::tokens ? left : G::tokens);
    };
    const auto fetch = [&](index_t tile, int block, loads& r) {
        const index_t t0 = tile * G::tokens;
        const int count = tokens_in(tile);
        if (block == 0)
#pragma unroll
            for (int j = 0; j < loads::cells; ++j) {
                const int t = cell_token + j * cell_step;
                const bool ok = cell_valid && t < count;
                r.x[j] = ok ? u_row[(t0 + t) * in.u.stride(1)] : T{};
                r.delta[j] = ok ? delta_row[(t0 + t) * in.delta.stride(1)] : T{};
                r.z[j] = ok && gated ? z_row[(t0 + t) * in.z.stride(1)] : T{};
            }
        using held = held_lanes<E, T>;
#pragma unroll
        for (int j = 0; j < loads::units; ++j) {
            const int unit = tid + j * G::threads, t = unit / columns;
            const index_t n = index_t(block) * G::state_block + unit % columns * E;
            const bool ok = t < count && n < N;
            r.b[j] = ok ? *reinterpret_cast<const held*>(b_base + (t0 + t) * in.B.stride(1) + n * in.B.stride(3))
                        : held{};
            r.c[j] = ok ? *reinterpret_cast<const held*>(c_base + (t0 + t) * in.C.stride(1) + n * in.C.stride(3))
                        : held{};
        }
    };
    float gate[loads::cells];
    const auto stage = [&](const loads& r, bool tokens, int count) {
        if (tokens)
#pragma unroll
            for (int j = 0; j < loads::cells; ++j) {
                // Cells past the sequence's end (or the block's channels) get Δ = 0 and x = 0: an update
                // that keeps the state as it is (Ā = 1, B̄ = 0 for every rule), so the carried state stays
                // exact through a partial tile.
                const int t = cell_token + j * cell_step;
                float dt = to_float(r.delta[j]) + bias;
                dt = in.delta_softplus ? math::softplus(dt) : dt;
                const bool ok = cell_valid && t < count;
                dts[cell_channel * G::row + t] = ok ? model.modulation.delta(dt, cell_dc) : 0.0f;
                xs[cell_channel * G::row + t] = to_float(r.x[j]);
                gate[j] = to_float(r.z[j]);
            }
#pragma unroll
        for (int j = 0; j < loads::units; ++j) {
            const int unit = tid + j * G::threads;
            const int at = G::bc_index(unit / columns, unit % columns * E);
            if constexpr (E % 4 == 0) {  // 16-byte stores: a unit's states are whole quarters of a row
#pragma unroll
                for (int e = 0; e < E; e += 4) {
                    *reinterpret_cast<float4*>(bs + at + e) = {lane_value(r.b[j], e), lane_value(r.b[j], e + 1),
                                                               lane_value(r.b[j], e + 2), lane_value(r.b[j], e + 3)};
                    *reinterpret_cast<float4*>(cs + at + e) = {lane_value(r.c[j], e), lane_value(r.c[j], e + 1),
                                                               lane_value(r.c[j], e + 2), lane_value(r.c[j], e + 3)};
                }
            } else {
                bs[at] = lane_value(r.b[j], 0);
                cs[at] = lane_value(r.c[j], 0);
            }
        }
    };

    // Compute role: time lane `span` (tokens span·K ..) and state lane `quarter` (states quarter·S .. of
    // the state block); in the chaining step, lanes 2n and 2n + 1 take state n's time lanes 0-3 and 4-7.
    const int span = lane / G::state_lanes, quarter = lane % G::state_lanes;
    const int chain_state = lane / 2, chain_half = lane % 2;
    const auto four = [](const float* from, float* to) {
        const float4 v = *reinterpret_cast<const float4*>(from);
        to[0] = v.x, to[1] = v.y, to[2] = v.z, to[3] = v.w;
    };
    const auto advance = [&](int block, float (&y)[K]) {
        float dt[K], x[K], lambda[S];
        four(dts + warp * G::row + span * K, dt);
        four(dts + warp * G::row + span * K + 4, dt + 4);
        four(xs + warp * G::row + span * K, x);
        four(xs + warp * G::row + span * K + 4, x + 4);
        four(lambdas + warp * padded + block * G::state_block + quarter * S, lambda);
        // 1. The lane's tokens from zero.
        float decay[S][K], input[S][K], total[S], end[S];
        float dt_sum = 0.0f;
#pragma unroll
        for (int j = 0; j < K; ++j) {
            float bv[S];
            four(bs + G::bc_index(span * K + j, quarter * S), bv);
            discretized<float> shared_q{};
            if constexpr (invariant) shared_q = Rule::apply(lambdas[warp * padded], dt[j]);
            dt_sum += dt[j];
#pragma unroll
            for (int i = 0; i < S; ++i) {
                discretized<float> q;
                if constexpr (base2) q = Rule::apply_base2(lambda[i], dt[j]);
                else q = ssm::detail::discretize<Ssm>(shared_q, lambda[i], dt[j]);
                decay[i][j] = q.decay;
                input[i][j] = q.input * x[j] * bv[i];
                end[i] = j == 0 ? input[i][j] : decay[i][j] * end[i] + input[i][j];
                if constexpr (!base2) total[i] = j == 0 ? q.decay : total[i] * q.decay;
            }
        }
#pragma unroll
        for (int i = 0; i < S; ++i) {
            if constexpr (base2) total[i] = math::exp2(lambda[i] * dt_sum);
            *reinterpret_cast<float2*>(pairs + (quarter * S + i) * G::scan_row + 2 * span) = {total[i], end[i]};
        }
        float* const carry = carried + warp * padded + block * G::state_block + chain_state;
        float state = *carry;
        __syncwarp();
        // 2. The time lanes chained: each half folds its four lanes, the second half starts from the
        // first's end, and each lane's entering state follows from its predecessor's.
        {
            float link[8];
            four(pairs + chain_state * G::scan_row + 8 * chain_half, link);
            four(pairs + chain_state * G::scan_row + 8 * chain_half + 4, link + 4);
            const float half_decay = link[0] * link[2] * link[4] * link[6];
            const float half_end = ((link[1] * link[2] + link[3]) * link[4] + link[5]) * link[6] + link[7];
            const float first_decay = __shfl_xor_sync(0xffffffffu, half_decay, 1);
            const float first_end = __shfl_xor_sync(0xffffffffu, half_end, 1);
            if (chain_half == 1) state = first_decay * state + first_end;
#pragma unroll
            for (int s = 0; s < 4; ++s) {
                entering[(4 * chain_half + s) * G::scan_row + chain_state] = state;
                state = link[2 * s] * state + link[2 * s + 1];
            }
            if (chain_half == 1) *carry = state;
        }
        __syncwarp();
        // 3. The lane's tokens again, from the entering state.
        float h[S];
        four(entering + span * G::scan_row + quarter * S, h);
#pragma unroll
        for (int j = 0; j < K; ++j) {
            float cv[S];
            four(cs + G::bc_index(span * K + j, quarter * S), cv);
#pragma unroll
            for (int i = 0; i < S; ++i) {
                h[i] = decay[i][j] * h[i] + input[i][j];
                y[j] += cv[i] * h[i];
            }
        }
    };

    const index_t tiles = (length + G::tokens - 1) / G::tokens;
    loads next;
    fetch(0, 0, next);
    for (index_t tile = 0; tile < tiles; ++tile) {
        const int count = tokens_in(tile);
        float y[K] = {};
        for (int block = 0; block < state_blocks; ++block) {
            __syncthreads();  // the last step's buffers have been read
            stage(next, block == 0, count);
            __syncthreads();
            if (block + 1 < state_blocks) fetch(tile, block + 1, next);  // in flight while this step computes
            else if (tile + 1 < tiles) fetch(tile + 1, 0, next);
            if (warp < valid) advance(block, y);
        }
        if (warp < valid) {
            float* const to = ys + quarter * G::partials + warp * G::row + span * K;
            *reinterpret_cast<float4*>(to) = {y[0], y[1], y[2], y[3]};
            *reinterpret_cast<float4*>(to + 4) = {y[4], y[5], y[6], y[7]};
        }
        __syncthreads();
        // y = (scale·Σ C·h + D·x)·SiLU(z) for the thread's cells.
        const index_t t0 = tile * G::tokens;
#pragma unroll
        for (int j = 0; j < loads::cells; ++j) {
            const int t = cell_token + j * cell_step;
            if (!cell_valid || t >= count) continue;
            const float* const sums = ys + cell_channel * G::row + t;
            const float acc = sums[0] + sums[G::partials] + sums[2 * G::partials] + sums[3 * G::partials];
            float out = scale * acc + skip * xs[cell_channel * G::row + t];
            if (gated) out *= math::silu(gate[j]);
            y_row[(t0 + t) * p.out.y.stride(1)] = from_float<T>(out);
        }
    }
    if (warp < valid && p.out.final_state.data()) {
        __syncwarp();
        for (index_t n = lane; n < N; n += 32) p.out.final_state(b, d0 + warp, n) = carried[warp * padded + n];
    }
}

template <class Ssm, class T>
void run_warp_scan(const cuda_exec& exec, const Ssm& model, const scan_problem<T>& p) {
    using G = warp_scan_tile;
    const int state_blocks = int((p.shape.state + G::state_block - 1) / G::state_block);
    const index_t per_group = p.shape.channels / p.shape.groups;
    const index_t blocks = p.shape.batch * p.shape.groups * ((per_group + G::channels - 1) / G::channels);
    detail::require(blocks < (index_t(1) << 31), "selective_scan: ", blocks,
                    " blocks of the warp scan exceed the CUDA grid");
    // B and C move 16 bytes an access where every row allows it.
    constexpr int E = 16 / int(sizeof(T));
    const auto rows_fit = [&](const auto& v) {
        return v.stride(3) == 1 && v.stride(0) % E == 0 && v.stride(1) % E == 0 && v.stride(2) % E == 0 &&
               reinterpret_cast<std::uintptr_t>(v.data()) % 16 == 0;
    };
    const bool vector = p.shape.state % E == 0 && rows_fit(p.in.B) && rows_fit(p.in.C);
    const std::size_t bytes = G::shared_bytes(state_blocks * G::state_block);  // at most 32 KB (max_state)
    const auto launch = [&](auto kernel) {
        kernel<<<unsigned(blocks), G::threads, bytes, exec.stream>>>(model, p, state_blocks);
        check(cudaGetLastError(), "selective_scan: warp scan launch");
    };
    if (vector) launch(warp_scan_kernel<true, Ssm, T>);
    else launch(warp_scan_kernel<false, Ssm, T>);
}

}  // namespace cuda
}  // namespace ssm

namespace ssm {
// Warp scan on the device (real states); see cuda::warp_scan_kernel.
template <selective_ssm_type Ssm, storage_type T>
    requires std::same_as<typename Ssm::value_type, float>
void selective_scan(const cuda_exec& exec, const warp_scan&, const Ssm& model, const scan_inputs<T>& in,
                    const scan_outputs<T>& out) {
    cuda::run_warp_scan(exec, model, make_problem("selective_scan", model, in, out));
}
}  // namespace ssm
