/*
 * add_vector.c — a test adapter kind for graft's C plugin host (tests/tests/plugin_loading.rs).
 *
 * One Post target: y[r][c] += scale * v[c] at a node named in the source file, a text
 * file holding the node name, then exactly as many floats as the node's output width:
 *
 *     top.fc3
 *     0.25
 *
 * The same source builds the broken variants the tests need, one macro each:
 *
 *   KIND_NAME "x"        the kind's name (default "add-vector")
 *   ABI_MAJOR_VALUE n    the table's abi_major (default GRAFT_PLUGIN_ABI_MAJOR)
 *   SMALL_TABLE          struct_size covers only the fields before `post`
 *   NEWER_MINOR          abi_minor 7 and a table with two extra trailing fields
 *   NULL_CREATE          the required `create` slot is NULL
 *   CREATE_ERROR         `create` refuses every adapter
 *   POST_ERROR           `post` returns GRAFT_PLUGIN_TENSOR
 *   POST_NAN             `post` writes NaN into column 0 of its last row
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graft_plugin.h"

#ifndef KIND_NAME
#define KIND_NAME "add-vector"
#endif
#ifndef ABI_MAJOR_VALUE
#define ABI_MAJOR_VALUE GRAFT_PLUGIN_ABI_MAJOR
#endif

typedef struct instance {
    uint32_t node;
    size_t width;
    float* values;
} instance;

static void set_error(graft_plugin_error* err, const char* field, const char* message) {
    if (err == NULL) {
        return;
    }
    snprintf(err->field, sizeof err->field, "%s", field);
    snprintf(err->message, sizeof err->message, "%s", message);
}

static void destroy(void* p) {
    instance* inst = p;
    if (inst != NULL) {
        free(inst->values);
        free(inst);
    }
}

static void* create(const char* source, const char* options, const graft_model_view* model,
                    graft_plugin_error* err) {
    (void)options;
#ifdef CREATE_ERROR
    (void)source;
    (void)model;
    set_error(err, "source", "this plugin refuses every adapter");
    return NULL;
#else
    FILE* f = fopen(source, "r");
    if (f == NULL) {
        set_error(err, "source", "cannot open the vector file");
        return NULL;
    }
    char name[128];
    graft_node_info info;
    if (fscanf(f, "%127s", name) != 1) {
        fclose(f);
        set_error(err, "node", "the file does not start with a node name");
        return NULL;
    }
    if (model->resolve(model->ctx, name, &info, err) != GRAFT_PLUGIN_OK) {
        fclose(f);
        return NULL;
    }
    instance* inst = calloc(1, sizeof *inst);
    float* values = calloc(info.out_features ? info.out_features : 1, sizeof(float));
    if (inst == NULL || values == NULL) {
        fclose(f);
        free(inst);
        free(values);
        set_error(err, "", "out of memory");
        return NULL;
    }
    inst->node = info.node;
    inst->width = info.out_features;
    inst->values = values;
    for (size_t i = 0; i < info.out_features; i++) {
        if (fscanf(f, "%f", &values[i]) != 1 || !isfinite(values[i])) {
            fclose(f);
            destroy(inst);
            set_error(err, "values", "fewer finite values than the node's output width");
            return NULL;
        }
    }
    float extra;
    int more = fscanf(f, "%f", &extra);
    fclose(f);
    if (more == 1) {
        destroy(inst);
        set_error(err, "values", "more values than the node's output width");
        return NULL;
    }
    return inst;
#endif
}

static size_t targets(void* p, graft_target* out, size_t cap) {
    const instance* inst = p;
    if (cap >= 1) {
        out[0].node = inst->node;
        out[0].hook = GRAFT_HOOK_POST;
        out[0].flags = 0;
    }
    return 1;
}

static int32_t post(void* p, const graft_hook_call* call, graft_plugin_error* err) {
    const instance* inst = p;
    if (call->target != 0) {
        set_error(err, "target", "this adapter has one target");
        return GRAFT_PLUGIN_BAD_CALL;
    }
    if (call->y.cols != inst->width) {
        set_error(err, "y", "output width differs from the node's");
        return GRAFT_PLUGIN_BAD_CALL;
    }
#ifdef POST_ERROR
    set_error(err, "values", "post refuses to run");
    return GRAFT_PLUGIN_TENSOR;
#else
    for (size_t r = 0; r < call->y.rows; r++) {
        float* row = call->y.data + r * call->y.stride;
        for (size_t c = 0; c < inst->width; c++) {
            row[c] += call->scale * inst->values[c];
        }
    }
#ifdef POST_NAN
    if (call->y.rows > 0 && inst->width > 0) {
        call->y.data[(call->y.rows - 1) * call->y.stride] = NAN;
    }
#endif
    (void)err;
    return GRAFT_PLUGIN_OK;
#endif
}

static void describe(void* p, char* out, size_t cap) {
    const instance* inst = p;
    snprintf(out, cap, "adds %zu value(s) at node %u", inst->width, (unsigned)inst->node);
}

#ifdef NEWER_MINOR
/* A 1.7 table: the 1.0 fields, then fields this host does not know. */
typedef struct newer_table {
    graft_plugin v1;
    void* future_slot_a;
    void* future_slot_b;
} newer_table;
#define TABLE_TYPE newer_table
#define TABLE_MINOR 7
#else
#define TABLE_TYPE graft_plugin
#define TABLE_MINOR GRAFT_PLUGIN_ABI_MINOR
#endif

#ifdef SMALL_TABLE
#define TABLE_SIZE offsetof(graft_plugin, post)
#else
#define TABLE_SIZE sizeof(TABLE_TYPE)
#endif

#ifdef NULL_CREATE
#define CREATE_SLOT NULL
#else
#define CREATE_SLOT create
#endif

#define TABLE_INIT                   \
    {                                \
        .abi_major = ABI_MAJOR_VALUE, \
        .abi_minor = TABLE_MINOR,     \
        .struct_size = TABLE_SIZE,    \
        .name = KIND_NAME,            \
        .create = CREATE_SLOT,        \
        .destroy = destroy,           \
        .targets = targets,           \
        .state_floats = NULL,         \
        .scratch_floats = NULL,       \
        .linear_delta = NULL,         \
        .tap = NULL,                  \
        .post = post,                 \
        .feedback = NULL,             \
        .describe = describe,         \
    }

#ifdef NEWER_MINOR
static const newer_table TABLE = {TABLE_INIT, NULL, NULL};
#else
static const graft_plugin TABLE = TABLE_INIT;
#endif

const graft_plugin* graft_plugin_entry(void) {
#ifdef NULL_CREATE
    (void)create;
#endif
#ifdef NEWER_MINOR
    return &TABLE.v1;
#else
    return &TABLE;
#endif
}
