// The CUDA simulator's runtime: launches, fibers, barriers, warp collectives and the shared
// memory race checker. Single-threaded: blocks run one after the other, a block's threads as
// fibers switched by a small hand-written context switch (x86-64).
#include <dlfcn.h>
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "control.h"
#include "cuda_sim.h"

#if !defined(__x86_64__)
#error "the CUDA simulator's context switch is written for x86-64"
#endif

// The runtime itself is not traced: only kernel code reports its loads and stores.
#pragma clang attribute push(__attribute__((no_sanitize("coverage"))), apply_to = function)

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

// Linker-provided bounds of the section holding every __shared__ array (weak: none may exist).
extern "C" __attribute__((weak)) char __start_cuda_sim_shared[];
extern "C" __attribute__((weak)) char __stop_cuda_sim_shared[];

// void cuda_sim_switch(void** save_sp, void* next_sp): saves the callee-saved registers, MXCSR
// and the x87 control word on the current stack, stores its pointer, and resumes `next_sp`.
asm(R"(
  .text
  .p2align 4
  .type cuda_sim_switch, @function
cuda_sim_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuda_sim_switch, .-cuda_sim_switch
)");
extern "C" void cuda_sim_switch(void** save_sp, void* next_sp);

namespace cuda_sim {
namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kGuardBytes = 4096;

enum class State { Ready, Barrier, Warp, Done };

struct Fiber {
  void* sp = nullptr;
  char* stack = nullptr;  // lowest usable byte; a guard page lies below
  State state = State::Ready;
  uint3 tid{0, 0, 0};
  int linear = 0;
  const char* file = nullptr;  // where it waits
  int line = 0;
  WarpOp op = WarpOp::Sync;
  unsigned int mask = 0;
  uint64_t value = 0, result = 0;
  int arg = 0, width = 32;
  void* fake_stack = nullptr;
};

// Shadow state of one 4-byte word of shared memory, valid for block generation `gen`.
struct Word {
  uint32_t gen = 0, epoch = 0, written_gen = 0;
  int32_t writer = -1, reader = -1, reader2 = -1;
  const void* writer_pc = nullptr;
  const void* reader_pc = nullptr;
};

struct Runtime {
  cudaError_t last_error = cudaSuccess;
  std::unordered_map<const void*, size_t> shared_opt_in;
  std::vector<char*> dynamic_shared;
  uintptr_t dynamic_lo = UINTPTR_MAX, dynamic_hi = 0;  // the range they span
  std::map<std::string, int64_t> launches;
  uint64_t atomics = 0;
  uint64_t seed = 1;

  // the launch and block being run
  const LaunchConfig* config = nullptr;
  void (*invoke)(void*) = nullptr;
  void* closure = nullptr;
  std::vector<Fiber> fibers;
  std::vector<char*> stacks;       // one per thread index, reused by every block
  std::vector<bool> stack_dirty;   // abandoned mid-kernel: its frames' redzones are poisoned
  std::vector<int> ready;
  size_t next_ready = 0;
  Fiber* current = nullptr;
  void* scheduler_sp = nullptr;
  void* scheduler_fake_stack = nullptr;
  const void* scheduler_stack_bottom = nullptr;
  size_t scheduler_stack_size = 0;
  uint32_t gen = 0, epoch = 0;
  std::string error;  // the first error of the block; stops it
  std::string uninitialized;  // the first read of unwritten shared memory: reported at the
                              // block's end unless a race (its likely cause) is found first

