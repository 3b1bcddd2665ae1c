#pragma once
// Mamba-2's scan in its state-space-dual (SSD) form on tensor cores. With one decay a_t = λ·Δ_t per
// head and token, a chunk of Q tokens is a masked matrix product instead of Q dependent steps:
//   y_t = Σ_{s≤t in chunk} e^{a_{s+1}+…+a_t} · coef_s · (C_t·B_s) · x_s   +   e^{a_1+…+a_t} · C_t·H
// where H is the state entering the chunk, and the state leaving it is
//   H' = e^{a_1+…+a_Q} · H + Σ_s e^{a_{s+1}+…+a_Q} · coef_s · B_s x_sᵀ.
// Three kernels: chunk_state (the sum over s, per chunk), state_pass (H chained across chunks, the
// only sequential part, elementwise), chunk_output (y from both terms). The state pass chains spans
// of several chunks rather than chunks: chunk_state carries the state through a span's chunks in
// its registers, writing each chunk's prefix (the state its span's earlier chunks add) and the
// span's sum, and chunk_output adds a prefix to its span's entering state, so that the per-chunk
// states cross memory once instead of three times. A block of the chunk kernels
// takes several heads of one group: their B, C and C·Bᵀ are the same. Products run on tensor cores
// with float accumulation, their operands in the input's storage type: bf16 or fp16 for 16-bit inputs
// (computed operands, the decayed C·Bᵀ and the states, rounded to it, as the Triton kernel does), TF32
// for float inputs, each product split in three (the operands' high and low TF32 parts) to keep
// float32 accuracy.
#include <algorithm>
#include <cstdint>

#include "selective_scan.cuh"

namespace ssm {

// Device strategy for Mamba-2 (scalar_identity) models with exponential decay (zoh, zoh_euler):
// chunks of cuda::ssd_chunk tokens, products on tensor cores. Head dimension and state size are
// free up to what fits in shared memory, zero-padded (head_dim to 64 or 128, the state to a
// multiple of 16): head_dim <= 128, state <= 256 on an H100 for the usual head_dim 64 (a smaller
// head_dim costs what 64 does). fp16 inputs multiply in fp16: the states and the decayed C·Bᵀ must
// stay within its range (±65504). The states in the workspace take, a state element, 6 bytes (16-bit
// inputs) or 8 (float) a span and 2 or 4 a chunk of spans longer than one chunk — several times the
// bytes of x at head_dim 64 and state 128: a call whose spans would need more than `workspace` bytes
// runs its tokens in windows of whole spans (at least one a window), the state carried from one to
// the next, so that memory stays bounded however long the sequence. A block runs `heads_per_block`
// heads of one group (0: chosen by the launcher), which share its staged B and C and their product
// C·Bᵀ; it must divide the heads of a group, at most 8.
// The state pass chains spans of `chunks_per_span` chunks (1, 2 or 4; 0: chosen by the launcher).
struct ssd {
    std::size_t workspace = std::size_t(2) << 30;
    int heads_per_block = 0;
    int chunks_per_span = 0;
};

template <class Ssm>
concept ssd_model = selective_ssm_type<Ssm> && std::same_as<typename Ssm::structure_type, scalar_identity> &&
                    (std::same_as<typename Ssm::discretization_type, zoh> ||
                     std::same_as<typename Ssm::discretization_type, zoh_euler>);

namespace cuda {
inline constexpr int ssd_chunk = 64;
inline constexpr int ssd_max_head_dim = 128;
inline constexpr int ssd_threads = 256;
inline constexpr int ssd_warps = ssd_threads / 32;
// Blocks a multiprocessor (the kernels' launch bounds), which the launcher's choices count on:
// chunk_state's for spans of `span` chunks, chunk_output's for operands of T.
constexpr int ssd_state_blocks(int span) { return span == 1 ? 4 : 2; }
template <class T>
inline constexpr int ssd_output_blocks = sizeof(T) == 4 ? 2 : 3;

// Sizes of one problem as the SSD kernels see it, and their shared-memory layouts in elements of the
// operand type T. Rows are padded so that fragment loads spread over the banks: a float tile read
// as a row-major A or column-major B fragment by cols + 4, one read the other way by cols + 8; a
// 16-bit tile (read in pairs along its rows) by cols + 8 (16 bytes), which keeps rows 16-byte aligned.
struct ssd_shape {
    int head_dim, state, heads_per_group;
    // head_dim rounded up to 64 or 128, so that the warps' tiles of a state or of y are whole (their
    // counts known at compile time); the state rounded up to 16.
    int padded_dim, padded_state;
    index_t chunks;
    int heads_per_block;
    bool rows_in_vectors;  // y and z rows in 16-byte pieces from each head's first channel (store_y)
    int span;              // chunks a span
    SSM_HOST_DEVICE index_t spans() const { return (chunks + span - 1) / span; }
    template <class T>
    static SSM_HOST_DEVICE int a_ld(int cols) {
        return cols + (sizeof(T) == 4 ? 4 : 8);
    }
    static SSM_HOST_DEVICE int b_ld(int cols) { return cols + 8; }
    // B's rows, then H's [p][n] in the same place.
    SSM_HOST_DEVICE int square() const { return ssd_chunk > padded_dim ? ssd_chunk : padded_dim; }
    // Bytes of a, coef (floats, [head][chunk][t]) for the block's heads and `chunks` chunks.
    SSM_HOST_DEVICE std::size_t decays_bytes(int chunks_a_block) const {
        return 2 * std::size_t(heads_per_block) * chunks_a_block * ssd_chunk * sizeof(float);
    }
    // chunk_state: a, coef, B [t][n] (column-major A) and the weighted x [t][p] of a span's chunks.
    template <class T>
    SSM_HOST_DEVICE std::size_t chunk_state_bytes() const {
        return decays_bytes(span) +
               std::size_t(span) * ssd_chunk * (b_ld(padded_state) + b_ld(padded_dim)) * sizeof(T);
    }
    // chunk_output: a, coef; x [t][p]; C [t][n]; then B [t][n] (then H [p][n]) and the masked C·Bᵀ
    // [t][s], where y [t][p] (floats) goes once a head's products are done; for 16-bit operands last
    // C·Bᵀ itself (chunk_output_cb_bytes).
    template <class T>
    SSM_HOST_DEVICE std::size_t chunk_output_c_offset() const {
        return decays_bytes(1) + std::size_t(ssd_chunk) * b_ld(padded_dim) * sizeof(T);
    }
    template <class T>
    SSM_HOST_DEVICE std::size_t chunk_output_products_offset() const {
        return chunk_output_c_offset<T>() + std::size_t(ssd_chunk) * a_ld<T>(padded_state) * sizeof(T);
    }
    template <class T>
    SSM_HOST_DEVICE std::size_t chunk_output_cb_offset() const {
        const std::size_t products =
            (std::size_t(square()) * a_ld<T>(padded_state) + std::size_t(ssd_chunk) * a_ld<T>(ssd_chunk)) * sizeof(T);
        const std::size_t y = std::size_t(ssd_chunk) * y_ld() * sizeof(float);
        return chunk_output_products_offset<T>() + (products > y ? products : y);
    }
    template <class T>
    SSM_HOST_DEVICE std::size_t chunk_output_bytes() const {
        return chunk_output_cb_offset<T>() + chunk_output_cb_bytes<T>();
    }
    // C·Bᵀ in floats [t][s], rows ≡ 8 floats (mod 32) as y's, for 16-bit operands: kept in shared memory
    // rather than in registers from head to head, which the kernel's three blocks a multiprocessor lack.
    static constexpr int cb_ld = ssd_chunk + 8;
    template <class T>
    static SSM_HOST_DEVICE constexpr std::size_t chunk_output_cb_bytes() {
        return sizeof(T) == 2 ? std::size_t(ssd_chunk) * cb_ld * sizeof(float) : 0;
    }
    // y's rows: ≡ 8 floats (mod 32), so that a warp's pairs of accumulators (8 rows, 4 pairs a row)
    // fill the 32 banks once a half-warp.
    SSM_HOST_DEVICE int y_ld() const { return padded_dim + 8; }
    // Floats of one chunk's state [head_dim][state], padded.
    SSM_HOST_DEVICE index_t state_floats() const { return index_t(padded_dim) * padded_state; }
    // Bytes of the workspace (ssd_workspace) a span of one of `rows` = batch · heads: its added and
    // entering states, its chunks' prefix states (spans longer than one chunk) and decays.
    template <class T>
    SSM_HOST_DEVICE std::size_t span_bytes() const {
        const std::size_t prefix = span > 1 ? std::size_t(state_floats()) * sizeof(T) : 0;
        return std::size_t(state_floats()) * (sizeof(float) + sizeof(T)) + span * (prefix + sizeof(float));
    }
    template <class T>
    SSM_HOST_DEVICE std::size_t workspace_bytes(index_t rows) const {
        return std::size_t(rows * spans()) * span_bytes<T>();
    }
};

// Per-span states [batch][span][head][padded_dim][padded_state]: the state each span adds from a
// zero start (float) and the state entering it (as the operand type T, which is all chunk_output
// reads); per chunk [batch][chunk][head][...]: the prefix state, which the chunks of its span before
// it add (T; where spans are longer than one chunk), and the log decay summed from its span's start
// through its end.
template <class T>
struct ssd_workspace {
    float* added;
    T* entering;
    T* prefix;
    float* decays;
};

namespace ssd_detail {
inline __device__ int lane() { return int(threadIdx.x) % 32; }
inline __device__ int warp() { return int(threadIdx.x) / 32; }

// Rounds to TF32 (round to nearest), as bits and as a float.
inline __device__ unsigned tf32_bits(float v) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(v));
    return r;
}
inline __device__ float tf32(float v) { return __uint_as_float(tf32_bits(v)); }

// d += a·b for one m16n8k8 TF32 tile (fragments as in PTX's mma.m16n8k8: lane = 4·g + t).
inline __device__ void mma_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// d += a·b for one m16n8k16 tile of bf16 or fp16 values, two a register (the lower k in the low half).
template <class T>
inline __device__ void mma_16bit(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    if constexpr (std::same_as<T, bfloat16>)
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Operand values as TF32 bits: high parts, and with Split the low parts (v - high). Without Split
// the values are used as they are (the tensor cores read a float's TF32 bits); callers store
// computed values rounded with tf32().
template <bool Split, int N>
__device__ void operand(const float (&v)[N], unsigned (&high)[N], unsigned (&low)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
        high[i] = Split ? tf32_bits(v[i]) : __float_as_uint(v[i]);
        if constexpr (Split) low[i] = tf32_bits(v[i] - __uint_as_float(high[i]));
    }
}

// Fragments of 8×8 tiles of 16-bit values in shared memory, `Count` (2 or 4) at once: lane l gives the
// address of row l % 8 of tile l / 8 (16 bytes, aligned), and r[i] receives tile i as an mma operand
// register (row l / 4, columns 2·(l % 4) and the next, the lower column in the low half); with Trans
// tile i transposed, for a tile whose rows run along the product's k.
template <int Count, bool Trans>
__device__ void load_tiles(unsigned (&r)[4], const void* row) {
    const unsigned at = static_cast<unsigned>(__cvta_generic_to_shared(row));
    if constexpr (Count == 4 && Trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(at));
    else if constexpr (Count == 4)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(at));
    else if constexpr (Trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(at));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(at));
}

