#include "troupe/concurrent/futures/executor.hpp"

namespace troupe::concurrent::futures::detail {

std::size_t map_lookahead(const MapOptions& options, std::size_t default_ahead) {
  if (options.chunksize < 1) throw ValueError("chunksize must be >= 1.");
  if (options.buffersize && *options.buffersize < 1)
    throw ValueError("buffersize must be None or > 0");
  if (options.eager) {
    if (options.buffersize)
      throw ValueError("map: eager submits everything at once; it takes no buffersize");
    return std::numeric_limits<std::size_t>::max();
  }
  if (options.buffersize) return *options.buffersize;
  return default_ahead > 0 ? default_ahead : 1;
}

}  // namespace troupe::concurrent::futures::detail
