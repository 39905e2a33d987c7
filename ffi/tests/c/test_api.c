/*
 * test_api.c: every function of graft.h with NULL and invalid arguments (each must
 * return the documented status, write nothing, and leave a message), then the happy
 * paths they guard. Run under AddressSanitizer + UndefinedBehaviorSanitizer by
 * ffi/tests/c_programs.rs.
 *
 * Usage: test_api MODEL LORA_DIR MEMORY PLUGIN_SO STEERING_SRC SCRATCH_DIR
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common_inputs.h"
#include "graft.h"

static int failures = 0;
static int checks = 0;

#define EXPECT(call, want)                                                                   \
  do {                                                                                       \
    graft_status got_ = (call);                                                              \
    checks++;                                                                                \
    if (got_ != (want)) {                                                                    \
      fprintf(stderr, "%s:%d: %s returned %s, expected %s (%s)\n", __FILE__, __LINE__, #call, \
              graft_status_name(got_), graft_status_name(want), graft_last_error_message()); \
      failures++;                                                                            \
    } else if ((want) != GRAFT_STATUS_OK && graft_last_error_message()[0] == '\0') {         \
      fprintf(stderr, "%s:%d: %s failed without a message\n", __FILE__, __LINE__, #call);     \
      failures++;                                                                            \
    }                                                                                        \
  } while (0)

#define REQUIRE(cond)                                                                  \
  do {                                                                                 \
    checks++;                                                                          \
    if (!(cond)) {                                                                     \
      fprintf(stderr, "%s:%d: requirement failed: %s\n", __FILE__, __LINE__, #cond);   \
      failures++;                                                                      \
    }                                                                                  \
  } while (0)

#define OK GRAFT_STATUS_OK
#define NUL GRAFT_STATUS_NULL_ARGUMENT
#define BAD GRAFT_STATUS_INVALID_ARGUMENT

static void *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  void *data = NULL;
  long size;
  if (!f) return NULL;
  if (fseek(f, 0, SEEK_END) == 0 && (size = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0) {
    data = malloc((size_t)size);
    if (data && fread(data, 1, (size_t)size, f) != (size_t)size) {
      free(data);
      data = NULL;
    }
    *len = (size_t)size;
  }
  fclose(f);
  return data;
}

static void test_versions_and_names(void) {
  char version[32];
  REQUIRE(strcmp(graft_version(), GRAFT_VERSION) == 0);
  snprintf(version, sizeof version, "%d.%d.%d", GRAFT_VERSION_MAJOR, GRAFT_VERSION_MINOR, GRAFT_VERSION_PATCH);
  REQUIRE(strcmp(version, GRAFT_VERSION) == 0);
  REQUIRE(graft_abi_version() >> 16 == GRAFT_ABI_MAJOR);
  REQUIRE(graft_abi_version() >= ((uint32_t)GRAFT_ABI_MAJOR << 16 | GRAFT_ABI_MINOR));
  REQUIRE(strcmp(graft_status_name(GRAFT_STATUS_OK), "GRAFT_STATUS_OK") == 0);
  REQUIRE(strcmp(graft_status_name(GRAFT_STATUS_FEEDBACK_REJECTED), "GRAFT_STATUS_FEEDBACK_REJECTED") == 0);
  REQUIRE(strcmp(graft_status_name(9999), "GRAFT_STATUS_UNKNOWN") == 0);
  REQUIRE(graft_last_error_message() != NULL);
}

static void test_frees_accept_null(void) {
  graft_model_free(NULL);
  graft_registry_free(NULL);
  graft_row_adapters_free(NULL);
  graft_session_free(NULL);
  graft_ticket_free(NULL);
  checks++;
}

static void test_model(const char *model_path) {
  graft_model *model = (graft_model *)0x1; /* must stay untouched on failure */
  size_t n = 7, len = 0;
  graft_input_info info;
  const char *name = "untouched";
  unsigned char junk[64];
  void *bytes;

  EXPECT(graft_model_open(NULL, &model), NUL);
  EXPECT(graft_model_open(model_path, NULL), NUL);
  EXPECT(graft_model_open("/nonexistent/model.graft", &model), GRAFT_STATUS_IO);
  EXPECT(graft_model_open("\xff\xfe", &model), BAD);
  REQUIRE(model == (graft_model *)0x1);
  memset(junk, 0x5a, sizeof junk);
  EXPECT(graft_model_from_buffer(junk, sizeof junk, &model), GRAFT_STATUS_MODEL_INVALID);
  EXPECT(graft_model_from_buffer(NULL, 10, &model), NUL);
  EXPECT(graft_model_from_buffer(NULL, 0, &model), GRAFT_STATUS_MODEL_INVALID);
  EXPECT(graft_model_from_buffer(junk, sizeof junk, NULL), NUL);
  REQUIRE(model == (graft_model *)0x1);

  bytes = read_file(model_path, &len);
  REQUIRE(bytes != NULL);
  if (!bytes) return;
  /* A truncated container is refused with a message, then the whole one opens. */
  EXPECT(graft_model_from_buffer(bytes, len / 2, &model), GRAFT_STATUS_MODEL_INVALID);
  EXPECT(graft_model_from_buffer(bytes, len, &model), OK);
  free(bytes);

  EXPECT(graft_model_input_count(NULL, &n), NUL);
  EXPECT(graft_model_input_count(model, NULL), NUL);
  EXPECT(graft_model_input_count(model, &n), OK);
  REQUIRE(n > 0);
  EXPECT(graft_model_input(NULL, 0, &info), NUL);
  EXPECT(graft_model_input(model, 0, NULL), NUL);
  EXPECT(graft_model_input(model, n, &info), BAD);
  EXPECT(graft_model_input(model, 0, &info), OK);
  REQUIRE(info.name != NULL && info.dtype == GRAFT_DTYPE_F32);
  EXPECT(graft_model_output_count(NULL, &n), NUL);
  EXPECT(graft_model_output_count(model, NULL), NUL);
  EXPECT(graft_model_output_count(model, &n), OK);
  EXPECT(graft_model_output_name(NULL, 0, &name), NUL);
  EXPECT(graft_model_output_name(model, 0, NULL), NUL);
  EXPECT(graft_model_output_name(model, n, &name), BAD);
  REQUIRE(strcmp(name, "untouched") == 0);
  EXPECT(graft_model_output_name(model, 0, &name), OK);
  REQUIRE(strlen(name) > 0);
  graft_model_free(model);
}