// A count of column tiles known at compile time, where a warp's tiles are whole: the loops over them
// then unroll without a test a tile, which had cost more instructions than the products.
template <int N>
struct tile_count {
    SSM_HOST_DEVICE constexpr operator int() const { return N; }
};

// One warp's acc[j] += A·B_j over k < depth (a multiple of 16), for its 16 rows of A and the column
// tiles j < tiles of 8 columns; A(m, k) = a[m·am + k·ak] and B(k, n) = b[k·bk + n·bn] in shared
// memory. A's fragment is loaded once a k-step for all column tiles. Element e of acc[j] is (row
// g + 8·(e/2), column 8·j + 2·t + e%2) with g = lane / 4, t = lane % 4, for every operand type.
// `tiles` is an int or a tile_count. For 16-bit operands the k loop is unrolled KUnroll times: with the
// compiler's own choice chunk_output spilled registers at head_dim 128 (8% of its time), and
// chunk_state's spans of four chunks gain from four (a sixth fewer instructions).
template <bool Split, int KUnroll = 1, int NT, class T, class Tiles>
__device__ void warp_product(float (&acc)[NT][4], Tiles tiles, const T* a, int am, int ak, const T* b, int bk, int bn,
                             int depth) {
    const int g = lane() / 4, t = lane() % 4;
    if constexpr (std::same_as<T, float>) {
        for (int k = 0; k < depth; k += 8) {
            const float* const ak0 = a + (k + t) * ak;
            const float av[4] = {ak0[g * am], ak0[(g + 8) * am], ak0[g * am + 4 * ak], ak0[(g + 8) * am + 4 * ak]};
            unsigned ah[4], al[4];
            operand<Split>(av, ah, al);
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                if (j >= tiles) break;
                const float* const bj = b + (k + t) * bk + (8 * j + g) * bn;
                const float bv[2] = {bj[0], bj[4 * bk]};
                unsigned bh[2], bl[2];
                operand<Split>(bv, bh, bl);
                if constexpr (Split) {
                    mma_tf32(acc[j], al, bh);
                    mma_tf32(acc[j], ah, bl);
                }
                mma_tf32(acc[j], ah, bh);
            }
        }
    } else {
        static_assert(NT % 2 == 0);
        // By ldmatrix: A's 16×16 as tiles (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15),
        // (rows 8-15, k 8-15); two column tiles of B at a time as (k 0-7, j), (k 8-15, j), (k 0-7, j + 1),
        // (k 8-15, j + 1). A tile stored with its rows along k (stride 1 along k) is read as it is, else
        // transposed; the operands here have a stride of 1 along one of their two indices.
        const int r = lane() % 8, q = lane() / 8;
#pragma unroll KUnroll
        for (int k = 0; k < depth; k += 16) {
            unsigned af[4];
            if (ak == 1) load_tiles<4, false>(af, a + (r + 8 * (q % 2)) * am + k + 8 * (q / 2));
            else load_tiles<4, true>(af, a + (k + r + 8 * (q / 2)) * ak + 8 * (q % 2));
#pragma unroll
            for (int j = 0; j < NT; j += 2) {
                if (j >= tiles) break;
                const T* const row = bk == 1 ? b + (8 * (j + q / 2) + r) * bn + k + 8 * (q % 2)
                                             : b + (k + r + 8 * (q % 2)) * bk + 8 * (j + q / 2);
                unsigned bf[4];
                if (j + 1 < tiles) {
                    if (bk == 1) load_tiles<4, false>(bf, row);
                    else load_tiles<4, true>(bf, row);
                } else {
                    if (bk == 1) load_tiles<2, false>(bf, row);
                    else load_tiles<2, true>(bf, row);
                }
                mma_16bit<T>(acc[j], af, {bf[0], bf[1]});
                if (j + 1 < tiles) mma_16bit<T>(acc[j + 1], af, {bf[2], bf[3]});
            }
        }
    }
}

// v as an operand of type T: float rounded to TF32 when Round, else T's nearest value.
template <class T, bool Round>
__device__ T operand_value(float v) {
    if constexpr (std::same_as<T, float>) return Round ? tf32(v) : v;
    else return from_float<T>(v);
}

// Calls f(j, e, row, column) for every element of a warp's acc (see warp_product).
template <int NT, class Tiles, class F>
__device__ void for_each_element(Tiles tiles, F f) {
    const int g = lane() / 4, t = lane() % 4;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        if (j >= tiles) break;
#pragma unroll
        for (int e = 0; e < 4; ++e) f(j, e, g + 8 * (e / 2), 8 * j + 2 * t + e % 2);
    }
}

// Calls f(j, e, row, column) for the pairs of adjacent elements e and e + 1 (same row, columns column
// and column + 1) of a warp's acc.
template <int NT, class Tiles, class F>
__device__ void for_each_pair(Tiles tiles, F f) {
    const int g = lane() / 4, t = lane() % 4;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        if (j >= tiles) break;
        f(j, 0, g, 8 * j + 2 * t);
        f(j, 2, g + 8, 8 * j + 2 * t);
    }
}

