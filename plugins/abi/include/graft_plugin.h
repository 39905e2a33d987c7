/*
 * graft_plugin.h — the C interface for graft adapter-kind plugins.
 *
 * A C or C++ shared library becomes a graft adapter kind by exporting one symbol:
 *
 *     const graft_plugin* graft_plugin_entry(void);
 *
 * returning a pointer to a static, immutable table (it must stay valid for the life of the
 * process; graft never unloads plugin code). The table starts with a version header and
 * only ever grows at the end:
 *
 *   - `abi_major` changes when the meaning of an existing field changes; a host refuses a
 *     plugin whose major differs from its own.
 *   - `abi_minor` grows when fields are appended; a host accepts a plugin with an older
 *     minor (fields past the plugin's `struct_size` read as absent) and a newer one (it
 *     ignores fields it does not know).
 *   - `struct_size` is `sizeof(graft_plugin)` as the plugin was compiled; it must cover at
 *     least the fields of its minor version.
 *
 * Optional slots may be NULL. Every call is synchronous; hook calls may come from several
 * threads at once, on disjoint rows (a plugin's hooks must be thread-safe and must not
 * keep the pointers they are lent past the call). Matrices are row-major f32 with a row
 * stride in floats. Hooks see a node's output as the graph names it (a linear's output is
 * pre-activation); `tap` writes per-row run state, `post` transforms a node's output in
 * place reading that state, `linear_delta` updates a linear's output from its input.
 * The semantics are those of the Rust interface (graft-plugin-abi); see docs/plugins.md.
 *
 * Errors: a function that fails returns a nonzero `graft_plugin_code` and may fill the
 * `graft_plugin_error` it was lent (NUL-terminated, truncated to the buffer). graft turns
 * it into a typed error naming the plugin, the adapter and the field.
 */
#ifndef GRAFT_PLUGIN_H
#define GRAFT_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GRAFT_PLUGIN_ABI_MAJOR 1
#define GRAFT_PLUGIN_ABI_MINOR 0

/* Status codes (the same values as graft-plugin-abi's ErrorCode; never reused). */
typedef enum graft_plugin_code {
    GRAFT_PLUGIN_OK = 0,
    GRAFT_PLUGIN_IO = 1,
    GRAFT_PLUGIN_CONFIG = 2,
    GRAFT_PLUGIN_TENSOR = 3,
    GRAFT_PLUGIN_SHAPE = 4,
    GRAFT_PLUGIN_NOT_FINITE = 5,
    GRAFT_PLUGIN_UNKNOWN_MODULE = 6,
    GRAFT_PLUGIN_UNSUPPORTED = 7,
    GRAFT_PLUGIN_KERNEL = 8,
    GRAFT_PLUGIN_INTERNAL = 9,
    GRAFT_PLUGIN_BAD_CALL = 10,
    GRAFT_PLUGIN_TICKET = 11,
    GRAFT_PLUGIN_STATE = 12
} graft_plugin_code;

/* Hook kinds (graft-plugin-abi's HookKind). */
typedef enum graft_plugin_hook {
    GRAFT_HOOK_LINEAR_DELTA = 0,
    GRAFT_HOOK_TAP = 1,
    GRAFT_HOOK_POST = 2
} graft_plugin_hook;

/* Node kinds (graft-plugin-abi's NodeOp). */
typedef enum graft_plugin_node_op {
    GRAFT_NODE_LINEAR = 0,
    GRAFT_NODE_EMBEDDING_BAG = 1,
    GRAFT_NODE_OTHER = 2,
    GRAFT_NODE_INPUT = 3
} graft_plugin_node_op;

/* Target flags (graft-plugin-abi's Target::BASE / Target::READS_STATE). */
#define GRAFT_TARGET_BASE 1u
#define GRAFT_TARGET_READS_STATE 2u

/* Error details a failing call may fill in. */
typedef struct graft_plugin_error {
    /* The graft_plugin_code of the failure: how `create` (which returns NULL, not a code)
     * says what kind of failure it was. 0 on entry; hooks may leave it, their return
     * value is the code. */
    int32_t code;
    /* The config field, tensor or file at fault (may stay empty). */
    char field[128];
    /* What was expected and what was found. */
    char message[384];
} graft_plugin_error;

/* A read-only `rows × cols` matrix whose row i starts at `data + i * stride`. */
typedef struct graft_mat {
    const float* data;
    size_t rows;
    size_t cols;
    size_t stride;
} graft_mat;