  std::vector<Word> shadow;
  uintptr_t shared_lo = 0;
  size_t shared_len = 0;
};

// Where the shared section lies while a block runs (empty otherwise): plain globals, so the
// load/store callbacks' fast path touches nothing that needs construction.
uintptr_t g_traced_lo = 0;
size_t g_traced_len = 0;

Runtime& rt() {
  static Runtime* r = new Runtime;  // never destroyed: kernels may run during exit
  return *r;
}

std::string dim_str(uint3 v) {
  std::ostringstream s;
  s << "(" << v.x << ", " << v.y << ", " << v.z << ")";
  return s.str();
}

std::string where(const LaunchConfig& c) {
  std::ostringstream s;
  s << "kernel " << c.name << " (launched at " << c.file << ":" << c.line << ") block "
    << dim_str({blockIdx.x, blockIdx.y, blockIdx.z});
  return s.str();
}

std::string symbolize(const void* pc) {
  if (pc == nullptr) return "?";
  char buf[512];
  __sanitizer_symbolize_pc(const_cast<void*>(pc), "%L in %f", buf, sizeof(buf));
  return buf;
}

std::string thread_str(int linear) {
  const Fiber& f = rt().fibers[static_cast<size_t>(linear)];
  return "thread " + dim_str(f.tid);
}

void fail(const std::string& what) {
  Runtime& r = rt();
  if (r.error.empty()) r.error = "cuda_sim: " + what + " in " + where(*r.config);
}

// ---- fibers ----

void switch_to_scheduler(Fiber& f, bool finished) {
  Runtime& r = rt();
  __sanitizer_start_switch_fiber(finished ? nullptr : &f.fake_stack, r.scheduler_stack_bottom,
                                 r.scheduler_stack_size);
  cuda_sim_switch(&f.sp, r.scheduler_sp);
  __sanitizer_finish_switch_fiber(f.fake_stack, &r.scheduler_stack_bottom,
                                  &r.scheduler_stack_size);
}

[[noreturn]] void fiber_main() {
  Runtime& r = rt();
  __sanitizer_finish_switch_fiber(nullptr, &r.scheduler_stack_bottom, &r.scheduler_stack_size);
  r.invoke(r.closure);
  Fiber& f = *r.current;
  f.state = State::Done;
  switch_to_scheduler(f, true);
  __builtin_unreachable();
}

char* new_stack() {
  void* p = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw std::runtime_error("cuda_sim: cannot map a fiber stack");
  mprotect(p, kGuardBytes, PROT_NONE);  // a stack overflow faults instead of corrupting
  return static_cast<char*>(p) + kGuardBytes;
}

void start_fiber(Fiber& f, size_t index) {
  Runtime& r = rt();
  if (r.stacks.size() <= index) {
    r.stacks.push_back(new_stack());
    r.stack_dirty.push_back(false);
  }
  f.stack = r.stacks[index];
  if (r.stack_dirty[index]) {
    __asan_unpoison_memory_region(f.stack, kStackBytes);
    r.stack_dirty[index] = false;
  }
  auto* top = reinterpret_cast<uintptr_t*>(f.stack + kStackBytes);
  top[-1] = 0;  // fiber_main's return address: it never returns
  top[-2] = reinterpret_cast<uintptr_t>(&fiber_main);
  for (int i = 3; i <= 8; ++i) top[-i] = 0;  // rbp, rbx, r12..r15
  const uint32_t mxcsr = 0x1f80;              // default: round to nearest, exceptions masked
  const uint16_t fpu_cw = 0x037f;
  std::memcpy(&top[-9], &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(&top[-9]) + 4, &fpu_cw, 2);
  f.sp = &top[-9];
  f.state = State::Ready;
  f.fake_stack = nullptr;
}

void resume(Fiber& f) {
  Runtime& r = rt();
  r.current = &f;
  threadIdx = f.tid;
  __sanitizer_start_switch_fiber(&r.scheduler_fake_stack, f.stack, kStackBytes);
  cuda_sim_switch(&r.scheduler_sp, f.sp);
  __sanitizer_finish_switch_fiber(r.scheduler_fake_stack, nullptr, nullptr);
  r.current = nullptr;
}

// The calling fiber waits (state already set) until the scheduler resumes it.
void block_current() {
  Runtime& r = rt();
  switch_to_scheduler(*r.current, false);
}

void shuffle_ready(uint64_t salt) {
  Runtime& r = rt();
  std::mt19937_64 gen(r.seed * 0x9e3779b97f4a7c15ull ^ salt);
  std::shuffle(r.ready.begin(), r.ready.end(), gen);
  r.next_ready = 0;
}

// ---- shared memory checks ----

void setup_shadow() {
  Runtime& r = rt();
  r.shared_lo = reinterpret_cast<uintptr_t>(__start_cuda_sim_shared);
  r.shared_len = static_cast<size_t>(__stop_cuda_sim_shared - __start_cuda_sim_shared);
  if (r.shadow.size() < (r.shared_len + 3) / 4) r.shadow.resize((r.shared_len + 3) / 4);
}

std::string shared_offset(uintptr_t addr) {
  Runtime& r = rt();
  for (char* base : r.dynamic_shared) {
    const auto b = reinterpret_cast<uintptr_t>(base);
    if (addr >= b && addr < b + kMaxSharedBytes)
      return "offset " + std::to_string(addr - b) + " of extern __shared__ memory";
  }
  return "offset " + std::to_string(addr - r.shared_lo) + " of the static __shared__ arrays";
}

void race(const char* kind, uintptr_t addr, int other, const void* other_pc, const void* pc) {
  Runtime& r = rt();
  fail(std::string("shared-memory race (") + kind + ") at " + shared_offset(addr) + ": " +
       thread_str(other) + " at " + symbolize(other_pc) + " and " +
       thread_str(r.current->linear) + " at " + symbolize(pc) + ", between barriers " +
       std::to_string(r.epoch) + " and " + std::to_string(r.epoch + 1));
}

void check_dynamic_bounds(uintptr_t addr, size_t size, const void* pc) {
  Runtime& r = rt();
  if (addr < r.dynamic_lo || addr >= r.dynamic_hi) return;
  for (char* base : r.dynamic_shared) {
    const auto b = reinterpret_cast<uintptr_t>(base);
    if (addr >= b && addr < b + kMaxSharedBytes) {
      if (addr + size > b + r.config->shared_bytes)
        fail("out-of-bounds extern __shared__ access (" + std::to_string(size) +
             " bytes at offset " + std::to_string(addr - b) + ", the launch gave " +
             std::to_string(r.config->shared_bytes) + " bytes) by " +
             thread_str(r.current->linear) + " at " + symbolize(pc));
      return;
    }
  }
}

void track(uintptr_t addr, size_t size, bool write, const void* pc) {
  Runtime& r = rt();
  if (r.current == nullptr || !r.error.empty()) return;
  check_dynamic_bounds(addr, size, pc);
  const int t = r.current->linear;
  const size_t first = (addr - r.shared_lo) / 4, last = (addr + size - 1 - r.shared_lo) / 4;
  for (size_t i = first; i <= last && i < r.shadow.size(); ++i) {
    Word& w = r.shadow[i];
    if (w.gen != r.gen || w.epoch != r.epoch) {
      w.gen = r.gen;
      w.epoch = r.epoch;
      w.writer = w.reader = w.reader2 = -1;
    }
    const uintptr_t word_addr = r.shared_lo + 4 * i;
    if (write) {
      if (w.writer >= 0 && w.writer != t)
        return race("write after write", word_addr, w.writer, w.writer_pc, pc);
      const int reader = w.reader >= 0 && w.reader != t ? w.reader : w.reader2;
      if (reader >= 0 && reader != t)
        return race("write after read", word_addr, reader, w.reader_pc, pc);
      w.writer = t;
      w.writer_pc = pc;
      w.written_gen = r.gen;
    } else {
      if (w.written_gen != r.gen && r.uninitialized.empty())
        r.uninitialized = "read of uninitialized shared memory at " + shared_offset(word_addr) +
                          " by " + thread_str(t) + " at " + symbolize(pc);
      if (w.writer >= 0 && w.writer != t)
        return race("read after write", word_addr, w.writer, w.writer_pc, pc);
      if (w.reader < 0) {
        w.reader = t;
        w.reader_pc = pc;
      } else if (w.reader != t && w.reader2 < 0) {
        w.reader2 = t;
      }
    }
  }
}

inline void on_access(const void* p, size_t size, bool write, const void* pc) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  if (addr - g_traced_lo < g_traced_len) track(addr, size, write, pc);
}