static void test_session_params(const graft_model *model) {
  graft_session *session = NULL;
  graft_session_params p = graft_session_default_params();
  const char *kernels = NULL;
  REQUIRE(p.max_batch == 256 && p.threads == 1 && p.kernels == NULL && p.nan_policy == GRAFT_NAN_POLICY_REJECT &&
          p.device == NULL && p.q8_math == GRAFT_Q8_MATH_INT8);

  EXPECT(graft_session_new(NULL, &p, &session), NUL);
  EXPECT(graft_session_new(model, &p, NULL), NUL);
  p.max_batch = 0;
  EXPECT(graft_session_new(model, &p, &session), GRAFT_STATUS_INVALID_OPTION);
  p = graft_session_default_params();
  p.threads = 100000;
  EXPECT(graft_session_new(model, &p, &session), GRAFT_STATUS_INVALID_OPTION);
  p = graft_session_default_params();
  p.nan_policy = 77;
  EXPECT(graft_session_new(model, &p, &session), BAD);
  p = graft_session_default_params();
  p.device = "gpu";
  EXPECT(graft_session_new(model, &p, &session), BAD);
  p.device = "cuda:0"; /* the tests build libgraft without the `cuda` feature */
  EXPECT(graft_session_new(model, &p, &session), GRAFT_STATUS_CUDA_UNAVAILABLE);
  p = graft_session_default_params();
  p.q8_math = 2;
  EXPECT(graft_session_new(model, &p, &session), BAD);
  p.q8_math = GRAFT_Q8_MATH_EXACT;
  EXPECT(graft_session_new(model, &p, &session), OK);
  graft_session_free(session);
  session = NULL;
  p = graft_session_default_params();
  p.kernels = "warp-drive";
  EXPECT(graft_session_new(model, &p, &session), BAD);
  REQUIRE(session == NULL);
  p.kernels = "scalar";
  EXPECT(graft_session_new(model, &p, &session), OK);
  EXPECT(graft_session_kernels(NULL, &kernels), NUL);
  EXPECT(graft_session_kernels(session, NULL), NUL);
  EXPECT(graft_session_kernels(session, &kernels), OK);
  REQUIRE(kernels && strcmp(kernels, "scalar") == 0);
  graft_session_free(session);
  session = NULL;
  EXPECT(graft_session_new(model, NULL, &session), OK);
  graft_session_free(session);
}

