#include "agent/errors.hpp"

#include <string>

namespace tern::agent {
namespace {

class AgentCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "tern-agent"; }
  std::string message(int ev) const override {
    switch (static_cast<AgentErrc>(ev)) {
      case AgentErrc::already_installed: return "artifact already installed";
      case AgentErrc::source_changed: return "the artifact changed at its source";
      case AgentErrc::busy: return "busy";
      case AgentErrc::interrupted: return "interrupted";
      case AgentErrc::range_ignored: return "range ignored";
    }
    return "unknown tern-agent error";
  }
};

}  // namespace

const std::error_category& agent_category() noexcept {
  static const AgentCategory category;
  return category;
}

}  // namespace tern::agent