// Two floats as 16-bit values of T in one register (one conversion instruction), v0 in the low half.
template <class T>
__device__ unsigned pack_pair(float v0, float v1) {
    unsigned r;
    if constexpr (std::same_as<T, bfloat16>) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(v1), "f"(v0));
    else asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(v1), "f"(v0));
    return r;
}

// Two values as adjacent operands of type T (operand_value), one store.
template <class T, bool Round>
__device__ void store_pair(T* to, float v0, float v1) {
    if constexpr (std::same_as<T, float>) *reinterpret_cast<float2*>(to) = {operand_value<T, Round>(v0), operand_value<T, Round>(v1)};
    else *reinterpret_cast<unsigned*>(to) = pack_pair<T>(v0, v1);
}

// 8 bytes into global memory with one instruction: left to itself the compiler split the store of a
// selected pair into two of 4 bytes.
__device__ inline void store_global_8(void* to, unsigned low, unsigned high) {
    asm volatile("{ .reg .u64 g; cvta.to.global.u64 g, %0; st.global.v2.b32 [g], {%1, %2}; }" ::"l"(to), "r"(low),
                 "r"(high)
                 : "memory");
}

// Stores a warp's accumulator tiles (see warp_product) as values of T (operand_value, not rounded to
// TF32): `to` is the lane's first element, its second row `down` elements on. A float lane stores its
// pairs; for 16-bit T lanes 2u and 2u + 1 swap a pair so that each stores four adjacent values at once,
// the even lane those of tile j, the odd one those of tile j + 1 (half the stores, which had queued in the
// load-store unit).
template <class T, int NT>
__device__ void store_state(T* to, int down, const float (&acc)[NT][4]) {
    if constexpr (sizeof(T) == 2) {
        static_assert(NT % 2 == 0);
        const bool odd = lane() % 2;
        T* const quads = to + (odd ? 6 : 0);  // odd: tile j + 1, two columns back
#pragma unroll
        for (int j = 0; j < NT; j += 2)
#pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const unsigned here = pack_pair<T>(acc[j][e], acc[j][e + 1]),
                               next = pack_pair<T>(acc[j + 1][e], acc[j + 1][e + 1]);
                const unsigned got = __shfl_xor_sync(0xffffffffu, odd ? here : next, 1);
                store_global_8(quads + (e ? down : 0) + 8 * j, odd ? got : here, odd ? next : got);
            }
    } else {
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            store_pair<T, false>(to + 8 * j, acc[j][0], acc[j][1]);
            store_pair<T, false>(to + down + 8 * j, acc[j][2], acc[j][3]);
        }
    }
}

// 16 bytes into shared memory with one instruction: left to itself the compiler split such a store into
// four of 4 bytes, each a four-way bank conflict, where the address was computed.
__device__ inline void store_shared_16(void* to, const uint4& v) {
    asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};" ::"r"(unsigned(__cvta_generic_to_shared(to))),
                 "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
                 : "memory");
}

// 16 / sizeof(T) floats as operands of type T (operand_value) in 16 bytes: unpack's inverse.
template <class T, bool Round = false>
__device__ uint4 pack(const float (&v)[16 / sizeof(T)]) {
    unsigned w[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        if constexpr (std::same_as<T, float>) w[k] = __float_as_uint(operand_value<T, Round>(v[k]));
        else w[k] = pack_pair<T>(v[2 * k], v[2 * k + 1]);
    }
    return {w[0], w[1], w[2], w[3]};
}

// A head's per-token terms in a chunk, by the calling warp: a[t] = a_1 + … + a_t (log decays summed
// from the chunk's start) and coef[t] (B̄'s factor; with ToEnd times e^{a_Q - a_t}, its decay to the
// chunk's end), for t < count; later tokens add nothing (a stays, coef is 0).
template <bool ToEnd, class Ssm, class T>
__device__ void chunk_decays(const Ssm& model, const scan_problem<T>& p, index_t b, index_t t0, int count,
                             index_t head, float* a, float* coef) {
    const float lambda = model.modulation.eigenvalue(model.transition.eigenvalue(head * model.transition.head_dim, 0), head);
    const float bias = p.in.delta_bias.data() ? p.in.delta_bias(head) : 0.0f;
    float raw[ssd_chunk / 32];  // both halves' loads in flight at once
#pragma unroll
    for (int h = 0; h < ssd_chunk / 32; ++h) {
        const int t = 32 * h + lane();
        raw[h] = t < count ? to_float(p.in.delta(b, t0 + t, head)) : 0.0f;
    }
    float carry = 0.0f, at[ssd_chunk / 32], c[ssd_chunk / 32];
#pragma unroll
    for (int h = 0; h < ssd_chunk / 32; ++h) {
        const int t = 32 * h + lane();
        float log_decay = 0.0f;
        c[h] = 0.0f;
        if (t < count) {
            const float dt = raw[h] + bias;
            const float delta = model.modulation.delta(p.in.delta_softplus ? math::softplus(dt) : dt, head);
            log_decay = lambda * delta;  // Ā = e^{λΔ} for both zoh rules
            c[h] = Ssm::discretization_type::apply(lambda, delta).input;
        }
        for (int offset = 1; offset < 32; offset *= 2) {
            const float v = __shfl_up_sync(0xffffffffu, log_decay, offset);
            if (lane() >= offset) log_decay += v;
        }
        a[t] = at[h] = carry + log_decay;
        carry += __shfl_sync(0xffffffffu, log_decay, 31);
    }
#pragma unroll
    for (int h = 0; h < ssd_chunk / 32; ++h) coef[32 * h + lane()] = ToEnd ? c[h] * math::exp(carry - at[h]) : c[h];
}

// The rows of a tile taken as they are (stage_rows).
struct unscaled {
    __device__ float operator()(int) const { return 1.0f; }
};

// Rows of a matrix of T into a shared-memory tile: row t (< rows) from base + t·row_stride, `cols` (a
// multiple of 16) a row, `step` apart, zero beyond `count` rows and `valid` columns, times factor(t)
// unless unscaled, as operand_value<T, Round>. A warp a row, its lanes along the columns, 16 bytes a
// lane where the rows allow; with Across (and a row's pieces of 16 bytes a power of two) the block's
// threads along the pieces of all rows instead, which takes fewer instructions and issues more rows'
// loads at once, but more registers. Each thread issues the loads for 8 rows (or pieces) before
// storing any, so that their latencies overlap. (Asynchronous copies, cp.async, took more
// instructions and time here.)
template <bool Round, bool Across = false, class T, class Factor = unscaled>
__device__ void stage_rows(T* to, int ld, int rows, int cols, int count, int valid, const T* base,
                           index_t row_stride, index_t step, Factor factor = {}) {
    constexpr int n = 16 / sizeof(T), batch = ssd_chunk / ssd_warps;
    constexpr bool as_they_are = std::same_as<Factor, unscaled> && (!Round || !std::same_as<T, float>);
    const bool vectors = step == 1 && valid % n == 0 && reinterpret_cast<std::uintptr_t>(base) % 16 == 0 &&
                         row_stride * index_t(sizeof(T)) % 16 == 0;
    // A 16-byte piece of row t, column col, into the tile.
    const auto put = [&](uint4 raw, int t, int col) {
        uint4* const row = reinterpret_cast<uint4*>(to + t * ld + col);
        if constexpr (as_they_are) {
            *row = raw;
        } else {
            float v[n];
            unpack<T>(raw, v);
            const float f = factor(t);
#pragma unroll
            for (int j = 0; j < n; ++j) v[j] *= f;
            *row = pack<T, Round>(v);
        }
    };
    const int per_row = cols / n;
    if (Across && vectors && (per_row & (per_row - 1)) == 0) {
        // A thread's pieces share a column, their rows `down` apart; its loads step a pointer.
        const int shift = __ffs(per_row) - 1, down = ssd_threads >> shift;
        const int col = (int(threadIdx.x) & (per_row - 1)) * n;
        const index_t jump = down * row_stride;
        for (int first = int(threadIdx.x) >> shift; first < rows; first += batch * down) {
            const T* from = base + first * row_stride + col;
            uint4 raw[batch];
#pragma unroll
            for (int r = 0; r < batch; ++r, from += jump)
                raw[r] = first + r * down < count && col < valid ? *reinterpret_cast<const uint4*>(from)
                                                                 : uint4{0, 0, 0, 0};
#pragma unroll
            for (int r = 0; r < batch; ++r) {
                if (first + r * down >= rows) break;
                put(raw[r], first + r * down, col);
            }
        }
        return;
    }
    const index_t jump = ssd_warps * row_stride;  // from one of a warp's rows to its next
    for (int first = warp(); first < rows; first += batch * ssd_warps) {
        if (vectors) {
            for (int col = lane() * n; col < cols; col += 32 * n) {
                const bool inside = col < valid;
                const T* from = base + first * row_stride + col;
                uint4 raw[batch];
#pragma unroll
                for (int r = 0; r < batch; ++r, from += jump)
                    raw[r] = inside && first + r * ssd_warps < count ? *reinterpret_cast<const uint4*>(from)
                                                                     : uint4{0, 0, 0, 0};
#pragma unroll
                for (int r = 0; r < batch; ++r) {
                    const int t = first + r * ssd_warps;
                    if (t >= rows) break;
                    put(raw[r], t, col);
                }
            }
        } else {
            for (int col = lane(); col < cols; col += 32) {
                const bool inside = col < valid;
                const T* from = base + first * row_stride + col * step;
                float v[batch];
#pragma unroll
                for (int r = 0; r < batch; ++r, from += jump)
                    v[r] = inside && first + r * ssd_warps < count ? to_float(*from) : 0.0f;
#pragma unroll
                for (int r = 0; r < batch; ++r) {
                    const int t = first + r * ssd_warps;
                    if (t < rows) to[t * ld + col] = operand_value<T, Round>(v[r] * factor(t));
                }
            }
        }
    }
}

