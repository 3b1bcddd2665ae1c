#pragma once
// Host threading: a fork-join loop over independent tasks. Threads are started per call; scans are
// long enough (>= tens of microseconds) that this costs little, and the library keeps no global pool.
#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "tensor_view.hpp"

namespace ssm {

// Where host work runs: `threads` workers (0 means one per hardware thread).
struct host_exec {
    int threads = 0;
    int worker_count() const {
        const int hw = int(std::max(1u, std::thread::hardware_concurrency()));
        return threads > 0 ? threads : hw;
    }
};

namespace detail {
// Calls task(i) for every i in [0, count), spread over the executor's threads. Tasks are claimed
// one at a time so that uneven tasks balance; the first exception is rethrown on the caller.
template <class Task>
void parallel_for(const host_exec& exec, index_t count, Task&& task) {
    const int workers = int(std::min<index_t>(exec.worker_count(), count));
    if (workers <= 1) {
        for (index_t i = 0; i < count; ++i) task(i);
        return;
    }
    std::atomic<index_t> next{0};
    std::exception_ptr failure;
    std::mutex failure_mutex;
    auto work = [&] {
        try {
            for (index_t i = next++; i < count; i = next++) task(i);
        } catch (...) {
            const std::lock_guard lock(failure_mutex);
            if (!failure) failure = std::current_exception();
            next = count;
        }
    };
    std::vector<std::jthread> pool;
    for (int w = 1; w < workers; ++w) pool.emplace_back(work);
    work();
    pool.clear();  // joins
    if (failure) std::rethrow_exception(failure);
}
}  // namespace detail

}  // namespace ssm
