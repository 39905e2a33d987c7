/*
 * test_handles.c: the C boundary's defences (issue 15), under AddressSanitizer + UBSan:
 * - input names read from a model stay valid after the model handle is freed, while a
 *   session made from it lives (handles may be freed in any order);
 * - a handle of another type (a session passed as a model, a registry as a session) is
 *   refused with GRAFT_STATUS_INVALID_ARGUMENT instead of being read as the wrong struct;
 * - two threads running one session at once: every call returns OK or GRAFT_STATUS_BUSY,
 *   and the outputs of every OK run are intact (this overflowed a heap buffer before);
 * - absurd sizes (threads 100000, max_batch 2^40) are typed statuses, not aborts;
 * - row faults: a row is listed exactly when one of its outputs is not finite.
 *
 * Usage: test_handles MODEL ITERATIONS
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common_inputs.h"
#include "graft.h"

#define ROWS 8

static int failures = 0;

#define CHECK(cond, ...)                                  \
  do {                                                    \
    if (!(cond)) {                                        \
      fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);     \
      fprintf(stderr, __VA_ARGS__);                       \
      fprintf(stderr, " (%s)\n", graft_last_error_message()); \
      failures++;                                         \
    }                                                     \
  } while (0)

static graft_session *shared;
static example_inputs shared_in;
static float expected[ROWS];
static long iterations;
static atomic_long ok_runs, busy_runs, bad_runs;

static void *race(void *arg) {
  long i;
  (void)arg;
  for (i = 0; i < iterations; i++) {
    graft_status st = graft_session_run(shared, shared_in.items, shared_in.count, NULL);
    if (st == GRAFT_STATUS_OK) {
      graft_output o;
      /* Another thread may start a run between ours and this read: BUSY is fine too. */
      graft_status got = graft_session_output_by_name(shared, "prob", &o);
      if (got == GRAFT_STATUS_OK) {
        size_t r;
        for (r = 0; r < ROWS; r++)
          if (o.rows == ROWS && o.data[r] != expected[r]) atomic_fetch_add(&bad_runs, 1);
      } else if (got != GRAFT_STATUS_BUSY) {
        atomic_fetch_add(&bad_runs, 1);
      }
      atomic_fetch_add(&ok_runs, 1);
    } else if (st == GRAFT_STATUS_BUSY) {
      atomic_fetch_add(&busy_runs, 1);
    } else {
      atomic_fetch_add(&bad_runs, 1);
    }
  }
  return NULL;
}