// Which block: (chunk or span, heads) over x, the batch row over y; `head` is the first of the
// block's heads, `k` its first chunk, of `chunks_a_block`; t0 and count are chunk k's tokens.
struct block_place {
    index_t b, k, head, group, t0;
    int count;
};
// The same block at its chunk k.
inline __device__ block_place at_chunk(block_place at, const scan_shape& s, index_t k) {
    at.k = k;
    at.t0 = k * ssd_chunk;
    at.count = int(s.length - at.t0 < ssd_chunk ? s.length - at.t0 : ssd_chunk);
    return at;
}
inline __device__ block_place place(const scan_shape& s, const ssd_shape& g, int chunks_a_block) {
    const index_t head_blocks = s.delta_channels / g.heads_per_block;
    block_place at{};
    at.b = blockIdx.y;
    at.head = blockIdx.x % head_blocks * g.heads_per_block;
    at.group = at.head / g.heads_per_group;
    return at_chunk(at, s, blockIdx.x / head_blocks * chunks_a_block);
}

// B or C [t][n] of the `rows` rows from at's first token (`count` of them in the sequence: at's chunk
// unless given).
template <bool Across = false, class T>
__device__ void stage_bc(const tensor_view<const T, 4>& v, const block_place& at, const ssd_shape& g, T* to, int ld,
                         int rows = ssd_chunk, int count = -1) {
    const T* const base = v.data() + at.b * v.stride(0) + at.t0 * v.stride(1) + at.group * v.stride(2);
    stage_rows<false, Across>(to, ld, rows, g.padded_state, count < 0 ? at.count : count, g.state, base,
                              v.stride(1), v.stride(3));
}

// A head's x [t][p] of the `rows` rows from at's first token (`count` of them in the sequence: at's
// chunk unless given), each row t times factor(t) unless unscaled.
template <bool Across = false, class T, class Factor = unscaled>
__device__ void stage_x(const tensor_view<const T, 3>& v, const block_place& at, index_t head, const ssd_shape& g,
                        T* to, Factor factor = {}, int rows = ssd_chunk, int count = -1) {
    const T* const base = v.data() + at.b * v.stride(0) + at.t0 * v.stride(1) + head * g.head_dim * v.stride(2);
    stage_rows<false, Across>(to, g.b_ld(g.padded_dim), rows, g.padded_dim, count < 0 ? at.count : count,
                              g.head_dim, base, v.stride(1), v.stride(2), factor);
}

// Where a head of the block's chunk keeps its prefix state and decay in the workspace; where its
// span keeps its added and entering states.
inline __device__ index_t workspace_slot(const block_place& at, const ssd_shape& g, index_t heads, index_t head) {
    return (at.b * g.chunks + at.k) * heads + head;
}
inline __device__ index_t span_slot(const block_place& at, const ssd_shape& g, index_t heads, index_t head) {
    return (at.b * g.spans() + at.k / g.span) * heads + head;
}

// The decays (chunk_decays<ToEnd>) of the block's heads in its `chunks` chunks from at.k, a warp a
// (head, chunk): a and coef as [head][chunk][t], `stride` chunks a head.
template <bool ToEnd, class Ssm, class T>
__device__ void block_decays(const Ssm& model, const scan_problem<T>& p, const block_place& at, int chunks,
                             int stride, const ssd_shape& g, float* a, float* coef) {
    for (int j = warp(); j < g.heads_per_block * chunks; j += ssd_warps) {
        const block_place c = at_chunk(at, p.shape, at.k + j % chunks);
        const int at_j = (j / chunks * stride + j % chunks) * ssd_chunk;
        chunk_decays<ToEnd>(model, p, c.b, c.t0, c.count, at.head + j / chunks, a + at_j, coef + at_j);
    }
}

// A head's entering state H as [p][n] operands (operand_value<T, Round>) in `to`, rows ld apart:
// factor·E + P from its span's entering state E and its prefix state P, both [p][n] of padded_state
// columns in the workspace. Each thread issues the loads for 4 pieces of 16 bytes of both before
// storing any.
template <bool Round, class T>
__device__ void stage_entering(T* to, int ld, const ssd_shape& g, const T* entering, float factor, const T* prefix) {
    constexpr int n = 16 / sizeof(T), batch = 4;
    const int per_row = g.padded_state / n, pieces = g.padded_dim * per_row;
    // i / per_row as one multiply: exact for i·per_row < 2³², and per_row >= 2 (16 / n at least).
    const unsigned row_magic = 0xffffffffu / unsigned(per_row) + 1;
    for (int first = int(threadIdx.x); first < pieces; first += batch * ssd_threads) {
        uint4 e[batch], q[batch];
#pragma unroll
        for (int r = 0; r < batch; ++r) {
            const int i = first + r * ssd_threads;
            e[r] = i < pieces ? reinterpret_cast<const uint4*>(entering)[i] : uint4{0, 0, 0, 0};
            q[r] = i < pieces ? reinterpret_cast<const uint4*>(prefix)[i] : uint4{0, 0, 0, 0};
        }
#pragma unroll
        for (int r = 0; r < batch; ++r) {
            const int i = first + r * ssd_threads;
            if (i >= pieces) break;
            float ev[n], qv[n];
            unpack<T>(e[r], ev);
            unpack<T>(q[r], qv);
#pragma unroll
            for (int j = 0; j < n; ++j) ev[j] = factor * ev[j] + qv[j];
            const int row = int(__umulhi(unsigned(i), row_magic));
            store_shared_16(to + row * ld + (i - row * per_row) * n, pack<T, Round>(ev));
        }
    }
}

