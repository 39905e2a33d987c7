/*
 * test_threads.c: four threads serve mixed batches, each with its own session, while a
 * fifth hot-swaps user-b between two versions and inserts and removes another adapter.
 * Every row must come out exactly as one consistent adapter version computes it: base
 * and user-a rows never change, user-b rows equal version 1 or version 2 (never a torn
 * mix), and every ticket takes its label. Run under AddressSanitizer + UBSan.
 *
 * Usage: test_threads MODEL LORA_A LORA_B LORA_B_V2 MEMORY ITERATIONS
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common_inputs.h"
#include "graft.h"

#define SERVERS 4
#define ROWS 8

static const char *lora_a, *lora_b, *lora_b2, *memory_path;
static graft_model *model;
static graft_registry *registry;
static atomic_int running = SERVERS;
static atomic_int failures = 0;
static long iterations;

/* Per server: expected prob of each row for base/user-a, and user-b at v1 and v2. */
typedef struct server {
  int index;
  example_inputs in;
  float base[ROWS], user_a[ROWS], user_b1[ROWS], user_b2[ROWS];
  long runs, tickets, b1_seen, b2_seen;
} server;

static server servers[SERVERS];

static void fail(const char *what, graft_status st) {
  fprintf(stderr, "%s: %s: %s\n", what, graft_status_name(st), graft_last_error_message());
  atomic_fetch_add(&failures, 1);
}

/* Runs every row of `s` with the uniform stack `id` (NULL: base) into `out`. */
static int reference(graft_session *session, server *s, const char *id, float *out) {
  const char *const ids[1] = {id};
  graft_row_adapters *rows = NULL;
  graft_output o;
  graft_status st = graft_row_adapters_new_uniform(registry, ids, NULL, id ? 1 : 0, &rows);
  if (st == GRAFT_STATUS_OK) st = graft_session_run(session, s->in.items, s->in.count, rows);
  if (st == GRAFT_STATUS_OK) st = graft_session_output_by_name(session, "prob", &o);
  if (st == GRAFT_STATUS_OK) memcpy(out, o.data, sizeof(float) * ROWS);
  graft_row_adapters_free(rows);
  if (st != GRAFT_STATUS_OK) fail("reference", st);
  return st == GRAFT_STATUS_OK;
}

static void *serve(void *arg) {
  server *s = (server *)arg;
  static const char *const stack[] = {"user-a", "memory"};
  static const float scales[] = {0.5f, 1.0f};
  graft_session *session = NULL;
  graft_row_adapters *rows = NULL;
  graft_session_params p = graft_session_default_params();
  graft_status st;
  long i;
  size_t r, k, n;

  p.max_batch = ROWS;
  st = graft_session_new(model, &p, &session);
  if (st == GRAFT_STATUS_OK) st = graft_row_adapters_new(registry, &rows);
  for (i = 0; i < iterations && st == GRAFT_STATUS_OK; i++) {
    graft_output o;
    st = graft_row_adapters_reset(rows);
    for (r = 0; r < ROWS && st == GRAFT_STATUS_OK; r++) {
      switch (r % 4) {
        case 0: st = graft_row_adapters_push_base(rows); break;
        case 1: st = graft_row_adapters_push(rows, "user-a"); break;
        case 2: st = graft_row_adapters_push(rows, "user-b"); break;
        default: st = graft_row_adapters_push_stack(rows, stack, scales, 2); break;
      }
    }
    if (st == GRAFT_STATUS_OK) st = graft_session_run(session, s->in.items, s->in.count, rows);
    if (st == GRAFT_STATUS_OK) st = graft_session_output_by_name(session, "prob", &o);
    if (st != GRAFT_STATUS_OK) break;
    s->runs++;
    for (r = 0; r < ROWS; r++) {
      float v = o.data[r];
      int ok = 1;
      switch (r % 4) {
        case 0: ok = v == s->base[r]; break;
        case 1: ok = v == s->user_a[r]; break;
        case 2:
          ok = v == s->user_b1[r] || v == s->user_b2[r];
          s->b1_seen += v == s->user_b1[r];
          s->b2_seen += v == s->user_b2[r];
          break;
        default: ok = isfinite(v) && v > 0.0f && v < 1.0f; break;
      }
      if (!ok) {
        fprintf(stderr, "server %d run %ld row %zu: %.9g is no consistent version\n", s->index, i, r, (double)v);
        atomic_fetch_add(&failures, 1);
      }
    }
    st = graft_session_ticket_count(session, &n);
    for (k = 0; k < n && st == GRAFT_STATUS_OK; k++) {
      graft_ticket *t = NULL;
      st = graft_session_ticket(session, k, &t);
      if (st == GRAFT_STATUS_OK) st = graft_ticket_feedback(t, (float)((i + k) % 2));
      graft_ticket_free(t);
      s->tickets++;
    }
  }
  if (st != GRAFT_STATUS_OK) fail("serve", st);
  graft_row_adapters_free(rows);
  graft_session_free(session);
  atomic_fetch_sub(&running, 1);
  return NULL;
}

