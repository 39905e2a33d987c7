/*
 * common_inputs.h: deterministic request inputs for the examples and C tests.
 *
 * Every graph input is filled from its description (graft_model_input): dense features
 * from an integer pattern mapped into [-1, 1), ids spread over [0, id_bound). The Rust
 * tests build the same values to compare outputs with the Rust API, so the formulas
 * use only exact integer arithmetic and one float division.
 */
#ifndef GRAFT_EXAMPLE_INPUTS_H
#define GRAFT_EXAMPLE_INPUTS_H

#include <stdint.h>
#include <stdlib.h>

#include "graft.h"

typedef struct example_inputs {
  size_t count;      /* inputs filled so far */
  graft_input *items; /* one per graph input */
  void **buffers;     /* the data of each item, owned */
} example_inputs;

static inline float example_dense(size_t row, size_t width, size_t col, size_t salt) {
  return (float)(((row * width + col) * 37u + salt * 11u) % 101u) / 50.0f - 1.0f;
}

static inline int64_t example_id(size_t row, size_t col, size_t input, size_t bound, size_t salt) {
  return (int64_t)((row * 31u + col * 17u + input * 7u + salt * 5u) % (bound ? bound : 1u));
}

static inline void example_inputs_free(example_inputs *in) {
  size_t k;
  for (k = 0; k < in->count; k++) free(in->buffers[k]);
  free(in->items);
  free((void *)in->buffers);
  in->items = NULL;
  in->buffers = NULL;
  in->count = 0;
}

/* Fills `in` with `rows` rows for every input of `model`; `salt` varies the values.
 * Returns GRAFT_STATUS_OK or the failing status; free `in` with example_inputs_free
 * either way. */
static inline graft_status example_inputs_make(const graft_model *model, size_t rows, size_t salt,
                                        example_inputs *in) {
  size_t n = 0, k, r, c;
  graft_status st = graft_model_input_count(model, &n);
  in->count = 0;
  in->items = NULL;
  in->buffers = NULL;
  if (st != GRAFT_STATUS_OK) return st;
  in->items = (graft_input *)calloc(n + 1, sizeof(graft_input));
  in->buffers = (void **)calloc(n + 1, sizeof(void *));
  if (!in->items || !in->buffers) return GRAFT_STATUS_OTHER;
  for (k = 0; k < n; k++) {
    graft_input_info info;
    graft_input *item = &in->items[k];
    st = graft_model_input(model, k, &info);
    if (st != GRAFT_STATUS_OK) return st;
    item->name = info.name;
    item->dtype = info.dtype;
    if (info.kind == GRAFT_INPUT_KIND_DENSE) {
      float *v = (float *)malloc(sizeof(float) * (rows * info.width + 1));
      if (!v) return GRAFT_STATUS_OTHER;
      for (r = 0; r < rows; r++)
        for (c = 0; c < info.width; c++) v[r * info.width + c] = example_dense(r, info.width, c, salt);
      item->data = v;
      item->rank = 2;
      item->dims[0] = rows;
      item->dims[1] = info.width;
      in->buffers[k] = v;
    } else {
      size_t per_row = info.kind == GRAFT_INPUT_KIND_IDS ? info.width : 1;
      int64_t *v = (int64_t *)malloc(sizeof(int64_t) * (rows * per_row + 1));
      if (!v) return GRAFT_STATUS_OTHER;
      for (r = 0; r < rows; r++)
        for (c = 0; c < per_row; c++)
          v[r * per_row + c] = info.kind == GRAFT_INPUT_KIND_BAG_OFFSETS
                                   ? (int64_t)r
                                   : example_id(r, c, k, info.id_bound, salt);
      item->data = v;
      item->rank = info.kind == GRAFT_INPUT_KIND_IDS ? 2 : 1;
      item->dims[0] = rows;
      item->dims[1] = info.kind == GRAFT_INPUT_KIND_IDS ? info.width : 0;
      in->buffers[k] = v;
    }
    in->count = k + 1;
  }
  return GRAFT_STATUS_OK;
}

#endif /* GRAFT_EXAMPLE_INPUTS_H */