// A head's y for the chunk's tokens, (scale·ys + D·x)·SiLU(z), from its products ys [t][p] (floats)
// and x [t][p] in shared memory. Where rows allow (g.rows_in_vectors) a thread moves 16 bytes of a
// row a step, always the same columns, z loaded and y stored with streaming hints (`__ldcs`, `__stcs`:
// touched once, they then leave L2 to the states); else a lane a channel. Either way each thread
// issues its gate loads for all of its rows before the first store. PaddedDim bounds the rows a
// thread takes; the gate's presence is a template argument of the row loop, where a test an element
// had cost a branch each.
template <int PaddedDim, class T>
__device__ void store_y(const scan_problem<T>& p, const block_place& at, index_t head, const ssd_shape& g,
                        float scale, const float* ys, const T* xs) {
    const index_t d0 = head * g.head_dim;
    const int x_ld = g.b_ld(g.padded_dim);
    const bool gated = p.in.z.data() != nullptr;
    if (g.rows_in_vectors) {
        constexpr int n = 16 / sizeof(T), most = ssd_chunk * (PaddedDim / n) / ssd_threads;  // rows a thread, at most
        // pieces divides ssd_threads, a power of two, so shifts divide by it; the thread's index is read
        // here (volatile), as from threadIdx.x the compiler hoisted what follows from it out of the
        // heads' loop, into registers the products need.
        int thread;
        asm volatile("mov.u32 %0, %%tid.x;" : "=r"(thread));
        const int pieces = g.head_dim / n, shift = __ffs(pieces) - 1;
        const int col = (thread & (pieces - 1)) * n, first = thread >> shift, step = ssd_threads >> shift;
        float skip[n] = {};
        if (p.in.D.data())  // contiguous and aligned (rows_in_vectors)
#pragma unroll
            for (int j = 0; j < n / 4; ++j) {
                const float4 v = reinterpret_cast<const float4*>(p.in.D.data() + d0 + col)[j];
                skip[4 * j] = v.x, skip[4 * j + 1] = v.y, skip[4 * j + 2] = v.z, skip[4 * j + 3] = v.w;
            }
        // Rows by pointers stepped from the thread's first, not indexed one by one.
        const T* const z0 = gated ? &p.in.z(at.b, at.t0 + first, d0 + col) : nullptr;
        const index_t z_step = gated ? step * p.in.z.stride(1) : 0;
        T* const y0 = &p.out.y(at.b, at.t0 + first, d0 + col);
        const index_t y_step = step * p.out.y.stride(1);
        const auto rows = [&]<bool Gated>() {
            uint4 gate[most];
            if constexpr (Gated) {
#pragma unroll
                for (int r = 0; r < most; ++r)
                    gate[r] = first + r * step < at.count ? __ldcs(reinterpret_cast<const uint4*>(z0 + r * z_step))
                                                           : uint4{0, 0, 0, 0};
            }
#pragma unroll
            for (int r = 0; r < most; ++r) {
                const int t = first + r * step;
                if (t >= at.count) break;
                float x[n], y[n];
                unpack<T>(*reinterpret_cast<const uint4*>(xs + t * x_ld + col), x);
                const float4* const yt = reinterpret_cast<const float4*>(ys + t * g.y_ld() + col);
#pragma unroll
                for (int j = 0; j < n / 4; ++j) {
                    const float4 v = yt[j];
                    y[4 * j] = v.x, y[4 * j + 1] = v.y, y[4 * j + 2] = v.z, y[4 * j + 3] = v.w;
                }
#pragma unroll
                for (int j = 0; j < n; ++j) y[j] = scale * y[j] + skip[j] * x[j];
                if constexpr (Gated) {
                    float z[n];
                    unpack<T>(gate[r], z);
#pragma unroll
                    for (int j = 0; j < n; ++j) y[j] *= math::silu(z[j]);
                }
                __stcs(reinterpret_cast<uint4*>(y0 + r * y_step), pack<T>(y));
            }
        };
        if (gated)
            rows.template operator()<true>();
        else
            rows.template operator()<false>();
        return;
    }
    // A lane a channel, the gates of `ahead` rows in flight; rows by offsets from the chunk's first.
    constexpr int rows = ssd_chunk / ssd_warps, ahead = 4;
    const index_t z_row = gated ? p.in.z.stride(1) : 0, y_row = p.out.y.stride(1);
    for (int q = lane(); q < g.head_dim; q += 32) {
        const float skip = p.in.D.data() ? p.in.D(d0 + q) : 0.0f;
        const T* const z = gated ? &p.in.z(at.b, at.t0, d0 + q) : nullptr;
        T* const y = &p.out.y(at.b, at.t0, d0 + q);
        for (int r0 = 0; r0 < rows; r0 += ahead) {
            float gate[ahead];
#pragma unroll
            for (int r = 0; r < ahead; ++r) {
                const int t = warp() + (r0 + r) * ssd_warps;
                gate[r] = gated && t < at.count ? math::silu(to_float(z[t * z_row])) : 1.0f;
            }
#pragma unroll
            for (int r = 0; r < ahead; ++r) {
                const int t = warp() + (r0 + r) * ssd_warps;
                if (t < at.count)
                    y[t * y_row] =
                        from_float<T>((scale * ys[t * g.y_ld() + q] + skip * to_float(xs[t * x_ld + q])) * gate[r]);
            }
        }
    }
}
}  // namespace ssd_detail

// The states a span adds: one block a (span, heads of one group, batch row) stages B of all of the
// span's chunks (Span at the most) once for its heads and, head by head, x of all of them, weighted
// within each chunk; then each warp takes its part of P ← e^{a_1+…+a_Q}·P + Σ_s e^{a_{s+1}+…+a_Q}·
// coef_s·x_s B_sᵀ (P as [p][n]) through the chunks from P = 0 in its registers, writing P after every
// chunk but the last as the next chunk's prefix state, after the last as the span's added state; and
// each chunk's log decay summed from the span's start. Spans of one chunk run four blocks a multiprocessor (64
// registers; left to itself ptxas takes 80 and admits three, slower); longer spans two, as their shared
// memory allows at head_dim 64 and state 128 in bf16, with the registers (up to 128) that keep P from
// spilling, which made them 29% slower at 64.
template <bool Split, int Span, int NT, class Ssm, class T>
__global__ void __launch_bounds__(ssd_threads, ssd_state_blocks(Span))
    ssd_chunk_state_kernel(Ssm model, scan_problem<T> p, ssd_shape g, ssd_workspace<T> w) {
    using namespace ssd_detail;
    extern __shared__ float4 ssd_shared[];
    const int b_ld = g.b_ld(g.padded_state), x_ld = g.b_ld(g.padded_dim);
    float* const a = reinterpret_cast<float*>(ssd_shared);  // [head][chunk][t]
    float* const coef = a + g.heads_per_block * Span * ssd_chunk;
    T* const bs = reinterpret_cast<T*>(coef + g.heads_per_block * Span * ssd_chunk);  // [chunk][t][n]
    T* const xs = bs + Span * ssd_chunk * b_ld;                                        // [chunk][t][p], weighted
    const index_t heads = p.shape.delta_channels;
    const block_place at = place(p.shape, g, Span);
    const int chunks = int(g.chunks - at.k < Span ? g.chunks - at.k : Span);
    block_decays<true>(model, p, at, chunks, Span, g, a, coef);  // x weighted by its decay to its chunk's end
    // Longer spans stage their chunks' rows as one matrix (their tiles are consecutive), the block's
    // threads across all of them: a thread's loads for the whole span in flight at once. Spans of one
    // chunk (64 registers) have no registers to spare for it.
    constexpr bool across = Span > 1;
    // The rows staged and how many of them the sequence has (a span of one chunk's in terms the
    // compiler sees as its chunk's: left to the general form, ptxas spilled 40 bytes more there).
    const int rows = across ? chunks * ssd_chunk : ssd_chunk,
              tokens = across ? int(p.shape.length - at.t0 < rows ? p.shape.length - at.t0 : rows) : at.count;
    stage_bc<across>(p.in.B, at, g, bs, b_ld, rows, tokens);
    __syncthreads();  // the decays
    // A warp's task: 16 rows p × 8·NT columns n of (weighted x)ᵀ·B, the state [p][n] itself, so that
    // a lane stores adjacent values in pairs; (xᵀ)[p][s] is xs[s][p].
    constexpr tile_count<NT> tiles;
    const int strips = g.padded_dim / 16, tasks = strips * (g.padded_state / (8 * NT));
    for (int j = 0; j < g.heads_per_block; ++j) {
        const index_t head = at.head + j;
        const float* const aj = a + j * Span * ssd_chunk;
        const float* const coefj = coef + j * Span * ssd_chunk;
        if (j > 0) __syncthreads();  // every warp is done with the last head's x
        // Row r is token r % ssd_chunk of chunk r / ssd_chunk, times coef_r·e^{a_Q - a_r}.
        stage_x<across>(p.in.u, at, head, g, xs, [&](int r) { return coefj[r]; }, rows, tokens);
        __syncthreads();
        // The next head's x into L2 while this one's products run.
        if (j + 1 < g.heads_per_block)
            prefetch_rows_l2(&p.in.u(at.b, at.t0, (head + 1) * g.head_dim), tokens, p.in.u.stride(1) * index_t(sizeof(T)),
                             int(g.head_dim * p.in.u.stride(2) * sizeof(T)));
        const index_t slot = workspace_slot(at, g, heads, head);  // of the span's first chunk
        if (threadIdx.x == 0) {
            float decay = 0.0f;
            for (int i = 0; i < chunks; ++i)
                w.decays[slot + i * heads] = decay += aj[i * ssd_chunk + ssd_chunk - 1];
        }
        for (int task = warp(); task < tasks; task += ssd_warps) {
            const int p0 = task % strips * 16, n0 = task / strips * 8 * NT;
            // The lane's first element of a state (see warp_product), its second row 8 rows on.
            const int first = (p0 + lane() / 4) * g.padded_state + n0 + 2 * (lane() % 4), down = 8 * g.padded_state;
            float acc[NT][4] = {};
#pragma unroll
            for (int i = 0; i < Span; ++i) {
                if (i >= chunks) break;
                if (i > 0) {
                    const float carried = math::exp(aj[i * ssd_chunk + ssd_chunk - 1]);
                    for_each_element<NT>(tiles, [&](int jt, int e, int, int) { acc[jt][e] *= carried; });
                }
                // The k loop unrolled where registers allow it (spans of one and two chunks spilled).
                constexpr int unroll = Span == 4 ? ssd_chunk / 16 : 1;
                warp_product<Split, unroll>(acc, tiles, xs + i * ssd_chunk * x_ld + p0, 1, x_ld,
                                            bs + i * ssd_chunk * b_ld + n0, b_ld, 1, ssd_chunk);
                if (Span > 1 && i + 1 < chunks)  // the next chunk's prefix
                    store_state(w.prefix + (slot + (i + 1) * heads) * g.state_floats() + first, down, acc);
            }
            store_state(w.added + span_slot(at, g, heads, head) * g.state_floats() + first, down, acc);
        }
    }
}