static void *swap(void *arg) {
  long *swaps = (long *)arg;
  graft_status st = GRAFT_STATUS_OK;
  while (atomic_load(&running) > 0 && st == GRAFT_STATUS_OK) {
    st = graft_registry_replace(registry, "user-b", (*swaps % 2) ? lora_b : lora_b2, NULL);
    if (st == GRAFT_STATUS_OK) st = graft_registry_insert(registry, "transient", lora_a, NULL);
    if (st == GRAFT_STATUS_OK) st = graft_registry_remove(registry, "transient");
    ++*swaps;
  }
  if (st != GRAFT_STATUS_OK) fail("swap", st);
  return NULL;
}

int main(int argc, char **argv) {
  pthread_t threads[SERVERS + 1];
  graft_session *session = NULL;
  long swaps = 0, runs = 0, tickets = 0, b1 = 0, b2 = 0;
  graft_status st;
  int t;

  if (argc < 7) {
    fprintf(stderr, "usage: %s MODEL LORA_A LORA_B LORA_B_V2 MEMORY ITERATIONS\n", argv[0]);
    return 2;
  }
  lora_a = argv[2];
  lora_b = argv[3];
  lora_b2 = argv[4];
  memory_path = argv[5];
  iterations = strtol(argv[6], NULL, 10);

  st = graft_model_open(argv[1], &model);
  if (st == GRAFT_STATUS_OK) st = graft_registry_new(model, &registry);
  if (st == GRAFT_STATUS_OK) st = graft_registry_insert(registry, "user-a", lora_a, NULL);
  if (st == GRAFT_STATUS_OK) st = graft_registry_insert(registry, "user-b", lora_b2, NULL);
  if (st == GRAFT_STATUS_OK) st = graft_registry_insert(registry, "memory", memory_path, NULL);
  if (st == GRAFT_STATUS_OK) st = graft_session_new(model, NULL, &session);
  for (t = 0; t < SERVERS && st == GRAFT_STATUS_OK; t++) {
    server *s = &servers[t];
    s->index = t;
    st = example_inputs_make(model, ROWS, (size_t)t + 3, &s->in);
    if (st != GRAFT_STATUS_OK) break;
    if (!reference(session, s, NULL, s->base) || !reference(session, s, "user-a", s->user_a) ||
        !reference(session, s, "user-b", s->user_b2))
      st = GRAFT_STATUS_OTHER;
  }
  if (st == GRAFT_STATUS_OK) st = graft_registry_replace(registry, "user-b", lora_b, NULL);
  for (t = 0; t < SERVERS && st == GRAFT_STATUS_OK; t++)
    if (!reference(session, &servers[t], "user-b", servers[t].user_b1)) st = GRAFT_STATUS_OTHER;
  graft_session_free(session);
  if (st != GRAFT_STATUS_OK) {
    fail("setup", st);
    goto cleanup;
  }

  for (t = 0; t < SERVERS; t++) pthread_create(&threads[t], NULL, serve, &servers[t]);
  pthread_create(&threads[SERVERS], NULL, swap, &swaps);
  for (t = 0; t <= SERVERS; t++) pthread_join(threads[t], NULL);

  for (t = 0; t < SERVERS; t++) {
    runs += servers[t].runs;
    tickets += servers[t].tickets;
    b1 += servers[t].b1_seen;
    b2 += servers[t].b2_seen;
  }
  printf("%ld runs, %ld tickets answered, %ld swaps; user-b rows: %ld v1, %ld v2\n", runs, tickets, swaps, b1, b2);
  if (runs != SERVERS * iterations || swaps == 0) atomic_fetch_add(&failures, 1);

cleanup:
  for (t = 0; t < SERVERS; t++) example_inputs_free(&servers[t].in);
  graft_registry_free(registry);
  graft_model_free(model);
  return atomic_load(&failures) == 0 ? 0 : 1;
}