// ---- blocks ----

std::string site(const Fiber& f) { return std::string(f.file) + ":" + std::to_string(f.line); }
bool same_site(const Fiber& a, const Fiber& b) {
  return a.line == b.line && (a.file == b.file || std::strcmp(a.file, b.file) == 0);
}

// Called when no fiber is ready: releases a barrier, finishes the block, or reports why the
// block cannot go on. Returns false when the block is done (or failed).
bool at_standstill() {
  Runtime& r = rt();
  const Fiber* at_barrier = nullptr;
  const Fiber* exited = nullptr;
  for (const Fiber& f : r.fibers) {
    if (f.state == State::Warp) {
      for (int lane = 0; lane < 32; ++lane) {
        if (!(f.mask >> lane & 1u)) continue;
        const size_t other = static_cast<size_t>(f.linear / 32 * 32 + lane);
        const Fiber& o = r.fibers[other];
        if (o.state == State::Warp) continue;
        const std::string why = o.state == State::Done ? "it exited"
                                                       : "it waits at __syncthreads() at " + site(o);
        fail("warp collective at " + site(f) + " by " + thread_str(f.linear) + ": lane " +
             std::to_string(lane) + " of its mask never arrives (" + why + ")");
        return false;
      }
    }
    if (f.state == State::Barrier && at_barrier == nullptr) at_barrier = &f;
    if (f.state == State::Done && exited == nullptr) exited = &f;
  }
  if (at_barrier == nullptr) return false;  // every thread has finished
  if (exited != nullptr) {
    fail("barrier divergence: " + thread_str(at_barrier->linear) + " waits at __syncthreads() at " +
         site(*at_barrier) + " but " + thread_str(exited->linear) + " has exited");
    return false;
  }
  for (const Fiber& f : r.fibers) {
    if (!same_site(f, *at_barrier)) {
      fail("barrier divergence: " + thread_str(at_barrier->linear) + " waits at " +
           site(*at_barrier) + " and " + thread_str(f.linear) + " at " + site(f));
      return false;
    }
  }
  ++r.epoch;
  r.ready.clear();
  for (Fiber& f : r.fibers) {
    f.state = State::Ready;
    r.ready.push_back(f.linear);
  }
  shuffle_ready((uint64_t(r.gen) << 32) + r.epoch);
  return true;
}

