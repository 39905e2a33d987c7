// C++ compile check of graft_plugin.h: it must be includable from C++ (extern "C", no C-only
// constructs), and a C++ plugin can fill the table. Build-only:
//   c++ -std=c++17 -Wall -Wextra -Werror -pedantic -fsyntax-only header_check.cpp
#include "../../abi/include/graft_plugin.h"

#include <cstddef>
#include <type_traits>

static_assert(std::is_standard_layout<graft_plugin>::value, "graft_plugin is a C struct");
static_assert(std::is_trivially_copyable<graft_hook_call>::value, "graft_hook_call is a C struct");
static_assert(offsetof(graft_plugin, abi_major) == 0, "the version header comes first");
static_assert(sizeof(graft_plugin_error) == 516, "a 4-byte code, a 128-byte field and a 384-byte message");

namespace {

size_t no_targets(void*, graft_target*, size_t) { return 0; }
void* no_create(const char*, const char*, const graft_model_view*, graft_plugin_error*) { return nullptr; }
void no_destroy(void*) {}

const graft_plugin kTable = {
    GRAFT_PLUGIN_ABI_MAJOR, GRAFT_PLUGIN_ABI_MINOR, sizeof(graft_plugin), "cxx-check",
    no_create, no_destroy, no_targets, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
};

}  // namespace

extern "C" const graft_plugin* graft_plugin_entry(void) { return &kTable; }
