// troupe/detail/node_cache.hpp — a map whose entries come and go once per call (a call in
// flight) keeps the node of the entry it gave up last for the next insert, so that in the steady
// state it allocates none. Not API.
#pragma once

#include <utility>

namespace troupe::detail {

/// Inserts (key, value) into `map` (a std::map or std::unordered_map), in the node kept in
/// `spare` if there is one. The key must not be in the map yet (the caller checked).
template <class Map>
void insert_reusing(Map& map, typename Map::node_type& spare, const typename Map::key_type& key,
                    typename Map::mapped_type value) {
  if (spare.empty()) {
    map.emplace(key, std::move(value));
    return;
  }
  spare.key() = key;
  spare.mapped() = std::move(value);
  auto done = map.insert(std::move(spare));
  if (!done.inserted) spare = std::move(done.node);  // (the key was there: value dropped)
}

/// Removes the entry at `it` and returns its value; its node, emptied (a default value, so
/// that nothing the value held lives on in it), is kept in `spare`.
template <class Map>
typename Map::mapped_type take_reusing(Map& map, typename Map::node_type& spare,
                                       typename Map::iterator it) {
  auto node = map.extract(it);
  auto value = std::move(node.mapped());
  node.mapped() = typename Map::mapped_type{};
  spare = std::move(node);
  return value;
}

}  // namespace troupe::detail