int main(int argc, char **argv) {
  graft_model *model = NULL;
  graft_session *session = NULL;
  graft_registry *registry = NULL;
  graft_session_params p = graft_session_default_params();
  example_inputs in;
  graft_output o;
  size_t n = 0, r, k, count = 0;
  pthread_t threads[2];
  if (argc != 3) {
    fprintf(stderr, "usage: test_handles MODEL ITERATIONS\n");
    return 2;
  }
  iterations = atol(argv[2]);

  /* Names outlive the model handle. */
  CHECK(graft_model_open(argv[1], &model) == GRAFT_STATUS_OK, "open");
  CHECK(example_inputs_make(model, ROWS, 0, &in) == GRAFT_STATUS_OK, "inputs");
  p.max_batch = ROWS;
  CHECK(graft_session_new(model, &p, &session) == GRAFT_STATUS_OK, "session");
  CHECK(graft_registry_new(model, &registry) == GRAFT_STATUS_OK, "registry");
  graft_model_free(model); /* in.items[k].name point into the model's names */
  model = NULL;
  for (k = 0; k < in.count; k++) CHECK(strlen(in.items[k].name) > 0, "input name %zu after the model's free", k);
  CHECK(graft_session_run(session, in.items, in.count, NULL) == GRAFT_STATUS_OK, "run after the model's free");
  CHECK(graft_session_output_by_name(session, "prob", &o) == GRAFT_STATUS_OK, "prob");
  for (r = 0; r < ROWS; r++) expected[r] = o.data[r];

  /* Handle type confusion. */
  CHECK(graft_model_input_count((const graft_model *)(const void *)session, &n) == GRAFT_STATUS_INVALID_ARGUMENT,
        "a session passed as a model");
  CHECK(strstr(graft_last_error_message(), "graft_session") != NULL, "the message names what was passed");
  CHECK(graft_session_output_count((const graft_session *)(const void *)registry, &n) ==
            GRAFT_STATUS_INVALID_ARGUMENT,
        "a registry passed as a session");
  CHECK(graft_registry_count((const graft_registry *)(const void *)session, &n) == GRAFT_STATUS_INVALID_ARGUMENT,
        "a session passed as a registry");
  graft_registry_free(registry);

  /* Row faults agree with the outputs of a batch whose dense values are huge but finite. */
  for (k = 0; k < in.count; k++) {
    if (in.items[k].dtype == GRAFT_DTYPE_F32) {
      float *v = (float *)in.buffers[k];
      size_t i, len = in.items[k].dims[0] * in.items[k].dims[1];
      for (i = 0; i < len; i++) v[i] = (i % 3 == 0) ? 3e38f : v[i];
    }
  }
  CHECK(graft_session_run(session, in.items, in.count, NULL) == GRAFT_STATUS_OK, "run with huge features");
  CHECK(graft_session_row_fault_count(session, &count) == GRAFT_STATUS_OK, "fault count");
  {
    size_t outputs = 0, f = 0, col;
    CHECK(graft_session_output_count(session, &outputs) == GRAFT_STATUS_OK, "outputs");
    for (r = 0; r < ROWS; r++) {
      int finite = 1;
      graft_row_fault fault;
      for (k = 0; k < outputs; k++) {
        CHECK(graft_session_output(session, k, &o) == GRAFT_STATUS_OK, "output %zu", k);
        for (col = 0; col < o.cols; col++) finite &= isfinite(o.data[r * o.cols + col]) != 0;
      }
      if (!finite) {
        CHECK(f < count && graft_session_row_fault(session, f, &fault) == GRAFT_STATUS_OK && fault.row == r &&
                  !isfinite(fault.value),
              "row %zu is not finite but not listed as fault %zu of %zu", r, f, count);
        f++;
      }
    }
    CHECK(f == count, "%zu rows are not finite, %zu listed", f, count);
    printf("huge features: %zu of %d rows faulted\n", count, ROWS);
  }
  graft_session_free(session);
  session = NULL;

  /* Absurd sizes. */
  CHECK(graft_model_open(argv[1], &model) == GRAFT_STATUS_OK, "reopen");
  p = graft_session_default_params();
  p.threads = 100000;
  CHECK(graft_session_new(model, &p, &session) == GRAFT_STATUS_INVALID_OPTION && session == NULL, "threads 100000");
  p = graft_session_default_params();
  p.max_batch = (size_t)1 << 40;
  {
    graft_status st = graft_session_new(model, &p, &session);
    CHECK((st == GRAFT_STATUS_RESOURCE_EXHAUSTED || st == GRAFT_STATUS_INVALID_OPTION) && session == NULL,
          "max_batch 2^40 gave %s", graft_status_name(st));
  }

  /* Two threads, one session. */
  example_inputs_free(&in);
  p = graft_session_default_params();
  p.max_batch = ROWS;
  CHECK(graft_session_new(model, &p, &shared) == GRAFT_STATUS_OK, "shared session");
  CHECK(example_inputs_make(model, ROWS, 0, &shared_in) == GRAFT_STATUS_OK, "inputs");
  for (k = 0; k < 2; k++) pthread_create(&threads[k], NULL, race, NULL);
  for (k = 0; k < 2; k++) pthread_join(threads[k], NULL);
  CHECK(atomic_load(&bad_runs) == 0, "%ld runs failed or returned torn outputs", atomic_load(&bad_runs));
  CHECK(atomic_load(&ok_runs) > 0, "no run succeeded");
  printf("two threads on one session: %ld ok, %ld busy, %ld bad\n", atomic_load(&ok_runs), atomic_load(&busy_runs),
         atomic_load(&bad_runs));
  example_inputs_free(&shared_in);
  graft_session_free(shared);
  graft_model_free(model);

  printf("%d failures\n", failures);
  return failures == 0 ? 0 : 1;
}
