#pragma once
// The one host/device annotation: functions marked with it compile for the host with any C++20
// compiler and, under nvcc, for the device as well.
#if defined(__CUDACC__)
#define SSM_HOST_DEVICE __host__ __device__ inline
#else
#define SSM_HOST_DEVICE inline
#endif
