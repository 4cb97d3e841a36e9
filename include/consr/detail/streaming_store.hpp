// consr/detail/streaming_store.hpp — memory traffic of large host buffers: non-temporal
// ("streaming") stores for large outputs, and software prefetch.
//
// Why: a plain store to a line that is not in the cache first reads the line from memory (the
// read-for-ownership), so a kernel that writes an output of N × V floats moves it twice. Streaming
// stores skip that read and bypass the caches, which raises the write bandwidth of a core by about
// 2× (measured on the benchmark machine: 5 → 11 GB/s). They are only worth it for outputs that
// cannot stay in the caches anyway, and they evict nothing the caller is about to reuse, hence the
// size threshold.
//
// Host only: x86 intrinsics where the compiler targets SSE2 or later (never under nvcc); a plain
// memcpy elsewhere, so behaviour (the bytes written) is identical on every platform.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "../config.hpp"

#if !defined(__CUDACC__) && !defined(__HIPCC__) && (defined(__SSE2__) || defined(_M_X64))
#include <immintrin.h>
#define CONSR_HAS_STREAMING_STORES 1
#else
#define CONSR_HAS_STREAMING_STORES 0
#endif

namespace consr {
namespace detail {

/// Outputs of at least this many bytes are written with streaming stores: beyond the L2 of any
/// core and a large share of the last-level cache one core gets, so a consumer would mostly miss in
/// cache anyway. (Measured on the benchmark machine: the 17.7 MB output of the diffusion noise of
/// 10 × 3 × 384 × 384 images is written about 10 % faster with streaming stores.)
inline constexpr std::size_t streaming_store_min_bytes = std::size_t{8} << 20;

#if CONSR_HAS_STREAMING_STORES
/// Bytes one streaming store writes: the widest vector register the compiler targets.
#if defined(__AVX512F__)
inline constexpr std::size_t streaming_store_width = 64;
#elif defined(__AVX__)
inline constexpr std::size_t streaming_store_width = 32;
#else
inline constexpr std::size_t streaming_store_width = 16;
#endif
#endif

/// True when an output of `bytes` bytes should be written with streaming stores.
inline bool use_streaming_stores(double bytes) noexcept {
  return CONSR_HAS_STREAMING_STORES && bytes >= static_cast<double>(streaming_store_min_bytes);
}

/// Copies `bytes` bytes from `src` (a small, cache-resident scratch buffer) to `dst` with streaming
/// stores for the 16/32/64-byte-aligned middle part and plain copies for the unaligned ends. The
/// ranges must not overlap. Call streaming_store_fence() before another thread (or a plain store of
/// this thread to the same bytes) may depend on the data: streaming stores are weakly ordered.
inline void copy_streaming(void* dst, const void* src, std::size_t bytes) noexcept {
#if CONSR_HAS_STREAMING_STORES
  constexpr std::size_t width = streaming_store_width;
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
  const std::size_t head = (width - reinterpret_cast<std::uintptr_t>(d) % width) % width;
  if (bytes < head + width) {
    std::memcpy(d, s, bytes);
    return;
  }
  std::memcpy(d, s, head);
  d += head;
  s += head;
  bytes -= head;
  const std::size_t body = bytes - bytes % width;
  for (std::size_t off = 0; off < body; off += width) {
#if defined(__AVX512F__)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d + off), _mm512_loadu_si512(s + off));
#elif defined(__AVX__)
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + off), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + off)));
#else
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + off), _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + off)));
#endif
  }
  std::memcpy(d + body, s + body, bytes - body);
#else
  std::memcpy(dst, src, bytes);
#endif
}

/// Software prefetch of [p, p + bytes), one request per 64-byte line, for writing when
/// `for_write`: compute-bound loops request the data of their next piece of work meanwhile, so
/// that the memory traffic overlaps the arithmetic instead of following it.
CONSR_FORCEINLINE void prefetch_range(const void* p, std::size_t bytes, bool for_write) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  const char* bytes_begin = static_cast<const char*>(p);
  for (std::size_t off = 0; off < bytes; off += 64) {
    if (for_write) __builtin_prefetch(bytes_begin + off, 1, 3);
    else __builtin_prefetch(bytes_begin + off, 0, 3);
  }
#else
  (void)p;
  (void)bytes;
  (void)for_write;
#endif
}

/// Distance and stride of prefetch_ahead_to_l2.
inline constexpr std::size_t prefetch_ahead_stride = 2048;

/// One L2 prefetch per 2 KiB of [p, p + bytes): a sparse request far ahead of a stream. Hardware
/// prefetchers stop at 4 KiB page boundaries and restart only after several misses in the next
/// page; a few early requests per page start them there in time, and they bring the rest of the
/// page to L2 (measured on the benchmark machine: the log-probs forward reads 28 % faster at one
/// thread with these requests 32 KiB ahead of it).
CONSR_FORCEINLINE void prefetch_ahead_to_l2(const void* p, std::size_t bytes) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  const char* bytes_begin = static_cast<const char*>(p);
  for (std::size_t off = 0; off < bytes; off += prefetch_ahead_stride) __builtin_prefetch(bytes_begin + off, 0, 1);
#else
  (void)p;
  (void)bytes;
#endif
}

/// Orders this thread's earlier streaming stores before its later stores (x86 SFENCE; a no-op
/// without streaming stores).
inline void streaming_store_fence() noexcept {
#if CONSR_HAS_STREAMING_STORES
  _mm_sfence();
#endif
}

}  // namespace detail
}  // namespace consr
