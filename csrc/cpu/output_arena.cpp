#include "cpu/output_arena.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>

#include <algorithm>
#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>
#if defined(__linux__)
#include <pthread.h>
#include <sys/mman.h>
#endif

#include "torch_utils.h"

namespace rtseg {
namespace {

constexpr size_t kHugePage = size_t(1) << 21;
constexpr size_t kMinCachedBytes = size_t(32) << 20;  // glibc's largest mmap threshold

struct Block {
  void* data;
  size_t capacity;
};

size_t cache_limit_from_env() {
  const char* mib = std::getenv("RTSEG_CPU_CACHE_MIB");
  if (mib == nullptr || *mib == '\0') return size_t(512) << 20;
  char* end = nullptr;
  const long long value = std::strtoll(mib, &end, 10);
  TORCH_CHECK(*end == '\0' && value >= 0,
              "RTSEG_CPU_CACHE_MIB: expected a non-negative whole number of MiB, got \"", mib,
              "\"");
  return static_cast<size_t>(value) << 20;
}

void* map_block(size_t capacity) {
  void* data = nullptr;
  if (posix_memalign(&data, kHugePage, capacity) != 0) return nullptr;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  madvise(data, capacity, MADV_HUGEPAGE);  // only a hint: nothing changes where THP is off
#endif
  return data;
}

class OutputArena;
OutputArena& arena();

class OutputArena final : public c10::Allocator {
 public:
  OutputArena() : limit_(cache_limit_from_env()) {
#if defined(__linux__)
    // A fork while another thread holds the lock would leave the child's copy locked forever (a
    // DataLoader worker's first large free would hang): hold it across fork, as glibc's malloc does.
    pthread_atfork([] { arena().mutex_.lock(); }, [] { arena().mutex_.unlock(); },
                   [] { arena().mutex_.unlock(); });
#endif
  }

  bool enabled() const { return limit_ > 0; }

  c10::DataPtr allocate(size_t bytes) override {
    const size_t capacity = (std::max<size_t>(bytes, 1) + kHugePage - 1) / kHugePage * kHugePage;
    Block* block = take_cached(capacity);
    if (block == nullptr) {
      void* data = map_block(capacity);
      if (data == nullptr) {  // the cached blocks may be what stands in the way
        empty_cache();
        data = map_block(capacity);
      }
      TORCH_CHECK_WITH(OutOfMemoryError, data != nullptr, "rtseg: could not allocate ", bytes,
                       " bytes of CPU memory");
      block = new Block{data, capacity};
    }
    return {block->data, block, &give_back, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  int64_t empty_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto released = static_cast<int64_t>(cached_bytes_);
    for (auto& entry : free_) release(entry.second);
    free_.clear();
    cached_bytes_ = 0;
    return released;
  }

 private:
  // A cached block serves a request that needs at least 4/5 of it, so that a small output never
  // pins a much larger block.
  Block* take_cached(size_t capacity) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.lower_bound(capacity);
    if (it == free_.end() || it->first - capacity > it->first / 5) return nullptr;
    Block* block = it->second;
    free_.erase(it);
    cached_bytes_ -= block->capacity;
    return block;
  }

  static void give_back(void* context);

  void put(Block* block) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (block->capacity > limit_) return release(block);
    // Over the limit, the largest cached blocks go first.
    while (cached_bytes_ + block->capacity > limit_) {
      auto largest = std::prev(free_.end());
      cached_bytes_ -= largest->first;
      release(largest->second);
      free_.erase(largest);
    }
    free_.emplace(block->capacity, block);
    cached_bytes_ += block->capacity;
  }

  static void release(Block* block) {
    std::free(block->data);
    delete block;
  }

  const size_t limit_;
  std::mutex mutex_;
  std::multimap<size_t, Block*> free_;
  size_t cached_bytes_ = 0;
};

// Never destroyed: tensors from it may be freed during interpreter shutdown, after static
// destructors have run.
OutputArena& arena() {
  static auto* instance = new OutputArena();
  return *instance;
}

void OutputArena::give_back(void* context) { arena().put(static_cast<Block*>(context)); }

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_INTERNAL_ASSERT(options.device().is_cpu());
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) *
                       c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  if (bytes < kMinCachedBytes || !arena().enabled()) return at::empty(sizes, options);
  return at::detail::empty_generic(sizes, &arena(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()),
                                   options.memory_format_opt());
}

at::Tensor empty_output_like(const at::Tensor& t) {
  return empty_output(t.sizes(), t.options().memory_format(output_format(t)));
}

int64_t empty_cpu_cache() { return arena().empty_cache(); }

}  // namespace rtseg