/* A writable `rows × cols` matrix. */
typedef struct graft_mat_mut {
    float* data;
    size_t rows;
    size_t cols;
    size_t stride;
} graft_mat_mut;

/* A graph node an adapter names, as resolved by the host. */
typedef struct graft_node_info {
    uint32_t node;            /* pass to targets and base_* calls */
    uint32_t op;              /* graft_plugin_node_op */
    size_t in_features;       /* a linear's input width; 0 for non-linear nodes */
    size_t out_features;      /* the node's output width */
    int32_t has_bias;         /* a linear with a bias */
    char name[128];           /* the node's name in the graph (truncated) */
} graft_node_info;

/* One attachment of an adapter. */
typedef struct graft_target {
    uint32_t node;
    uint32_t hook;   /* graft_plugin_hook */
    uint32_t flags;  /* GRAFT_TARGET_* */
} graft_target;

/* The model as a plugin sees it while an adapter loads (valid during `create` only). */
typedef struct graft_model_view {
    void* ctx;
    /* Resolves a module path or node name (a dense graph input resolves too). */
    int32_t (*resolve)(void* ctx, const char* name, graft_node_info* out, graft_plugin_error* err);
    /* Row `row` of a linear's base weight, dequantized, into `out` (`in_features` floats). */
    int32_t (*base_weight_row)(void* ctx, uint32_t node, size_t row, float* out, size_t len);
    /* The model's fingerprint (persistent state must record and check it). */
    uint64_t (*fingerprint)(void* ctx);
} graft_model_view;

/* One hook call: the rows of one group of a batch (or a chunk of it). */
typedef struct graft_hook_call {
    uint32_t target;      /* index into the adapter's targets */
    graft_mat x;          /* linear_delta: the layer input; tap: the node's value; post: empty */
    graft_mat_mut y;      /* linear_delta / post: the node's output, updated in place; tap: empty */
    graft_mat_mut state;  /* rows × state_floats; written by taps, read by the others */
    const float* bias;    /* linear_delta: the base bias (out_features) or NULL */
    uint64_t* tickets;    /* post: one per row, 0 on entry; NULL for other hooks */
    float scale;          /* per-request multiplier (1 = as stored) */
    float* scratch;       /* scratch_floats(target, rows) floats, or NULL when 0 */
    size_t scratch_len;
} graft_hook_call;

/* The plugin's table, version 1.0. */
typedef struct graft_plugin {
    uint32_t abi_major;    /* GRAFT_PLUGIN_ABI_MAJOR the plugin was built with */
    uint32_t abi_minor;    /* GRAFT_PLUGIN_ABI_MINOR the plugin was built with */
    size_t struct_size;    /* sizeof(graft_plugin) as compiled into the plugin */
    const char* name;      /* the kind's name, unique in a host (e.g. "steering") */

    /* Loads one adapter from `source` (a path) with `options` (a JSON object or "") against
     * the model; returns an instance or NULL with `err` filled. */
    void* (*create)(const char* source, const char* options, const graft_model_view* model,
                    graft_plugin_error* err);
    /* Frees an instance (called once, after the last run that used it). */
    void (*destroy)(void* instance);
    /* Writes up to `cap` targets into `out`; returns how many the adapter has. */
    size_t (*targets)(void* instance, graft_target* out, size_t cap);

    /* Optional (NULL: 0). Floats of per-row run state. */
    size_t (*state_floats)(void* instance);
    /* Optional (NULL: 0). Floats of scratch one hook call at `target` over `rows` needs. */
    size_t (*scratch_floats)(void* instance, uint32_t target, size_t rows);
    /* Optional hooks (NULL: the adapter may not have targets of that kind). */
    int32_t (*linear_delta)(void* instance, const graft_hook_call* call, graft_plugin_error* err);
    int32_t (*tap)(void* instance, const graft_hook_call* call, graft_plugin_error* err);
    int32_t (*post)(void* instance, const graft_hook_call* call, graft_plugin_error* err);
    /* Optional: the label for a ticket a post issued. */
    int32_t (*feedback)(void* instance, uint64_t ticket, float label, graft_plugin_error* err);
    /* Optional: a one-line summary for `graft adapter inspect` into `out` (NUL-terminated). */
    void (*describe)(void* instance, char* out, size_t cap);
} graft_plugin;

/* The one symbol a plugin exports. */
typedef const graft_plugin* (*graft_plugin_entry_fn)(void);
#define GRAFT_PLUGIN_ENTRY_SYMBOL "graft_plugin_entry"

#ifdef __cplusplus
}
#endif

#endif /* GRAFT_PLUGIN_H */