static void test_run_errors(const graft_model *model) {
  graft_session *session = NULL;
  graft_session_params p = graft_session_default_params();
  example_inputs in = {0};
  graft_input saved;
  graft_output out;
  size_t n = 5;
  int64_t *ids = NULL;
  size_t k, ids_input = 0;
  float *dense;

  p.max_batch = 8;
  EXPECT(graft_session_new(model, &p, &session), OK);
  if (!session) return;
  EXPECT(example_inputs_make(model, 4, 1, &in), OK);

  EXPECT(graft_session_run(NULL, in.items, in.count, NULL), NUL);
  EXPECT(graft_session_run(session, NULL, in.count, NULL), NUL);
  EXPECT(graft_session_run(session, NULL, 0, NULL), GRAFT_STATUS_INPUT_INVALID);

  saved = in.items[0];
  in.items[0].name = NULL;
  EXPECT(graft_session_run(session, in.items, in.count, NULL), NUL);
  in.items[0].name = "no-such-input";
  EXPECT(graft_session_run(session, in.items, in.count, NULL), GRAFT_STATUS_INPUT_INVALID);
  in.items[0] = saved;
  in.items[0].dtype = 99;
  EXPECT(graft_session_run(session, in.items, in.count, NULL), BAD);
  in.items[0] = saved;
  in.items[0].dtype = GRAFT_DTYPE_I64;
  EXPECT(graft_session_run(session, in.items, in.count, NULL), GRAFT_STATUS_INPUT_INVALID);
  in.items[0] = saved;
  in.items[0].rank = 3;
  EXPECT(graft_session_run(session, in.items, in.count, NULL), BAD);
  in.items[0] = saved;
  in.items[0].data = (const char *)saved.data + 1; /* misaligned floats */
  in.items[0].dims[0] = 1;
  EXPECT(graft_session_run(session, in.items, in.count, NULL), BAD);
  in.items[0] = saved;
  in.items[0].data = NULL;
  EXPECT(graft_session_run(session, in.items, in.count, NULL), NUL);
  in.items[0] = saved;
  in.items[0].dims[1] = saved.dims[1] + 1; /* shape and length disagree */
  EXPECT(graft_session_run(session, in.items, in.count, NULL), GRAFT_STATUS_INPUT_INVALID);
  in.items[0] = saved;
  in.items[0].dims[0] = (size_t)-1;
  in.items[0].dims[1] = 3;
  EXPECT(graft_session_run(session, in.items, in.count, NULL), BAD);
  in.items[0] = saved;

  dense = (float *)in.buffers[0];
  dense[1] = (float)strtod("nan", NULL);
  EXPECT(graft_session_run(session, in.items, in.count, NULL), GRAFT_STATUS_NON_FINITE_INPUT);
  REQUIRE(strstr(graft_last_error_message(), "graft_session_run") != NULL);
  dense[1] = 0.5f;

  for (k = 0; k < in.count; k++)
    if (in.items[k].dtype == GRAFT_DTYPE_I64 && in.items[k].rank == 2) {
      ids = (int64_t *)in.buffers[k];
      ids_input = k;
    }
  REQUIRE(ids != NULL);
  if (ids) {
    int64_t old = ids[0];
    ids[0] = -3;
    EXPECT(graft_session_run(session, in.items, in.count, NULL), GRAFT_STATUS_ID_OUT_OF_RANGE);
    ids[0] = (int64_t)1 << 40;
    EXPECT(graft_session_run(session, in.items, in.count, NULL), GRAFT_STATUS_ID_OUT_OF_RANGE);
    ids[0] = old;
    (void)ids_input;
  }
  /* A failed run leaves no outputs. */
  EXPECT(graft_session_output(session, 0, &out), OK);
  REQUIRE(out.rows == 0);

  example_inputs_free(&in);
  EXPECT(example_inputs_make(model, 9, 1, &in), OK);
  EXPECT(graft_session_run(session, in.items, in.count, NULL), GRAFT_STATUS_BATCH_TOO_LARGE);
  example_inputs_free(&in);

  EXPECT(example_inputs_make(model, 3, 1, &in), OK);
  EXPECT(graft_session_run(session, in.items, in.count, NULL), OK);
  EXPECT(graft_session_output_count(NULL, &n), NUL);
  EXPECT(graft_session_output_count(session, NULL), NUL);
  EXPECT(graft_session_output_count(session, &n), OK);
  EXPECT(graft_session_output(NULL, 0, &out), NUL);
  EXPECT(graft_session_output(session, 0, NULL), NUL);
  EXPECT(graft_session_output(session, n, &out), BAD);
  EXPECT(graft_session_output(session, 0, &out), OK);
  REQUIRE(out.rows == 3 && out.cols >= 1 && out.data != NULL);
  EXPECT(graft_session_output_by_name(NULL, "prob", &out), NUL);
  EXPECT(graft_session_output_by_name(session, NULL, &out), NUL);
  EXPECT(graft_session_output_by_name(session, "prob", NULL), NUL);
  EXPECT(graft_session_output_by_name(session, "no-such-output", &out), GRAFT_STATUS_NOT_FOUND);
  EXPECT(graft_session_output_by_name(session, "prob", &out), OK);
  REQUIRE(out.rows == 3 && out.data[0] > 0.0f && out.data[0] < 1.0f);
  EXPECT(graft_session_ticket_count(NULL, &n), NUL);
  EXPECT(graft_session_ticket_count(session, NULL), NUL);
  EXPECT(graft_session_ticket_count(session, &n), OK);
  REQUIRE(n == 0);
  {
    size_t faults = 99;
    graft_row_fault fault;
    EXPECT(graft_session_row_fault_count(NULL, &faults), NUL);
    EXPECT(graft_session_row_fault_count(session, NULL), NUL);
    EXPECT(graft_session_row_fault_count(session, &faults), OK);
    REQUIRE(faults == 0);
    EXPECT(graft_session_row_fault(NULL, 0, &fault), NUL);
    EXPECT(graft_session_row_fault(session, 0, NULL), NUL);
    EXPECT(graft_session_row_fault(session, 0, &fault), BAD);
  }
  example_inputs_free(&in);
  graft_session_free(session);
}