// Chains the spans: the state entering each span (as the operand type) from the states they add,
// and the final state. One thread a (batch, head, p, n), sequential over spans, loads issued `depth`
// ahead. The pointers step by a span's stride: 64-bit products for every access would double the
// registers, and with them halve the threads that keep loads in flight.
template <class T>
__global__ void __launch_bounds__(256) ssd_state_pass_kernel(scan_problem<T> p, ssd_shape g, ssd_workspace<T> w) {
    const index_t per_head = g.state_floats(), heads = p.shape.delta_channels;
    const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= p.shape.batch * heads * per_head) return;
    const index_t e = i % per_head, row = i / per_head;  // row = b · heads + head
    const index_t b = row / heads, head = row % heads;
    const int q = int(e / g.padded_state), n = int(e % g.padded_state);
    const bool real = q < g.head_dim && n < g.state;
    float h = real && p.in.initial_state.data() ? p.in.initial_state(b, head * g.head_dim + q, n) : 0.0f;
    const index_t first = b * g.spans() * heads + head, step = heads * per_head;  // slot of span 0, span stride
    const float* added = w.added + first * per_head + e;
    // A span's decay: its last chunk's, summed from the span's start.
    const float* decays = w.decays + (b * g.chunks + g.span - 1) * heads + head;
    const index_t decays_step = g.span * heads;
    T* entering = w.entering + first * per_head + e;
    // Spans `count` at a time, their loads issued before the first update.
    auto spans = [&]<int count>() {
        float add[count], decay[count];
#pragma unroll
        for (int j = 0; j < count; ++j, added += step, decays += decays_step) {
            add[j] = *added;
            decay[j] = *decays;
        }
#pragma unroll
        for (int j = 0; j < count; ++j, entering += step) {
            *entering = from_float<T>(h);
            h = math::exp(decay[j]) * h + add[j];
        }
    };
    constexpr int depth = 8;
    const index_t whole = g.chunks / g.span;  // spans of g.span chunks
    index_t k = 0;
    for (; k + depth <= whole; k += depth) spans.template operator()<depth>();
    for (; k < whole; ++k) spans.template operator()<1>();
    if (whole < g.spans()) {  // a shorter last span
        decays = w.decays + (b * g.chunks + g.chunks - 1) * heads + head;
        spans.template operator()<1>();
    }
    if (real && p.out.final_state.data()) p.out.final_state(b, head * g.head_dim + q, n) = h;
}

