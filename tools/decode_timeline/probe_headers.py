#!/usr/bin/env python3
"""Copies include/ to build-timeline/include with timing probes in matvec_kernel, step_kernel and
step_product_kernel: a __device__ table probe_t[slot][6] of %globaltimer readings (start, after the
wait for the previous kernel, end, after the inputs, after the weights, after the products), each
launch taking the next slot (probe_slot, counted on the host when it is launched or captured). See
run.sh."""
import shutil
shutil.rmtree('build-timeline/include', ignore_errors=True)
shutil.copytree('include', 'build-timeline/include')
base='build-timeline/include/ssm/cuda/'
def sub(s, a, b):
    assert a in s, a
    return s.replace(a, b, 1)
p=base+'selective_scan.cuh'
s=open(p).read()
s=sub(s,'''// One thread per (batch, channel), sequential in time''','''__device__ unsigned long long probe_t[1024][6];
inline int probe_slot = 0;
__device__ inline unsigned long long probe_now() { unsigned long long t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }
#define PROBE(k) if (threadIdx.x == 0) { if (k >= 2) atomicMax(&probe_t[probe][k], probe_now()); else atomicMin(&probe_t[probe][k], probe_now()); }

// One thread per (batch, channel), sequential in time''')
s=sub(s,'''__global__ void step_kernel(Ssm model, scan_problem<T> p, int lanes, Token token) {''','''__global__ void step_kernel(Ssm model, scan_problem<T> p, int lanes, Token token, int probe) {
    PROBE(0)''')
s=sub(s,'''    wait_for_previous_kernel();
    if constexpr (!Token::constant_parameters) eigenvalues();''','''    wait_for_previous_kernel();
    PROBE(1)
    if constexpr (!Token::constant_parameters) eigenvalues();''')
s=sub(s,'''    acc = lanes_sum(acc, lanes);
    if (!active''','''    acc = lanes_sum(acc, lanes);
    __syncwarp();
    PROBE(2)
    if (!active''')
s=sub(s,'''blocks_for(p.shape.batch * p.shape.channels * lanes, block), block, 0, exec.stream, model, p,
                      lanes, token);''','''blocks_for(p.shape.batch * p.shape.channels * lanes, block), block, 0, exec.stream, model, p,
                      lanes, token, probe_slot++);''')
open(p,'w').write(s)
p=base+'matvec.cuh'
s=open(p).read()
s=sub(s,'''bool pieces, matvec_layout layout, Input input, Output output) {''','''bool pieces, matvec_layout layout, Input input, Output output, int probe) {
    PROBE(0)''')
s=sub(s,'''    wait_for_previous_kernel();
    load_inputs<X>''','''    wait_for_previous_kernel();
    PROBE(1)
    load_inputs<X>''')
s=sub(s,'''    load_inputs<X>(input, norm_weight, x, b0, rows, int(ins));
    __pipeline_wait_prior(0);
    __syncthreads();''','''    load_inputs<X>(input, norm_weight, x, b0, rows, int(ins));
    PROBE(3)
    __pipeline_wait_prior(0);
    __syncthreads();
    PROBE(4)''')
s=sub(s,'''    __syncthreads();
    for (int k = int(threadIdx.x); k < here * rows; k += int(blockDim.x))''','''    __syncthreads();
    PROBE(5)
    for (int k = int(threadIdx.x); k < here * rows; k += int(blockDim.x))''')
s=sub(s,'''        output(b0 + k % rows, o0 + k / rows, results[k]);
    if constexpr (requires { output.finish(b0, rows, o0, here); }) {
        __syncthreads();
        output.finish(b0, rows, o0, here);
    }
}''','''        output(b0 + k % rows, o0 + k / rows, results[k]);
    if constexpr (requires { output.finish(b0, rows, o0, here); }) {
        __syncthreads();
        output.finish(b0, rows, o0, here);
    }
    __syncthreads();
    PROBE(2)
}''')
s=sub(s,'''input, output);
}''','''input, output, probe_slot++);
}''')
# step_product_kernel: inputs = the step, weights = W staged, products = the products with their atomic adds.
s=sub(s,'''Token token, split_product<X> product, consumed_sums sums) {''','''Token token, split_product<X> product, consumed_sums sums, int probe) {
    PROBE(0)''')
s=sub(s,'''    wait_for_previous_kernel();
    const float ch''','''    wait_for_previous_kernel();
    PROBE(1)
    const float ch''')
s=sub(s,'''    if (lane == 0) y[local] = active ? rounded_to<X>(step.output(ch)) : 0.0f;
    __pipeline_wait_prior(0);
    __syncthreads();''','''    if (lane == 0) y[local] = active ? rounded_to<X>(step.output(ch)) : 0.0f;
    __syncthreads();
    PROBE(3)
    __pipeline_wait_prior(0);
    __syncthreads();
    PROBE(4)''')
s=sub(s,'''                if (o0 + i < outs) atomicAdd(hidden + o0 + i, sum[i]);
        }
    }
}''','''                if (o0 + i < outs) atomicAdd(hidden + o0 + i, sum[i]);
        }
    }
    __syncthreads();
    PROBE(5)
    PROBE(2)
}''')
s=sub(s,'''pieces, vector_adds, token, product, sums);''','''pieces, vector_adds, token, product, sums, probe_slot++);''')
open(p,'w').write(s)
