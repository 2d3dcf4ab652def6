// troupe/concurrent/futures.hpp — `import concurrent.futures`: Future, wait, as_completed,
// Executor.map, ThreadPoolExecutor, ProcessPoolExecutor.
// `namespace futures = troupe::concurrent::futures;`
#pragma once

#include "troupe/concurrent/futures/executor.hpp"
#include "troupe/concurrent/futures/future.hpp"
#include "troupe/concurrent/futures/process.hpp"
#include "troupe/concurrent/futures/thread.hpp"
#include "troupe/errors.hpp"
#include "troupe/timeout.hpp"
