// The CUDA emulation's launch: blocks one after another, each block's threads as fibers that run
// phase by phase between __syncthreads() barriers (see cuda_emulation.h). Test-only.

#include "emulation/cuda_emulation.h"

#include <sys/mman.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <sstream>
#include <stdexcept>

thread_local uint3 threadIdx{0, 0, 0};
thread_local uint3 blockIdx{0, 0, 0};
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace carafe_exp {
namespace emulation {
namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kCanaryBytes = 256;  // also keeps the shared memory 16-byte aligned
constexpr unsigned char kCanary = 0xA5;
constexpr unsigned char kPoison = 0xFF;  // 0xFF.. is a NaN as float, double, half and bfloat16
constexpr int64_t kMaxThreads = 1024;
constexpr int64_t kMaxDynamicShared = 48 * 1024;  // without cudaFuncSetAttribute

enum class State { runnable, at_barrier, finished };

struct Fiber {
  ucontext_t context;
  uint3 index;
  State state;
};

// Fiber stacks, reused from block to block, each above a guard page so that an overflow faults
// instead of silently overwriting the neighbouring stack.
class StackPool {
 public:
  ~StackPool() { release(); }

  char* stack(size_t i) { return static_cast<char*>(base_) + i * stride_ + page_; }

  void reserve(size_t count) {
    if (count <= count_) return;
    release();
    page_ = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    stride_ = page_ + kStackBytes;
    void* base = mmap(nullptr, count * stride_, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) throw std::runtime_error("CUDA emulation: cannot map fiber stacks");
    base_ = base;
    count_ = count;
    for (size_t i = 0; i < count; ++i) {
      mprotect(static_cast<char*>(base_) + i * stride_, page_, PROT_NONE);
    }
  }

 private:
  void release() {
    if (base_ != nullptr) munmap(base_, count_ * stride_);
    base_ = nullptr;
    count_ = 0;
  }

  void* base_ = nullptr;
  size_t count_ = 0, stride_ = 0, page_ = 0;
};

struct BlockRun {
  const std::function<void()>* kernel = nullptr;
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  ucontext_t scheduler;
  unsigned char* shared = nullptr;
  std::string error;  // the first problem a thread of this block reported
  int64_t vector_loads = 0;
};

thread_local BlockRun* running = nullptr;
thread_local StackPool stacks;

std::mutex records_mutex;
std::vector<LaunchRecord> records;
std::atomic<Fault> active_fault{Fault::none};

// Under AddressSanitizer the canaries are poisoned: a read of them is reported, not just a write.
void poison(const unsigned char* begin, size_t bytes, bool on) {
#if defined(__SANITIZE_ADDRESS__)
  if (on) {
    ASAN_POISON_MEMORY_REGION(begin, bytes);
  } else {
    ASAN_UNPOISON_MEMORY_REGION(begin, bytes);
  }
#else
  (void)begin, (void)bytes, (void)on;
#endif
}

void report(const std::string& message) {
  if (running != nullptr && running->error.empty()) {
    std::ostringstream where;
    where << message << " (thread " << threadIdx.x << "," << threadIdx.y << "," << threadIdx.z
          << ")";
    running->error = where.str();
  }
}

void fiber_main() {
  BlockRun* run = running;
  (*run->kernel)();
  run->current->state = State::finished;
  // Returning resumes uc_link, the block's scheduler.
}

std::string block_name(const uint3& b) {
  std::ostringstream out;
  out << "block (" << b.x << "," << b.y << "," << b.z << ")";
  return out.str();
}

// Runs every thread of the current block to completion, phase by phase. Returns the number of
// barriers passed.
int64_t run_block(BlockRun& run, ThreadOrder order) {
  const size_t threads = run.fibers.size();
  int64_t barriers = 0;
  while (true) {
    for (size_t i = 0; i < threads; ++i) {
      Fiber& fiber = run.fibers[order == ThreadOrder::ascending ? i : threads - 1 - i];
      if (fiber.state != State::runnable) continue;
      run.current = &fiber;
      threadIdx = fiber.index;
      swapcontext(&run.scheduler, &fiber.context);
    }
    const size_t finished = std::count_if(run.fibers.begin(), run.fibers.end(), [](const Fiber& f) {
      return f.state == State::finished;
    });
    if (finished == threads) return barriers;
    if (finished > 0) {
      std::ostringstream message;
      message << (threads - finished) << " of " << threads
              << " threads wait at __syncthreads() that the others never reach (a barrier in "
                 "divergent code)";
      if (run.error.empty()) run.error = message.str();
      return barriers;  // the waiting fibers are abandoned; their stacks are reused
    }
    ++barriers;
    for (Fiber& fiber : run.fibers) fiber.state = State::runnable;
  }
}

}  // namespace

void launch(const std::string& name, dim3 grid, dim3 block, int64_t shared_bytes,
            ThreadOrder order, const std::function<void()>& kernel) {
  const int64_t threads = int64_t(block.x) * block.y * block.z;
  const int64_t blocks = int64_t(grid.x) * grid.y * grid.z;
  if (threads < 1 || threads > kMaxThreads || blocks < 1) {
    throw std::runtime_error(name + ": invalid launch of " + std::to_string(blocks) + " blocks of " +
                             std::to_string(threads) + " threads (1 to 1024 threads per block)");
  }
  if (shared_bytes < 0 || shared_bytes > kMaxDynamicShared) {
    throw std::runtime_error(name + ": " + std::to_string(shared_bytes) +
                             " bytes of dynamic shared memory, more than the 48 KiB a launch gets "
                             "without cudaFuncSetAttribute");
  }
  gridDim = grid;
  blockDim = block;
  stacks.reserve(static_cast<size_t>(threads));
  std::vector<unsigned char> shared(2 * kCanaryBytes + static_cast<size_t>(shared_bytes));
  BlockRun run;
  run.kernel = &kernel;
  run.fibers.resize(static_cast<size_t>(threads));
  run.shared = shared.data() + kCanaryBytes;
  LaunchRecord record{name, grid, block, shared_bytes, 0, 0, 0};
  for (unsigned int bz = 0; bz < grid.z; ++bz) {
    for (unsigned int by = 0; by < grid.y; ++by) {
      for (unsigned int bx = 0; bx < grid.x; ++bx) {
        blockIdx = {bx, by, bz};
        std::memset(shared.data(), kCanary, kCanaryBytes);
        std::memset(run.shared, kPoison, static_cast<size_t>(shared_bytes));
        std::memset(run.shared + shared_bytes, kCanary, kCanaryBytes);
        run.error.clear();
        for (int64_t t = 0; t < threads; ++t) {
          Fiber& fiber = run.fibers[static_cast<size_t>(t)];
          fiber.index = {static_cast<unsigned int>(t % block.x),
                         static_cast<unsigned int>((t / block.x) % block.y),
                         static_cast<unsigned int>(t / (int64_t(block.x) * block.y))};
          fiber.state = State::runnable;
          getcontext(&fiber.context);
          fiber.context.uc_stack.ss_sp = stacks.stack(static_cast<size_t>(t));
          fiber.context.uc_stack.ss_size = kStackBytes;
          fiber.context.uc_link = &run.scheduler;
          makecontext(&fiber.context, fiber_main, 0);
        }
        poison(shared.data(), kCanaryBytes, true);
        poison(run.shared + shared_bytes, kCanaryBytes, true);
        running = &run;
        const int64_t barriers = run_block(run, order);
        running = nullptr;
        poison(shared.data(), kCanaryBytes, false);
        poison(run.shared + shared_bytes, kCanaryBytes, false);
        const auto intact = [](const unsigned char* p) {
          return std::all_of(p, p + kCanaryBytes, [](unsigned char c) { return c == kCanary; });
        };
        if (run.error.empty() && !(intact(shared.data()) && intact(run.shared + shared_bytes))) {
          run.error = "wrote outside its " + std::to_string(shared_bytes) +
                      " bytes of dynamic shared memory";
        }
        if (!run.error.empty()) {
          throw std::runtime_error(name + ", " + block_name(blockIdx) + ": " + run.error);
        }
        record.blocks_run += 1;
        record.vector_loads += run.vector_loads;
        run.vector_loads = 0;
        record.barriers = std::max(record.barriers, barriers);
      }
    }
  }
  const std::lock_guard<std::mutex> lock(records_mutex);
  records.push_back(record);
}

void* dynamic_shared_memory() { return running != nullptr ? running->shared : nullptr; }

void check_aligned(const void* address, size_t bytes) {
  if (running != nullptr) running->vector_loads += 1;
  if (reinterpret_cast<uintptr_t>(address) % bytes != 0) {
    std::ostringstream message;
    message << "misaligned " << bytes << "-byte vector load at " << address;
    report(message.str());
  }
}

void barrier() {
  // Outside a launch (host code) there is nothing to wait for.
  if (running == nullptr) return;
  Fiber* fiber = running->current;
  fiber->state = State::at_barrier;
  swapcontext(&fiber->context, &running->scheduler);
}

void set_fault(Fault fault) { active_fault = fault; }

bool fault_active(Fault fault) { return active_fault.load() == fault; }

std::vector<LaunchRecord> launches() {
  const std::lock_guard<std::mutex> lock(records_mutex);
  return records;
}

void clear_launches() {
  const std::lock_guard<std::mutex> lock(records_mutex);
  records.clear();
}

}  // namespace emulation
}  // namespace carafe_exp

void __syncthreads() { carafe_exp::emulation::barrier(); }
