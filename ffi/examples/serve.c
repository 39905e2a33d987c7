/*
 * serve.c: serve a CTR model with per-user LoRA adapters and an error memory from C.
 *
 * Opens a model, loads two users' LoRA adapters and an error memory, scores one mixed
 * batch (each row with its own adapters), feeds the observed labels back to the error
 * memory, hot-swaps user-b's adapter for a new version, and scores again. Every output
 * value is printed as "run <n> <output> <row> <col> <value>" so tests can compare it.
 *
 * Usage: serve MODEL.graft LORA_A_DIR LORA_B_DIR LORA_B_V2_DIR MEMORY.safetensors [ROWS]
 *
 * Build: cc -std=c11 -Wall -Wextra -Werror -pedantic -I ffi/include -I ffi/examples \
 *            ffi/examples/serve.c $(pkg-config --cflags --libs graft) -o serve
 */
#include <stdio.h>
#include <stdlib.h>

#include "common_inputs.h"
#include "graft.h"

#define CHECK(call)                                                                  \
  do {                                                                               \
    graft_status st_ = (call);                                                       \
    if (st_ != GRAFT_STATUS_OK) {                                                    \
      fprintf(stderr, "%s failed: %s: %s\n", #call, graft_status_name(st_),          \
              graft_last_error_message());                                           \
      goto cleanup;                                                                  \
    }                                                                                \
  } while (0)

/* Row r uses: base, user-a, user-b, or user-a at half strength stacked with the memory. */
static graft_status assign_rows(graft_row_adapters *rows, size_t n) {
  static const char *const stack[] = {"user-a", "memory"};
  static const float scales[] = {0.5f, 1.0f};
  size_t r;
  graft_status st = graft_row_adapters_reset(rows);
  for (r = 0; r < n && st == GRAFT_STATUS_OK; r++) {
    switch (r % 4) {
      case 0: st = graft_row_adapters_push_base(rows); break;
      case 1: st = graft_row_adapters_push(rows, "user-a"); break;
      case 2: st = graft_row_adapters_push(rows, "user-b"); break;
      default: st = graft_row_adapters_push_stack(rows, stack, scales, 2); break;
    }
  }
  return st;
}

static graft_status print_outputs(const graft_session *session, int run) {
  size_t n = 0, k, r, c;
  graft_status st = graft_session_output_count(session, &n);
  for (k = 0; k < n && st == GRAFT_STATUS_OK; k++) {
    graft_output out;
    st = graft_session_output(session, k, &out);
    if (st != GRAFT_STATUS_OK) break;
    for (r = 0; r < out.rows; r++)
      for (c = 0; c < out.cols; c++)
        printf("run %d %s %zu %zu %.9g\n", run, out.name, r, c, (double)out.data[r * out.cols + c]);
  }
  return st;
}

/* Labels arrive later in a real service; here row r "clicked" when r is odd. */
static graft_status feed_labels(const graft_session *session) {
  size_t n = 0, k;
  graft_status st = graft_session_ticket_count(session, &n);
  for (k = 0; k < n && st == GRAFT_STATUS_OK; k++) {
    graft_ticket *ticket = NULL;
    size_t row = 0;
    st = graft_session_ticket(session, k, &ticket);
    if (st == GRAFT_STATUS_OK) st = graft_ticket_row(ticket, &row);
    if (st == GRAFT_STATUS_OK) st = graft_ticket_feedback(ticket, (float)(row % 2));
    graft_ticket_free(ticket);
  }
  printf("feedback %zu\n", n);
  return st;
}

int main(int argc, char **argv) {
  int code = 1;
  size_t rows = 8;
  graft_model *model = NULL;
  graft_registry *registry = NULL;
  graft_session *session = NULL;
  graft_row_adapters *assignment = NULL;
  example_inputs inputs = {0};
  graft_session_params params = graft_session_default_params();
  const char *kernels = NULL;

  if (argc < 6) {
    fprintf(stderr, "usage: %s MODEL LORA_A LORA_B LORA_B_V2 MEMORY [ROWS]\n", argv[0]);
    return 2;
  }
  if (argc > 6) rows = (size_t)strtoul(argv[6], NULL, 10);
  printf("graft %s (C ABI %u.%u), header %s\n", graft_version(), graft_abi_version() >> 16,
         graft_abi_version() & 0xffffu, GRAFT_VERSION);

  CHECK(graft_model_open(argv[1], &model));
  CHECK(graft_registry_new(model, &registry));
  CHECK(graft_registry_insert(registry, "user-a", argv[2], NULL));
  CHECK(graft_registry_insert(registry, "user-b", argv[3], NULL));
  CHECK(graft_registry_insert(registry, "memory", argv[5], NULL));

  params.max_batch = 64;
  params.threads = 2;
  CHECK(graft_session_new(model, &params, &session));
  CHECK(graft_session_kernels(session, &kernels));
  printf("kernels %s\n", kernels);
  CHECK(example_inputs_make(model, rows, 0, &inputs));
  CHECK(graft_row_adapters_new(registry, &assignment));

  CHECK(assign_rows(assignment, rows));
  CHECK(graft_session_run(session, inputs.items, inputs.count, assignment));
  CHECK(print_outputs(session, 1));
  CHECK(feed_labels(session));

  /* Hot swap: later assignments resolve user-b to the new version. */
  CHECK(graft_registry_replace(registry, "user-b", argv[4], NULL));
  CHECK(assign_rows(assignment, rows));
  CHECK(graft_session_run(session, inputs.items, inputs.count, assignment));
  CHECK(print_outputs(session, 2));
  code = 0;

cleanup:
  example_inputs_free(&inputs);
  graft_row_adapters_free(assignment);
  graft_session_free(session);
  graft_registry_free(registry);
  graft_model_free(model);
  return code;
}
