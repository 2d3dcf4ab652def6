// troupe/queue.hpp — `import queue`.
#pragma once

#include "troupe/errors.hpp"
#include "troupe/queue/queue.hpp"
#include "troupe/queue/simple_queue.hpp"
#include "troupe/timeout.hpp"
