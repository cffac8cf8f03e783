// Stand-in for Gloo's header (see README.md): the one member c10d's inline code names.
#pragma once
#include <chrono>
namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
}  // namespace gloo
