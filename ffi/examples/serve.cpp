// serve.cpp: serve.c's flow in C++ through graft.hpp's RAII wrappers.
//
// Opens a model, loads two users' LoRA adapters and an error memory, scores one mixed
// batch, feeds labels back, hot-swaps user-b, scores again, and prints every output
// value as "run <n> <output> <row> <col> <value>" (the same lines as serve.c).
//
// Usage: serve_cpp MODEL.graft LORA_A_DIR LORA_B_DIR LORA_B_V2_DIR MEMORY.safetensors [ROWS]
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include "common_inputs.h"
#include "graft.hpp"

namespace {

// Row r uses: base, user-a, user-b, or user-a at half strength stacked with the memory.
void assign_rows(graft::RowAdapters &rows, std::size_t n) {
  rows.reset();
  for (std::size_t r = 0; r < n; r++) {
    switch (r % 4) {
      case 0: rows.push_base(); break;
      case 1: rows.push("user-a"); break;
      case 2: rows.push("user-b"); break;
      default: rows.push_stack({{"user-a", 0.5f}, {"memory", 1.0f}}); break;
    }
  }
}

void print_outputs(const graft::Session &session, int run) {
  for (const graft_output &out : session.outputs())
    for (std::size_t r = 0; r < out.rows; r++)
      for (std::size_t c = 0; c < out.cols; c++)
        std::printf("run %d %s %zu %zu %.9g\n", run, out.name, r, c, static_cast<double>(out.data[r * out.cols + c]));
}

// Owns the C example inputs.
struct Inputs {
  example_inputs raw{};
  ~Inputs() { example_inputs_free(&raw); }
  std::vector<graft_input> items() const { return std::vector<graft_input>(raw.items, raw.items + raw.count); }
};

}  // namespace

int main(int argc, char **argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: %s MODEL LORA_A LORA_B LORA_B_V2 MEMORY [ROWS]\n", argv[0]);
    return 2;
  }
  std::size_t rows = argc > 6 ? std::strtoul(argv[6], nullptr, 10) : 8;
  try {
    std::printf("graft %s (C ABI %u.%u), header %s\n", graft_version(), graft_abi_version() >> 16,
                graft_abi_version() & 0xffffu, GRAFT_VERSION);
    graft::Model model = graft::Model::open(argv[1]);
    graft::Registry registry(model);
    registry.insert("user-a", argv[2]);
    registry.insert("user-b", argv[3]);
    registry.insert("memory", argv[5]);

    graft_session_params params = graft_session_default_params();
    params.max_batch = 64;
    params.threads = 2;
    graft::Session session(model, &params);
    std::printf("kernels %s\n", session.kernels().c_str());
    Inputs inputs;
    graft::check(example_inputs_make(model.get(), rows, 0, &inputs.raw), "example_inputs_make");
    graft::RowAdapters assignment(registry);

    assign_rows(assignment, rows);
    session.run(inputs.items(), &assignment);
    print_outputs(session, 1);
    std::vector<graft::Ticket> tickets = session.tickets();
    for (const graft::Ticket &t : tickets) t.feedback(static_cast<float>(t.row() % 2));
    std::printf("feedback %zu\n", tickets.size());

    registry.replace("user-b", argv[4]);
    assign_rows(assignment, rows);
    session.run(inputs.items(), &assignment);
    print_outputs(session, 2);
    return 0;
  } catch (const graft::Error &e) {
    std::fprintf(stderr, "%s\n", e.what());
  } catch (const std::exception &e) {
    std::fprintf(stderr, "error: %s\n", e.what());
  }
  return 1;
}
