#pragma once
// ssm: composable state-space-model building blocks. This umbrella header brings in the host
// library; CUDA kernels live in <ssm/cuda/...> and need nvcc.
#include "core/complex.hpp"
#include "core/error.hpp"
#include "core/macros.hpp"
#include "core/math.hpp"
#include "core/parallel.hpp"
#include "core/storage.hpp"
#include "core/tensor_view.hpp"
#include "discretization/discretization.hpp"
#include "layers/conv1d.hpp"
#include "layers/norm.hpp"
#include "modulation/decimator.hpp"
#include "modulation/modulation.hpp"
#include "scan/problem.hpp"
#include "scan/selective_scan.hpp"
#include "transition/transition.hpp"
