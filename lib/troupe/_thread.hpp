// troupe/_thread.hpp — `import _thread`: every _thread name in one include.
#pragma once

#include "troupe/_thread/thread.hpp"
#include "troupe/errors.hpp"
#include "troupe/timeout.hpp"