void run_block(unsigned int threads) {
  Runtime& r = rt();
  ++r.gen;
  r.epoch = 0;
  r.uninitialized.clear();
  r.fibers.assign(threads, Fiber());
  r.ready.clear();
  const dim3 b = r.config->block;
  for (unsigned int i = 0; i < threads; ++i) {
    Fiber& f = r.fibers[i];
    start_fiber(f, i);
    f.linear = static_cast<int>(i);
    f.tid = {i % b.x, i / b.x % b.y, i / (b.x * b.y)};
    r.ready.push_back(static_cast<int>(i));
  }
  shuffle_ready(uint64_t(r.gen) << 32);
  for (;;) {
    while (r.next_ready < r.ready.size() && r.error.empty())
      resume(r.fibers[static_cast<size_t>(r.ready[r.next_ready++])]);
    if (!r.error.empty() || !at_standstill()) break;
  }
  if (!r.uninitialized.empty()) fail(r.uninitialized);
  if (!r.error.empty()) {
    for (size_t i = 0; i < r.fibers.size(); ++i)
      if (r.fibers[i].state != State::Done) r.stack_dirty[i] = true;
    std::string message;
    message.swap(r.error);
    throw std::runtime_error(message);
  }
}

std::string base_name(const char* name) {
  std::string s(name);
  s = s.substr(0, s.find('<'));
  s.erase(std::remove(s.begin(), s.end(), ' '), s.end());
  return s;
}

}  // namespace

// ---- launches ----

bool register_dynamic_shared(void* base) {
  Runtime& r = rt();
  r.dynamic_shared.push_back(static_cast<char*>(base));
  const auto b = reinterpret_cast<uintptr_t>(base);
  r.dynamic_lo = std::min(r.dynamic_lo, b);
  r.dynamic_hi = std::max(r.dynamic_hi, b + kMaxSharedBytes);
  return true;
}

