// troupe/detail/sanitizers.hpp — whether this code is compiled for a sanitizer's runtime. GCC
// defines __SANITIZE_THREAD__ and __SANITIZE_ADDRESS__; Clang (14, Debian 12's) defines neither
// and answers __has_feature instead. Code that must differ under a runtime (a real fork for a
// child that shares the parent's memory, TSan's own thread) tests TROUPE_TSAN / TROUPE_ASAN.
// Not API.
#pragma once

#if defined(__SANITIZE_THREAD__)
#define TROUPE_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TROUPE_TSAN 1
#endif
#endif

#if defined(__SANITIZE_ADDRESS__)
#define TROUPE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TROUPE_ASAN 1
#endif
#endif