// y of one chunk: (mask ⊙ decays ⊙ C·Bᵀ)·x + (e^{a} ⊙ C)·H, then scale, skip and gate. One block a
// (chunk, heads of one group, batch row): C and B staged once, C·Bᵀ computed once and kept (in the
// warps' registers for float operands, in shared memory for 16-bit ones), each head then masked and
// decayed in its own way. A warp's y takes YTiles tiles
// of 8 columns, half of the padded head_dim (64 or 128).
template <bool Split, int YTiles, class Ssm, class T>
__global__ void __launch_bounds__(ssd_threads, ssd_output_blocks<T>)
    ssd_chunk_output_kernel(Ssm model, scan_problem<T> p, ssd_shape g, ssd_workspace<T> w) {
    using namespace ssd_detail;
    extern __shared__ float4 ssd_shared[];
    const int c_ld = g.a_ld<T>(g.padded_state), x_ld = g.b_ld(g.padded_dim), m_ld = g.a_ld<T>(ssd_chunk);
    float* const a = reinterpret_cast<float*>(ssd_shared);  // [head][t]
    float* const coef = a + g.heads_per_block * ssd_chunk;
    T* const xs = reinterpret_cast<T*>(coef + g.heads_per_block * ssd_chunk);  // [t][p]
    T* const cs = reinterpret_cast<T*>(reinterpret_cast<char*>(ssd_shared) + g.chunk_output_c_offset<T>());  // [t][n]
    char* const products = reinterpret_cast<char*>(ssd_shared) + g.chunk_output_products_offset<T>();
    T* const bs = reinterpret_cast<T*>(products);  // [t][n], then H as [p][n]
    T* const ms = bs + g.square() * c_ld;           // [t][s]
    float* const ys = reinterpret_cast<float*>(products);  // [t][p], once a head's products are done
    const index_t heads = p.shape.delta_channels;
    const block_place at = place(p.shape, g, 1);
    const bool spans_first = at.k % g.span == 0;  // else H adds the chunk's prefix to the span's state
    // A head's entering and prefix states are read after the previous head's products: their fetches
    // start early, a 128-byte line a thread. (Its gate or x prefetched as well moved more bytes from
    // DRAM, for no gain.)
    auto prefetch = [&](index_t head) {
        const auto lines = [](const T* state, int bytes) {
            for (int i = int(threadIdx.x) * 128; i < bytes; i += ssd_threads * 128)
                prefetch_l2(reinterpret_cast<const char*>(state) + i);
        };
        const int bytes = int(g.state_floats() * sizeof(T));
        lines(w.entering + span_slot(at, g, heads, head) * g.state_floats(), bytes);
        if (!spans_first) lines(w.prefix + workspace_slot(at, g, heads, head) * g.state_floats(), bytes);
    };
    prefetch(at.head);
    block_decays<false>(model, p, at, 1, 1, g, a, coef);
    stage_bc(p.in.C, at, g, cs, c_ld);
    stage_bc(p.in.B, at, g, bs, c_ld);
    stage_x(p.in.u, at, at.head, g, xs);
    __syncthreads();

    // A warp's rows: the 16 tokens from t0; its columns: half of C·Bᵀ's or of y's.
    const int t0 = warp() / 2 * 16, half = warp() % 2;
    // C·Bᵀ left of the diagonal's end (the rest is masked out), for all of the block's heads.
    const int s0 = 32 * half, cb_tiles = (t0 + 16 - s0) / 8 < 4 ? (t0 + 16 - s0) / 8 : 4;
    float cb[4][4] = {};
    if (cb_tiles > 0)  // (Bᵀ)[n][s] is bs[s][n]
        warp_product<Split>(cb, cb_tiles, cs + t0 * c_ld, c_ld, 1, bs + s0 * c_ld, 1, c_ld, g.padded_state);
    constexpr bool cb_shared = ssd_shape::chunk_output_cb_bytes<T>() > 0;
    float* const cbs = reinterpret_cast<float*>(reinterpret_cast<char*>(ssd_shared) + g.chunk_output_cb_offset<T>());
    if constexpr (cb_shared)  // each warp reads back only what it wrote
        for_each_pair<4>(cb_tiles, [&](int jt, int e, int row, int col) {
            *reinterpret_cast<float2*>(cbs + (t0 + row) * ssd_shape::cb_ld + s0 + col) = {cb[jt][e], cb[jt][e + 1]};
        });
    for (int j = 0; j < g.heads_per_block; ++j) {
        const index_t head = at.head + j;
        const float* const aj = a + j * ssd_chunk;
        const float* const coefj = coef + j * ssd_chunk;
        if (j + 1 < g.heads_per_block) prefetch(head + 1);
        __syncthreads();  // every warp is done with B (or the last head's H, C·Bᵀ and y)
        if (j > 0) stage_x(p.in.u, at, head, g, xs);
        // The head's entering state H into B's place, as [p][n]; its masked and decayed C·Bᵀ.
        const T* const entering = w.entering + span_slot(at, g, heads, head) * g.state_floats();
        const index_t slot = workspace_slot(at, g, heads, head);
        if (spans_first)
            stage_rows<!Split>(bs, c_ld, g.padded_dim, g.padded_state, g.padded_dim, g.padded_state, entering,
                               g.padded_state, 1);
        else  // the span's decay before this chunk: the last chunk's, summed from the span's start
            stage_entering<!Split>(bs, c_ld, g, entering, math::exp(w.decays[slot - heads]),
                                   w.prefix + slot * g.state_floats());
        for_each_pair<4>(cb_tiles, [&](int jt, int e, int row, int col) {
            const int t = t0 + row, s = s0 + col;
            const float decay = aj[t];
            float2 c{cb[jt][e], cb[jt][e + 1]};
            if constexpr (cb_shared) c = *reinterpret_cast<const float2*>(cbs + t * ssd_shape::cb_ld + s);
            const float m0 = s <= t ? c.x * math::exp(decay - aj[s]) * coefj[s] : 0.0f;
            const float m1 = s + 1 <= t ? c.y * math::exp(decay - aj[s + 1]) * coefj[s + 1] : 0.0f;
            store_pair<T, !Split>(ms + t * m_ld + s, m0, m1);
        });
        __syncthreads();

        // y = e^{a_t}·(C·H) + M·x for the warp's rows and its half of the columns; H[n][p] is bs[p][n].
        const int p0 = half * g.padded_dim / 2;
        constexpr tile_count<YTiles> tiles;  // padded_dim / 16
        float acc[YTiles][4] = {};
        warp_product<Split>(acc, tiles, cs + t0 * c_ld, c_ld, 1, bs + p0 * c_ld, 1, c_ld, g.padded_state);
        const float decay_low = math::exp(aj[t0 + lane() / 4]), decay_high = math::exp(aj[t0 + lane() / 4 + 8]);
        for_each_element<YTiles>(tiles, [&](int jt, int e, int, int) { acc[jt][e] *= e < 2 ? decay_low : decay_high; });
        warp_product<Split>(acc, tiles, ms + t0 * m_ld, m_ld, 1, xs + p0, x_ld, 1, t0 + 16);
        __syncthreads();  // every warp is done with H and C·Bᵀ: y takes their place
        for_each_pair<YTiles>(tiles, [&](int jt, int e, int row, int col) {
            *reinterpret_cast<float2*>(ys + (t0 + row) * g.y_ld() + p0 + col) = {acc[jt][e], acc[jt][e + 1]};
        });
        __syncthreads();
        store_y<16 * YTiles>(p, at, head, g, model.transition.output_scale(), ys, xs);
    }
}

// Heads a block runs: how.heads_per_block, or the most of one group, up to 4, that divide it; for
// float operands up to 8 while chunk_output keeps `resident` blocks (a full wave) of `blocks_a_head`
// (chunks·batch·heads): their three-way split products make each C·Bᵀ a block shares three times
// dearer. (16-bit operands gain nothing from 8: fewer blocks shorten the spans.)
template <class T>
int ssd_heads_per_block(const ssd& how, index_t heads_per_group, index_t blocks_a_head, index_t resident) {
    if (how.heads_per_block == 0) {
        int most = 1;
        for (int d = 4; d > 1 && most == 1; --d)
            if (heads_per_group % d == 0) most = d;
        if constexpr (std::same_as<T, float>)
            for (int d = ssd_warps; d > most; --d)
                if (heads_per_group % d == 0 && blocks_a_head / d >= resident) return d;
        return most;
    }
    detail::require(how.heads_per_block >= 1 && how.heads_per_block <= ssd_warps &&
                        heads_per_group % how.heads_per_block == 0,
                    "selective_scan: ssd heads_per_block must divide the ", heads_per_group,
                    " heads of a group and lie in [1, ", ssd_warps, "], got ", how.heads_per_block);
    return how.heads_per_block;
}

// Chunks a span: how.chunks_per_span, or the most of 2 and 4 that leaves chunk_state a full wave of blocks
// (the ssd_state_blocks(span) a multiprocessor its launch bounds count on) and shared memory
// (`bytes_of(span)` of the `limit` a multiprocessor has) for them, else 1; `blocks_a_chunk` is its blocks
// for one chunk. (Asking instead for a full wave of spans of one chunk, four blocks a multiprocessor, had
// kept spans at (8, 2048) a step short: 4–7% slower.)
template <class Bytes>
int ssd_chunks_per_span(const ssd& how, index_t chunks, index_t blocks_a_chunk, int multiprocessors,
                        std::size_t limit, Bytes bytes_of) {
    if (how.chunks_per_span == 0) {
        int span = 1;
        for (const int longer : {2, 4})
            if ((chunks + longer - 1) / longer * blocks_a_chunk >= ssd_state_blocks(longer) * index_t(multiprocessors) &&
                ssd_state_blocks(longer) * bytes_of(longer) <= limit)
                span = longer;
        return span;
    }
    detail::require(how.chunks_per_span == 1 || how.chunks_per_span == 2 || how.chunks_per_span == 4,
                    "selective_scan: ssd chunks_per_span must be 1, 2 or 4, got ", how.chunks_per_span);
    return how.chunks_per_span;
}

// Whether every head's rows of y and z (if any) are whole 16-byte pieces, aligned, and few enough that
// a block's threads take the same columns at every step, and D (if any) is contiguous and aligned (store_y).
template <class T>
bool rows_in_vectors(const scan_problem<T>& p, index_t head_dim) {
    constexpr index_t n = 16 / sizeof(T);
    const auto fits = [](const auto& v) {
        return v.empty() || (v.stride(2) == 1 && v.stride(1) % n == 0 && v.stride(0) % n == 0 &&
                             reinterpret_cast<std::uintptr_t>(v.data()) % 16 == 0);
    };
    const bool skip_fits = p.in.D.empty() ||
                           (p.in.D.stride(0) == 1 && reinterpret_cast<std::uintptr_t>(p.in.D.data()) % 16 == 0);
    return head_dim % n == 0 && ssd_threads % (head_dim / n) == 0 && fits(p.in.z) && fits(p.out.y) && skip_fits;
}

