// troupe/threading.hpp — `import threading`: every threading name in one include.
#pragma once

#include "troupe/errors.hpp"
#include "troupe/threading/barrier.hpp"
#include "troupe/threading/condition.hpp"
#include "troupe/threading/event.hpp"
#include "troupe/threading/local.hpp"
#include "troupe/threading/lock.hpp"
#include "troupe/threading/semaphore.hpp"
#include "troupe/threading/thread.hpp"
#include "troupe/timeout.hpp"