void run_launch(const LaunchConfig& config, void (*invoke)(void*), void* closure) {
  Runtime& r = rt();
  const dim3 g = config.grid, b = config.block;
  const uint64_t threads = uint64_t(b.x) * b.y * b.z;
  const auto opt_in = r.shared_opt_in.find(config.kernel);
  const size_t shared_limit = opt_in == r.shared_opt_in.end() ? kDefaultSharedBytes
                                                              : std::max(kDefaultSharedBytes,
                                                                         opt_in->second);
  if (threads == 0 || threads > kMaxThreads || b.z > 64 || g.x == 0 || g.y == 0 || g.z == 0 ||
      g.x > 2147483647u || g.y > 65535 || g.z > 65535 || config.shared_bytes > shared_limit) {
    r.last_error = cudaErrorInvalidConfiguration;
    return;
  }
  ++r.launches[std::string(config.file) + ":" + base_name(config.name)];
  setup_shadow();
  r.config = &config;
  r.invoke = invoke;
  r.closure = closure;
  gridDim = g;
  blockDim = b;
  g_traced_lo = r.shared_lo;
  g_traced_len = r.shared_len;
  try {
    for (unsigned int z = 0; z < g.z; ++z)
      for (unsigned int y = 0; y < g.y; ++y)
        for (unsigned int x = 0; x < g.x; ++x) {
          blockIdx = {x, y, z};
          run_block(static_cast<unsigned int>(threads));
        }
  } catch (...) {
    g_traced_len = 0;
    r.config = nullptr;
    throw;
  }
  g_traced_len = 0;
  r.config = nullptr;
}

// ---- synchronisation ----

void syncthreads(const char* file, int line) {
  Runtime& r = rt();
  Fiber& f = *r.current;
  f.state = State::Barrier;
  f.file = file;
  f.line = line;
  block_current();
}

namespace {
uint64_t warp_result(const Fiber& f, const Fiber* lanes) {
  const int lane = f.linear % 32;
  const int w = f.width, seg = lane & ~(w - 1);
  int src = lane;
  switch (f.op) {
    case WarpOp::Shfl: src = seg + (f.arg & (w - 1)); break;
    case WarpOp::ShflUp: src = lane - f.arg >= seg ? lane - f.arg : lane; break;
    case WarpOp::ShflDown: src = lane + f.arg < seg + w ? lane + f.arg : lane; break;
    case WarpOp::ShflXor: src = (lane ^ f.arg) >= seg && (lane ^ f.arg) < seg + w ? lane ^ f.arg : lane; break;
    case WarpOp::Sync: return 0;
    default: {
      uint64_t ballot = 0;
      for (int l = 0; l < 32; ++l)
        if ((f.mask >> l & 1u) && lanes[l].value != 0) ballot |= uint64_t(1) << l;
      if (f.op == WarpOp::Ballot) return ballot;
      if (f.op == WarpOp::Any) return ballot != 0;
      return ballot == f.mask;
    }
  }
  if (!(f.mask >> src & 1u))
    fail("warp shuffle at " + site(f) + ": " + thread_str(f.linear) + " reads lane " +
         std::to_string(src) + ", which is not in its mask");
  return lanes[src].value;
}
}  // namespace

uint64_t warp_collective(WarpOp op, unsigned int mask, uint64_t value, int arg, int width,
                         const char* file, int line) {
  Runtime& r = rt();
  Fiber& f = *r.current;
  const int lane = f.linear % 32, warp_base = f.linear - lane;
  f.file = file;
  f.line = line;
  if (!(mask >> lane & 1u)) {
    fail("warp collective at " + std::string(file) + ":" + std::to_string(line) + ": " +
         thread_str(f.linear) + " calls it with a mask (0x" + std::to_string(mask) +
         ") that does not name its own lane");
    block_current();
  }
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    fail("warp shuffle at " + std::string(file) + ":" + std::to_string(line) +
         ": width must be a power of two up to 32");
    block_current();
  }
  f.op = op;
  f.mask = mask;
  f.value = value;
  f.arg = arg;
  f.width = width;
  f.state = State::Warp;
  Fiber* lanes = &r.fibers[static_cast<size_t>(warp_base)];
  const int lanes_present = std::min(32, static_cast<int>(r.fibers.size()) - warp_base);
  bool complete = true;
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    if (l >= lanes_present) {
      fail("warp collective at " + site(f) + ": its mask names lane " + std::to_string(l) +
           ", which the block does not have");
      block_current();
    }
    const Fiber& o = lanes[l];
    if (o.state == State::Done) {
      fail("warp collective at " + site(f) + " by " + thread_str(f.linear) + ": lane " +
           std::to_string(l) + " of its mask has exited");
      block_current();
    }
    if (o.state != State::Warp) {
      complete = false;
    } else if (o.op != op || o.mask != mask) {
      fail("warp collectives differ: " + thread_str(f.linear) + " at " + site(f) + " and " +
           thread_str(o.linear) + " at " + site(o));
      block_current();
    }
  }
  if (!complete) {
    block_current();
    return f.result;
  }
  for (int l = 0; l < 32; ++l)
    if (mask >> l & 1u) lanes[l].result = warp_result(lanes[l], lanes);
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u) || l == lane) continue;
    lanes[l].state = State::Ready;
    r.ready.push_back(warp_base + l);
  }
  f.state = State::Ready;
  return f.result;
}

