#pragma once
// Matrix products on the host through CBLAS (Debian's OpenBLAS in this project's build). Models call
// a GEMM policy for every projection, y = x·Wᵀ with W stored (out_features, in_features) as in
// PyTorch's nn.Linear, so that another BLAS, or cuBLAS on the device, can take its place.
#include <cblas.h>

#include <concepts>

#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/tensor_view.hpp"

namespace ssm {

// y (rows, out) = x (rows, in) · weightᵀ, weight (out, in); rows are contiguous in each view.
template <class G>
concept host_gemm = std::copyable<G> && requires(const G g, const host_exec& exec, tensor_view<const float, 2> x,
                                                 tensor_view<const float, 2> weight, tensor_view<float, 2> y) {
    g.multiply(exec, x, weight, y);
};

struct blas_gemm {
    void multiply(const host_exec& exec, tensor_view<const float, 2> x, tensor_view<const float, 2> weight,
                  tensor_view<float, 2> y) const {
        constexpr const char* where = "blas_gemm";
        const index_t rows = x.extent(0), in = x.extent(1), out = weight.extent(0);
        detail::check_shape(where, "weight", weight, {out, in}, {"out features", "in features"});
        detail::check_shape(where, "y", y, {rows, out}, {"rows", "out features"});
        detail::require(x.stride(1) == 1 && weight.stride(1) == 1 && y.stride(1) == 1, where,
                        ": views must have contiguous rows");
        if (rows == 0 || out == 0) return;
#ifdef OPENBLAS_VERSION
        // OpenBLAS keeps its own pool; size it like the caller's executor.
        if (openblas_get_num_threads() != exec.worker_count()) openblas_set_num_threads(exec.worker_count());
#else
        (void)exec;
#endif
        if (rows == 1) {  // decoding one sequence: OpenBLAS's gemv reads W about 3x faster than its gemm
            cblas_sgemv(CblasRowMajor, CblasNoTrans, int(out), int(in), 1.0f, weight.data(), int(weight.stride(0)),
                        x.data(), 1, 0.0f, y.data(), 1);
            return;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(out), int(in), 1.0f, x.data(),
                    int(x.stride(0)), weight.data(), int(weight.stride(0)), 0.0f, y.data(), int(y.stride(0)));
    }
};

}  // namespace ssm
