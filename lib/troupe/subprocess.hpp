// troupe/subprocess.hpp — Python's subprocess module: Popen, run and the older API, pipelines,
// and shlex. doc/subprocess.md.
#pragma once

#include "troupe/subprocess/popen.hpp"
#include "troupe/subprocess/run.hpp"
#include "troupe/subprocess/shlex.hpp"