static void test_adapters(const graft_model *model, char **argv) {
  const char *lora = argv[2], *memory = argv[3], *plugin = argv[4], *steering = argv[5], *scratch = argv[6];
  graft_registry *registry = NULL;
  graft_row_adapters *rows = NULL, *uniform = NULL;
  graft_session *session = NULL;
  graft_ticket *ticket = NULL;
  graft_adapter_params ap = graft_adapter_default_params();
  example_inputs in = {0};
  const char *stack_ids[] = {"lora", "memory"};
  const char *bad_ids[] = {"lora", NULL};
  float scales[] = {1.0f, 1.0f};
  size_t n = 0, row = 0;
  uint64_t generation = 0, before = 0;
  char state[512];

  REQUIRE(ap.kind == NULL && ap.options == NULL);
  EXPECT(graft_registry_new(NULL, &registry), NUL);
  EXPECT(graft_registry_new(model, NULL), NUL);
  EXPECT(graft_registry_new(model, &registry), OK);
  if (!registry) return;

  EXPECT(graft_registry_insert(NULL, "lora", lora, NULL), NUL);
  EXPECT(graft_registry_insert(registry, NULL, lora, NULL), NUL);
  EXPECT(graft_registry_insert(registry, "lora", NULL, NULL), NUL);
  EXPECT(graft_registry_insert(registry, "lora", "/nonexistent/adapter", NULL), GRAFT_STATUS_IO);
  ap.kind = "no-such-kind";
  EXPECT(graft_registry_insert(registry, "lora", lora, &ap), GRAFT_STATUS_UNKNOWN_ADAPTER_KIND);
  ap.kind = "lora";
  ap.options = "{not json";
  EXPECT(graft_registry_insert(registry, "lora", lora, &ap), GRAFT_STATUS_ADAPTER_INVALID);
  ap = graft_adapter_default_params();
  EXPECT(graft_registry_insert(registry, "lora", lora, NULL), OK);
  EXPECT(graft_registry_insert(registry, "lora", lora, NULL), GRAFT_STATUS_ADAPTER_ID_CONFLICT);
  EXPECT(graft_registry_replace(registry, "nobody", lora, NULL), GRAFT_STATUS_ADAPTER_ID_CONFLICT);
  EXPECT(graft_registry_replace(NULL, "lora", lora, NULL), NUL);
  EXPECT(graft_registry_generation(registry, &before), OK);
  EXPECT(graft_registry_replace(registry, "lora", lora, NULL), OK);
  EXPECT(graft_registry_generation(NULL, &generation), NUL);
  EXPECT(graft_registry_generation(registry, NULL), NUL);
  EXPECT(graft_registry_generation(registry, &generation), OK);
  REQUIRE(generation == before + 1);
  EXPECT(graft_registry_insert(registry, "memory", memory, NULL), OK);
  EXPECT(graft_registry_count(NULL, &n), NUL);
  EXPECT(graft_registry_count(registry, NULL), NUL);
  EXPECT(graft_registry_count(registry, &n), OK);
  REQUIRE(n == 2);
  EXPECT(graft_registry_remove(NULL, "lora"), NUL);
  EXPECT(graft_registry_remove(registry, NULL), NUL);
  EXPECT(graft_registry_remove(registry, "nobody"), GRAFT_STATUS_UNKNOWN_ADAPTER);

  /* Plugins: a file that is no library, then the C steering kind. */
  EXPECT(graft_registry_load_plugin(NULL, plugin), NUL);
  EXPECT(graft_registry_load_plugin(registry, NULL), NUL);
  EXPECT(graft_registry_load_plugin(registry, memory), GRAFT_STATUS_PLUGIN_LOAD);
  EXPECT(graft_registry_load_plugin(registry, plugin), OK);
  EXPECT(graft_registry_load_plugin(registry, plugin), GRAFT_STATUS_PLUGIN_LOAD);
  ap.kind = "steering";
  EXPECT(graft_registry_insert(registry, "steer", steering, &ap), OK);
  EXPECT(graft_registry_insert(registry, "steer-bad", memory, &ap), GRAFT_STATUS_ADAPTER_INVALID);
  ap = graft_adapter_default_params();

  /* Row assignments. */
  EXPECT(graft_row_adapters_new(NULL, &rows), NUL);
  EXPECT(graft_row_adapters_new(registry, NULL), NUL);
  EXPECT(graft_row_adapters_new(registry, &rows), OK);
  EXPECT(graft_row_adapters_push(NULL, "lora"), NUL);
  EXPECT(graft_row_adapters_push(rows, NULL), NUL);
  EXPECT(graft_row_adapters_push(rows, "nobody"), GRAFT_STATUS_UNKNOWN_ADAPTER);
  EXPECT(graft_row_adapters_push_base(NULL), NUL);
  EXPECT(graft_row_adapters_push_stack(NULL, stack_ids, scales, 2), NUL);
  EXPECT(graft_row_adapters_push_stack(rows, NULL, scales, 2), NUL);
  EXPECT(graft_row_adapters_push_stack(rows, bad_ids, scales, 2), NUL);
  scales[0] = (float)strtod("inf", NULL);
  EXPECT(graft_row_adapters_push_stack(rows, stack_ids, scales, 2), BAD);
  scales[0] = 1.0f;
  EXPECT(graft_row_adapters_len(NULL, &n), NUL);
  EXPECT(graft_row_adapters_len(rows, NULL), NUL);
  EXPECT(graft_row_adapters_len(rows, &n), OK);
  REQUIRE(n == 0);
  EXPECT(graft_row_adapters_push_base(rows), OK);
  EXPECT(graft_row_adapters_push(rows, "lora"), OK);
  EXPECT(graft_row_adapters_push_stack(rows, stack_ids, NULL, 2), OK);
  EXPECT(graft_row_adapters_push(rows, "steer"), OK);
  EXPECT(graft_row_adapters_len(rows, &n), OK);
  REQUIRE(n == 4);
  EXPECT(graft_row_adapters_reset(NULL), NUL);
  EXPECT(graft_row_adapters_new_uniform(NULL, stack_ids, scales, 2, &uniform), NUL);
  EXPECT(graft_row_adapters_new_uniform(registry, stack_ids, scales, 2, NULL), NUL);
  EXPECT(graft_row_adapters_new_uniform(registry, NULL, scales, 2, &uniform), NUL);
  EXPECT(graft_row_adapters_new_uniform(registry, stack_ids, scales, 2, &uniform), OK);
  EXPECT(graft_row_adapters_push(uniform, "lora"), BAD);

  EXPECT(graft_session_new(model, NULL, &session), OK);
  EXPECT(example_inputs_make(model, 4, 2, &in), OK);
  EXPECT(graft_session_run(session, in.items, 3, rows), GRAFT_STATUS_INPUT_INVALID);
  example_inputs_free(&in);
  EXPECT(example_inputs_make(model, 5, 2, &in), OK);
  EXPECT(graft_session_run(session, in.items, in.count, rows), GRAFT_STATUS_ADAPTER_MISMATCH);
  example_inputs_free(&in);
  EXPECT(example_inputs_make(model, 4, 2, &in), OK);
  EXPECT(graft_session_run(session, in.items, in.count, rows), OK);

  /* Tickets: one per memory row; answered once; labels in [0, 1]. */
  EXPECT(graft_session_ticket_count(session, &n), OK);
  REQUIRE(n == 1);
  EXPECT(graft_session_ticket(NULL, 0, &ticket), NUL);
  EXPECT(graft_session_ticket(session, 0, NULL), NUL);
  EXPECT(graft_session_ticket(session, n, &ticket), BAD);
  REQUIRE(ticket == NULL);
  EXPECT(graft_session_ticket(session, 0, &ticket), OK);
  EXPECT(graft_ticket_row(NULL, &row), NUL);
  EXPECT(graft_ticket_row(ticket, NULL), NUL);
  EXPECT(graft_ticket_row(ticket, &row), OK);
  REQUIRE(row == 2);
  EXPECT(graft_ticket_feedback(NULL, 1.0f), NUL);
  EXPECT(graft_ticket_feedback(ticket, 2.0f), GRAFT_STATUS_FEEDBACK_REJECTED);
  EXPECT(graft_ticket_feedback(ticket, (float)strtod("nan", NULL)), GRAFT_STATUS_FEEDBACK_REJECTED);
  /* The label reaches the instance that predicted, even once its id is unpublished. */
  EXPECT(graft_registry_remove(registry, "memory"), OK);
  EXPECT(graft_ticket_feedback(ticket, 1.0f), OK);
  EXPECT(graft_ticket_feedback(ticket, 1.0f), GRAFT_STATUS_FEEDBACK_REJECTED);
  graft_ticket_free(ticket);
  ticket = NULL;
  EXPECT(graft_row_adapters_reset(rows), OK);
  EXPECT(graft_row_adapters_push(rows, "memory"), GRAFT_STATUS_UNKNOWN_ADAPTER);
  EXPECT(graft_row_adapters_reset(uniform), GRAFT_STATUS_UNKNOWN_ADAPTER);

  /* Uniform assignments serve any batch size. */
  EXPECT(graft_registry_insert(registry, "memory", memory, NULL), OK);
  EXPECT(graft_row_adapters_reset(uniform), OK);
  EXPECT(graft_session_run(session, in.items, in.count, uniform), OK);
  EXPECT(graft_session_ticket_count(session, &n), OK);
  REQUIRE(n == 4);

  /* State: saved for the memory, refused for LoRA, and reloaded through options. */
  snprintf(state, sizeof state, "%s/memory.state", scratch);
  EXPECT(graft_registry_save_state(NULL, "memory", state), NUL);
  EXPECT(graft_registry_save_state(registry, NULL, state), NUL);
  EXPECT(graft_registry_save_state(registry, "memory", NULL), NUL);
  EXPECT(graft_registry_save_state(registry, "nobody", state), GRAFT_STATUS_UNKNOWN_ADAPTER);
  EXPECT(graft_registry_save_state(registry, "lora", state), GRAFT_STATUS_ADAPTER_INVALID);
  EXPECT(graft_registry_save_state(registry, "memory", state), OK);
  {
    char options[600];
    snprintf(options, sizeof options, "{\"state\": \"%s\"}", state);
    ap.options = options;
    EXPECT(graft_registry_insert(registry, "memory-restored", memory, &ap), OK);
    ap.options = "{\"state\": \"/nonexistent/memory.state\"}";
    EXPECT(graft_registry_insert(registry, "memory-missing", memory, &ap), GRAFT_STATUS_IO);
    ap = graft_adapter_default_params();
  }

  example_inputs_free(&in);
  graft_session_free(session);
  graft_row_adapters_free(uniform);
  graft_row_adapters_free(rows);
  /* Freeing the registry first is allowed; the model outlives nothing it needs. */
  graft_registry_free(registry);
}

int main(int argc, char **argv) {
  graft_model *model = NULL;
  if (argc < 7) {
    fprintf(stderr, "usage: %s MODEL LORA MEMORY PLUGIN STEERING SCRATCH\n", argv[0]);
    return 2;
  }
  test_versions_and_names();
  test_frees_accept_null();
  test_model(argv[1]);
  if (graft_model_open(argv[1], &model) != GRAFT_STATUS_OK) {
    fprintf(stderr, "open: %s\n", graft_last_error_message());
    return 1;
  }
  test_session_params(model);
  test_run_errors(model);
  test_adapters(model, argv);
  graft_model_free(model);
  printf("%d checks, %d failures\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