unsigned int active_mask() {
  // Threads are scheduled independently: only the calling lane is known to be converged.
  return 1u << (rt().current->linear % 32);
}

void count_atomic() { ++rt().atomics; }

// ---- controls ----

void set_seed(uint64_t seed) { rt().seed = seed; }
std::map<std::string, int64_t> launch_counts() { return rt().launches; }
uint64_t atomics_executed() { return rt().atomics; }

}  // namespace cuda_sim

// ---- runtime API ----

cudaError_t cudaGetLastError() {
  const cudaError_t err = cuda_sim::rt().last_error;
  cuda_sim::rt().last_error = cudaSuccess;
  return err;
}

cudaError_t cudaPeekAtLastError() { return cuda_sim::rt().last_error; }

const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "unspecified launch failure";
  }
}

cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      static_cast<size_t>(value) > cuda_sim::kMaxSharedBytes)
    return cudaErrorInvalidValue;
  cuda_sim::rt().shared_opt_in[kernel] = static_cast<size_t>(value);
  return cudaSuccess;
}

// ---- load and store callbacks (-fsanitize-coverage=trace-loads,trace-stores) ----

#define CUDA_SIM_TRACE(bits, bytes)                                                          \
  extern "C" __attribute__((visibility("hidden"))) void __sanitizer_cov_load##bytes(         \
      uint##bits##_t* p) {                                                                   \
    cuda_sim::on_access(p, bytes, false, __builtin_return_address(0));                       \
  }                                                                                          \
  extern "C" __attribute__((visibility("hidden"))) void __sanitizer_cov_store##bytes(        \
      uint##bits##_t* p) {                                                                   \
    cuda_sim::on_access(p, bytes, true, __builtin_return_address(0));                        \
  }
CUDA_SIM_TRACE(8, 1)
CUDA_SIM_TRACE(16, 2)
CUDA_SIM_TRACE(32, 4)
CUDA_SIM_TRACE(64, 8)
#undef CUDA_SIM_TRACE
extern "C" __attribute__((visibility("hidden"))) void __sanitizer_cov_load16(__int128* p) {
  cuda_sim::on_access(p, 16, false, __builtin_return_address(0));
}
extern "C" __attribute__((visibility("hidden"))) void __sanitizer_cov_store16(__int128* p) {
  cuda_sim::on_access(p, 16, true, __builtin_return_address(0));
}

// Block copies and fills (struct assignments, memset) reach ASan as calls, not as traced loads
// and stores: these hidden definitions take the .so's calls, record the accesses and hand on.
namespace {
template <typename F> F asan_function(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_DEFAULT, name));
}
}  // namespace
extern "C" __attribute__((visibility("hidden"))) void* __asan_memcpy(void* d, const void* s,
                                                                     size_t n) {
  static auto* real = asan_function<void* (*)(void*, const void*, size_t)>("__asan_memcpy");
  if (n > 0) {
    cuda_sim::on_access(s, n, false, __builtin_return_address(0));
    cuda_sim::on_access(d, n, true, __builtin_return_address(0));
  }
  return real(d, s, n);
}
extern "C" __attribute__((visibility("hidden"))) void* __asan_memmove(void* d, const void* s,
                                                                      size_t n) {
  static auto* real = asan_function<void* (*)(void*, const void*, size_t)>("__asan_memmove");
  if (n > 0) {
    cuda_sim::on_access(s, n, false, __builtin_return_address(0));
    cuda_sim::on_access(d, n, true, __builtin_return_address(0));
  }
  return real(d, s, n);
}
extern "C" __attribute__((visibility("hidden"))) void* __asan_memset(void* d, int c, size_t n) {
  static auto* real = asan_function<void* (*)(void*, int, size_t)>("__asan_memset");
  if (n > 0) cuda_sim::on_access(d, n, true, __builtin_return_address(0));
  return real(d, c, n);
}

#pragma clang attribute pop