// The SSD kernels' view of a problem of `length` tokens; throws where they cannot run it.
template <class Ssm, class T>
ssd_shape ssd_shape_of(const ssd& how, const Ssm& model, const scan_problem<T>& p, index_t length) {
    const scan_shape& s = p.shape;
    auto padded = [](index_t v) { return int((v + 15) / 16 * 16); };
    auto padded_head = [](index_t v) { return v <= 64 ? 64 : 128; };
    const index_t head_dim = model.transition.head_dim;
    detail::require(head_dim <= ssd_max_head_dim, "selective_scan: ssd supports head_dim up to ", ssd_max_head_dim,
                    ", got ", head_dim);
    const index_t heads_per_group = s.delta_channels / s.groups;
    const int limit = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, "selective_scan: ssd limit"),
              per_multiprocessor =
                  device_attribute(cudaDevAttrMaxSharedMemoryPerMultiprocessor, "selective_scan: ssd limit"),
              multiprocessors = device_attribute(cudaDevAttrMultiProcessorCount, "selective_scan: ssd multiprocessors");
    const index_t chunks = (length + ssd_chunk - 1) / ssd_chunk;
    ssd_shape g{int(head_dim),
                int(s.state),
                int(heads_per_group),
                padded_head(head_dim),
                padded(s.state),
                chunks,
                ssd_heads_per_block<T>(how, heads_per_group, chunks * s.batch * s.delta_channels,
                                    index_t(multiprocessors) * ssd_output_blocks<T>),
                rows_in_vectors(p, head_dim),
                1};
    g.span = ssd_chunks_per_span(how, g.chunks, s.batch * s.delta_channels / g.heads_per_block, multiprocessors,
                                 std::size_t(per_multiprocessor), [g](int span) mutable {
                                     g.span = span;
                                     return g.chunk_state_bytes<T>();
                                 });
    const std::size_t bytes = std::max(g.chunk_output_bytes<T>(), g.chunk_state_bytes<T>());
    detail::require(bytes <= std::size_t(limit), "selective_scan: ssd needs ", bytes,
                    " bytes of shared memory for head_dim ", head_dim, ", state ", s.state, " and ", g.span,
                    " chunks a span; the device offers ", limit);
    const index_t blocks = g.chunks * s.delta_channels / g.heads_per_block;
    detail::require(blocks < (index_t(1) << 31) && s.batch <= 65535, "selective_scan: ssd grid of ", blocks, " x ",
                    s.batch, " blocks exceeds CUDA's limits");
    return g;
}

// One pass of the three kernels over all of p's tokens, g = ssd_shape_of(how, model, p, p.shape.length).
template <class Ssm, class T>
void run_ssd_window(const cuda_exec& exec, const Ssm& model, const scan_problem<T>& p, const ssd_shape& g) {
    const scan_shape& s = p.shape;
    constexpr bool split = std::same_as<T, float>;
    const std::size_t chunk_state_bytes = g.chunk_state_bytes<T>();
    const std::size_t chunk_output_bytes = g.chunk_output_bytes<T>();
    // chunk_state's tasks take 8 column tiles of a state where it has a multiple of 64, else 2.
    const auto state_kernel_of = [&]<int NT>(ssd_detail::tile_count<NT>) {
        return g.span == 1   ? ssd_chunk_state_kernel<split, 1, NT, Ssm, T>
               : g.span == 2 ? ssd_chunk_state_kernel<split, 2, NT, Ssm, T>
                             : ssd_chunk_state_kernel<split, 4, NT, Ssm, T>;
    };
    auto state_kernel = g.padded_state % 64 == 0 ? state_kernel_of(ssd_detail::tile_count<8>{})
                                                 : state_kernel_of(ssd_detail::tile_count<2>{});
    auto output_kernel = g.padded_dim == 64 ? ssd_chunk_output_kernel<split, 4, Ssm, T>
                                            : ssd_chunk_output_kernel<split, 8, Ssm, T>;
    check(cudaFuncSetAttribute(state_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(chunk_state_bytes)),
          "selective_scan: ssd shared memory");
    check(cudaFuncSetAttribute(output_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(chunk_output_bytes)),
          "selective_scan: ssd shared memory");

    // One allocation: added and entering states (floats, T) of the spans, prefix states (T, where a
    // span has several chunks) and decays (floats) of the chunks; each part starts 16-byte aligned, as
    // state_floats() is a multiple of 256.
    const index_t rows = s.batch * s.delta_channels;
    const std::size_t span_states = std::size_t(rows * g.spans() * g.state_floats());
    const std::size_t chunk_states = g.span > 1 ? std::size_t(rows * g.chunks * g.state_floats()) : 0;
    void* memory = nullptr;
    check(cudaMallocAsync(&memory, g.workspace_bytes<T>(rows), exec.stream), "selective_scan: ssd workspace");
    ssd_workspace<T> w{};
    w.added = static_cast<float*>(memory);
    w.entering = reinterpret_cast<T*>(w.added + span_states);
    w.prefix = w.entering + span_states;
    w.decays = reinterpret_cast<float*>(w.prefix + chunk_states);
    const unsigned head_blocks = unsigned(s.delta_channels / g.heads_per_block);
    state_kernel<<<dim3(unsigned(g.spans()) * head_blocks, unsigned(s.batch)), ssd_threads, chunk_state_bytes,
                   exec.stream>>>(model, p, g, w);
    check(cudaGetLastError(), "selective_scan: ssd chunk state launch");
    constexpr int block = 256;
    ssd_state_pass_kernel<<<blocks_for(s.batch * s.delta_channels * g.state_floats(), block), block, 0,
                            exec.stream>>>(p, g, w);
    check(cudaGetLastError(), "selective_scan: ssd state pass launch");
    output_kernel<<<dim3(unsigned(g.chunks) * head_blocks, unsigned(s.batch)), ssd_threads, chunk_output_bytes,
                    exec.stream>>>(model, p, g, w);
    check(cudaGetLastError(), "selective_scan: ssd chunk output launch");
    check(cudaFreeAsync(memory, exec.stream), "selective_scan: ssd workspace");
}

// The tokens [t0, t0 + length) of a (batch, length, ...) view; an absent view stays absent.
template <class E, int R>
tensor_view<E, R> tokens_of(const tensor_view<E, R>& v, index_t t0, index_t length) {
    if (v.empty()) return v;
    auto extents = v.extents();
    extents[1] = length;
    return {v.data() + t0 * v.stride(1), extents, v.strides()};
}

// Runs p in windows of whole spans whose states fit in how.workspace bytes, the state
// carried between windows in a buffer of its own (each window's state pass reads its initial state
// before writing the final one, so one buffer serves as both).
template <class Ssm, class T>
void run_ssd(const cuda_exec& exec, const ssd& how, const Ssm& model, const scan_problem<T>& p) {
    const scan_shape& s = p.shape;
    const ssd_shape whole = ssd_shape_of(how, model, p, s.length);
    const std::size_t fitting = how.workspace / (whole.span_bytes<T>() * std::size_t(s.batch * s.delta_channels));
    if (fitting >= std::size_t(whole.spans())) return run_ssd_window(exec, model, p, whole);
    const index_t window = (fitting > 1 ? index_t(fitting) : 1) * whole.span * ssd_chunk;

    void* carry = nullptr;
    check(cudaMallocAsync(&carry, std::size_t(s.batch * s.channels * s.state) * sizeof(float), exec.stream),
          "selective_scan: ssd carried state");
    const tensor_view<float, 3> carried(static_cast<float*>(carry), s.batch, s.channels, s.state);
    for (index_t t0 = 0; t0 < s.length; t0 += window) {
        const index_t length = s.length - t0 < window ? s.length - t0 : window;
        scan_problem<T> w = p;
        w.shape.length = length;
        w.in.u = tokens_of(p.in.u, t0, length);
        w.in.delta = tokens_of(p.in.delta, t0, length);
        w.in.B = tokens_of(p.in.B, t0, length);
        w.in.C = tokens_of(p.in.C, t0, length);
        w.in.z = tokens_of(p.in.z, t0, length);
        w.out.y = tokens_of(p.out.y, t0, length);
        if (t0 > 0) w.in.initial_state = carried;
        if (t0 + length < s.length) w.out.final_state = carried;
        ssd_shape g = whole;
        g.chunks = (length + ssd_chunk - 1) / ssd_chunk;
        run_ssd_window(exec, model, w, g);
    }
    check(cudaFreeAsync(carry, exec.stream), "selective_scan: ssd carried state");
}
}  // namespace cuda

// Mamba-2's scan as chunked matrix products on tensor cores; see cuda::run_ssd.
template <ssd_model Ssm, storage_type T>
void selective_scan(const cuda_exec& exec, const ssd& how, const Ssm& model, const scan_inputs<T>& in,
                    const scan_outputs<T>& out) {
    cuda::run_ssd(exec, how, model, make_problem("selective_scan", model, in, out));
}

}  // namespace ssm
