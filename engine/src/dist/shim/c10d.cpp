// c10d for oxrl's `dist` module: a TCPStore rendezvous, a Gloo process group, and all-reduce,
// broadcast and barrier on the at::Tensor behind a tch::Tensor (tch's tensor handle is an
// `at::Tensor*`). Every function returns nullptr on success or an error message allocated
// with malloc, which the caller frees with oxrl_c10d_free_error: no C++ exception crosses
// into Rust.
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

// Thrown when the ranks disagree about the job (not a timeout): the Rust side names it so.
struct Membership : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename F>
char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const Membership& e) {
    return strdup((std::string("membership: ") + e.what()).c_str());
  } catch (const c10::Error& e) {
    return strdup(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return strdup(e.what());
  } catch (...) {
    return strdup("unknown C++ exception");
  }
}

std::vector<at::Tensor> tensors_of(at::Tensor** tensors, int n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (int i = 0; i < n; ++i) {
    out.push_back(*tensors[i]);
  }
  return out;
}

// Gloo's transport devices: one per interface named in GLOO_SOCKET_IFNAME (comma-separated,
// as torch.distributed reads it), else the address this host's name resolves to (loopback
// when it does not resolve).
std::vector<std::shared_ptr<::gloo::transport::Device>> devices() {
  std::vector<std::shared_ptr<::gloo::transport::Device>> out;
  const char* names = std::getenv("GLOO_SOCKET_IFNAME");
  if (names != nullptr && *names != '\0') {
    std::stringstream list(names);
    std::string name;
    while (std::getline(list, name, ',')) {
      out.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
    }
  } else {
    out.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  }
  return out;
}

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 0:
      return c10d::ReduceOp::SUM;
    case 1:
      return c10d::ReduceOp::MAX;
    case 2:
      return c10d::ReduceOp::MIN;
    default:
      throw std::invalid_argument("unknown reduce op " + std::to_string(op));
  }
}

std::string key_of(const char* what, int rank) {
  return std::string("oxrl/") + what + "/" + std::to_string(rank);
}

std::vector<uint8_t> bytes_of(const std::string& s) {
  return std::vector<uint8_t>(s.begin(), s.end());
}

// Rank 0 serves the store, so its leaving closes every other rank's connection: before it
// leaves over a disagreement it waits (briefly) until every rank that published its world size
// has finished reading, so that they name the disagreement too rather than a lost connection.
void wait_for_readers(c10d::Store& store) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (store.add("oxrl/checked", 0) < store.add("oxrl/published", 0) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

// Every rank claims its rank and publishes its world size, then reads every other rank's:
// a rank started with another WORLD_SIZE, or two processes with one RANK, is named here
// rather than left to time out inside Gloo's rendezvous. Waiting for the others' keys is the
// rendezvous (bounded by the store's timeout).
void check_membership(c10d::Store& store, int rank, int world_size) {
  if (store.add(key_of("claims", rank), 1) > 1) {
    throw Membership("two processes were started with RANK=" + std::to_string(rank));
  }
  const std::string mine = std::to_string(world_size);
  store.add("oxrl/published", 1);  // before the key: whoever reads the key counts this rank
  store.set(key_of("world_size", rank), bytes_of(mine));
  for (int r = 0; r < world_size; ++r) {
    if (r == rank) {
      continue;
    }
    const auto value = store.get(key_of("world_size", r));
    const std::string theirs(value.begin(), value.end());
    if (theirs != mine) {
      store.add("oxrl/checked", 1);
      if (rank == 0) {
        wait_for_readers(store);
      }
      throw Membership(
          "the ranks disagree on WORLD_SIZE: rank " + std::to_string(rank) + " has " + mine +
          ", rank " + std::to_string(r) + " has " + theirs);
    }
  }
  store.add("oxrl/checked", 1);
}

}  // namespace

extern "C" {

// Joins the group `world_size` processes form through the TCPStore at host:port (rank 0
// serves it). Blocks until every rank has joined or `timeout_ms` passes.
char* oxrl_c10d_new_gloo(
    const char* host,
    uint16_t port,
    int rank,
    int world_size,
    int64_t timeout_ms,
    void** out) {
  return guarded([&] {
    const std::chrono::milliseconds timeout(timeout_ms);
    c10d::TCPStoreOptions store_options;
    store_options.port = port;
    store_options.isServer = rank == 0;
    store_options.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(host, store_options);
    check_membership(*store, rank, world_size);
    auto options = c10d::ProcessGroupGloo::Options::create_default(timeout);
    options->devices = devices();
    auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(
        store, rank, world_size, options);
    *out = new Group{store, backend};
  });
}

void oxrl_c10d_free(void* group) {
  delete static_cast<Group*>(group);
}

void oxrl_c10d_free_error(char* error) {
  std::free(error);
}

// Reduces every tensor in place across ranks (they must be dense, contiguous, and alike in
// shape and dtype on every rank).
char* oxrl_c10d_all_reduce(
    void* group,
    at::Tensor** tensors,
    int n,
    int op,
    int64_t timeout_ms) {
  return guarded([&] {
    auto ts = tensors_of(tensors, n);
    c10d::AllreduceOptions options;
    options.reduceOp = reduce_op(op);
    options.timeout = std::chrono::milliseconds(timeout_ms);
    static_cast<Group*>(group)->backend->allreduce(ts, options)->wait(options.timeout);
  });
}

// Copies rank `root`'s tensors into every other rank's, in place.
char* oxrl_c10d_broadcast(
    void* group,
    at::Tensor** tensors,
    int n,
    int root,
    int64_t timeout_ms) {
  return guarded([&] {
    auto ts = tensors_of(tensors, n);
    c10d::BroadcastOptions options;
    options.rootRank = root;
    options.timeout = std::chrono::milliseconds(timeout_ms);
    static_cast<Group*>(group)->backend->broadcast(ts, options)->wait(options.timeout);
  });
}

// A handle on the group's store that outlives nothing it needs (the store is reference
// counted) and may be used from another thread (TCPStore serializes its operations).
void* oxrl_c10d_store(void* group) {
  return new c10::intrusive_ptr<c10d::Store>(static_cast<Group*>(group)->store);
}

void oxrl_c10d_store_free(void* store) {
  delete static_cast<c10::intrusive_ptr<c10d::Store>*>(store);
}

char* oxrl_c10d_store_set(void* store, const char* key, const uint8_t* value, size_t len) {
  return guarded([&] {
    (*static_cast<c10::intrusive_ptr<c10d::Store>*>(store))
        ->set(key, std::vector<uint8_t>(value, value + len));
  });
}

// Reads `key` if it is set, without waiting: *value (malloc'd, freed with
// oxrl_c10d_free_error) and *len, or *value = nullptr when no rank has set it.
char* oxrl_c10d_store_try_get(void* store, const char* key, char** value, size_t* len) {
  return guarded([&] {
    auto& s = *static_cast<c10::intrusive_ptr<c10d::Store>*>(store);
    *value = nullptr;
    *len = 0;
    if (!s->check({key})) {
      return;
    }
    const auto bytes = s->get(key);
    *value = static_cast<char*>(std::malloc(bytes.size() + 1));
    std::memcpy(*value, bytes.data(), bytes.size());
    *len = bytes.size();
  });
}

char* oxrl_c10d_barrier(void* group, int64_t timeout_ms) {
  return guarded([&] {
    c10d::BarrierOptions options;
    options.timeout = std::chrono::milliseconds(timeout_ms);
    static_cast<Group*>(group)->backend->barrier(options)->wait(options.timeout);
  });
}

}  // extern "C"
