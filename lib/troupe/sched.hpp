// troupe/sched.hpp — `import sched`.
#pragma once

#include "troupe/sched/scheduler.hpp"
