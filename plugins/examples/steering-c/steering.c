/*
 * steering.c — an example graft adapter kind written in C: activation steering.
 *
 * An adapter of kind "steering" adds a fixed direction to one node's output, for every
 * row:  y += alpha · scale · v,  where `scale` is the per-request multiplier (1 = as
 * stored). It is one Post target at the node, written against graft_plugin.h only.
 *
 * Source file (a small text file; one key per line, any order, each exactly once):
 *
 *     # comments and blank lines are ignored; CRLF line ends are accepted
 *     node h1
 *     alpha 0.5
 *     vector 1 -2 4 0.25
 *
 *   node    the node (or module path) to steer, resolved by the host; at most 127 bytes,
 *           no spaces. It may not be a graph input (a Post hook changes a node's output).
 *   alpha   a finite float.
 *   vector  finite floats separated by spaces or tabs, on that one line; exactly as many
 *           as the node's output width.
 *
 * Numbers are parsed with strtof (C locale: '.' as the decimal point; hex floats are
 * accepted). Load options must be empty or "{}".
 *
 * Errors: every problem with the source is reported with the field at fault ("source",
 * "node", "alpha", "vector", an unknown key) and a message naming the line. The intended
 * codes are GRAFT_PLUGIN_IO (unreadable file), GRAFT_PLUGIN_CONFIG (malformed source or
 * options) and GRAFT_PLUGIN_SHAPE (vector length ≠ node width); `create` itself can only
 * return NULL with the error filled (graft_plugin.h 1.0 has no code channel for it).
 *
 * Build:  cc -std=c11 -Wall -Wextra -Werror -pedantic -shared -fPIC \
 *             -o libgraft_steering.so steering.c
 */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../abi/include/graft_plugin.h"

#if defined(_WIN32)
#define STEERING_EXPORT __declspec(dllexport)
#elif defined(__GNUC__)
#define STEERING_EXPORT __attribute__((visibility("default")))
#else
#define STEERING_EXPORT
#endif

#if defined(__GNUC__)
#define STEERING_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define STEERING_PRINTF(fmt, args)
#endif

/* Largest source file read (a vector of a million floats fits easily). */
#define STEERING_MAX_SOURCE_BYTES ((size_t)16 << 20)
/* Longest node name (graft_node_info.name holds 127 bytes and a NUL). */
#define STEERING_MAX_NAME 127

typedef struct steering {
    char node_name[STEERING_MAX_NAME + 1]; /* as written in the source */
    uint32_t node;                         /* resolved by the host */
    float alpha;
    size_t width;
    float* vector; /* width floats */
} steering;

STEERING_PRINTF(4, 5)
static int32_t fail(graft_plugin_error* err, graft_plugin_code code, const char* field, const char* fmt, ...) {
    if (err != NULL) {
        va_list ap;
        err->code = (int32_t)code;
        snprintf(err->field, sizeof err->field, "%s", field);
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return (int32_t)code;
}

static int is_blank(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

/* The next blank-separated token at *cursor (NULL at the end of the line). */
static const char* next_token(const char** cursor, size_t* len) {
    const char* p = *cursor;
    const char* start;
    while (is_blank(*p)) {
        p++;
    }
    if (*p == '\0') {
        *cursor = p;
        return NULL;
    }
    start = p;
    while (*p != '\0' && !is_blank(*p)) {
        p++;
    }
    *len = (size_t)(p - start);
    *cursor = p;
    return start;
}

/* A whole token as a finite float. */
static int parse_float(const char* tok, size_t len, float* out) {
    char* end = NULL;
    float v = strtof(tok, &end);
    if (end != tok + len || !isfinite(v)) {
        return 0;
    }
    *out = v;
    return 1;
}

/* Reads the whole file into a NUL-terminated buffer (the caller frees it). */
static int32_t read_source(const char* path, char** out, size_t* out_len, graft_plugin_error* err) {
    FILE* f;
    char* buf = NULL;
    size_t len = 0, cap = 0;
    if (path == NULL) {
        return fail(err, GRAFT_PLUGIN_IO, "source", "no source path");
    }
    f = fopen(path, "rb");
    if (f == NULL) {
        return fail(err, GRAFT_PLUGIN_IO, "source", "cannot open %s", path);
    }
    for (;;) {
        size_t n;
        if (len == cap) {
            size_t next = cap == 0 ? 4096 : cap * 2;
            char* grown;
            if (cap > STEERING_MAX_SOURCE_BYTES) {
                free(buf);
                fclose(f);
                return fail(err, GRAFT_PLUGIN_CONFIG, "source", "%s is larger than %zu bytes", path,
                            STEERING_MAX_SOURCE_BYTES);
            }
            grown = realloc(buf, next + 1);
            if (grown == NULL) {
                free(buf);
                fclose(f);
                return fail(err, GRAFT_PLUGIN_IO, "source", "out of memory reading %s", path);
            }
            buf = grown;
            cap = next;
        }
        n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            break;
        }
    }
    if (ferror(f)) {
        free(buf);
        fclose(f);
        return fail(err, GRAFT_PLUGIN_IO, "source", "cannot read %s", path);
    }
    fclose(f);
    if (len > STEERING_MAX_SOURCE_BYTES) {
        free(buf);
        return fail(err, GRAFT_PLUGIN_CONFIG, "source", "%s is larger than %zu bytes", path, STEERING_MAX_SOURCE_BYTES);
    }
    if (memchr(buf, '\0', len) != NULL) {
        free(buf);
        return fail(err, GRAFT_PLUGIN_CONFIG, "source", "%s contains a NUL byte (not a text file)", path);
    }
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return GRAFT_PLUGIN_OK;
}

/* Parses one "vector" line's values (after the keyword) into a new array. */
static int32_t parse_vector(const char* rest, unsigned line, steering* s, graft_plugin_error* err) {
    const char* cursor = rest;
    const char* tok;
    size_t len = 0, count = 0, i = 0;
    while (next_token(&cursor, &len) != NULL) {
        count++;
    }
    if (count == 0) {
        return fail(err, GRAFT_PLUGIN_CONFIG, "vector", "line %u: `vector` has no values", line);
    }
    s->vector = calloc(count, sizeof *s->vector);
    if (s->vector == NULL) {
        return fail(err, GRAFT_PLUGIN_CONFIG, "vector", "line %u: cannot allocate %zu floats", line, count);
    }
    cursor = rest;
    while ((tok = next_token(&cursor, &len)) != NULL) {
        if (!parse_float(tok, len, &s->vector[i])) {
            return fail(err, GRAFT_PLUGIN_CONFIG, "vector", "line %u: value %zu `%.*s` is not a finite number", line, i,
                        (int)(len > 64 ? 64 : len), tok);
        }
        i++;
    }
    s->width = count;
    return GRAFT_PLUGIN_OK;
}

/* Parses the source text into `s` (node name, alpha, vector). */
static int32_t parse_source(char* text, size_t len, steering* s, graft_plugin_error* err) {
    char* line = text;
    char* end = text + len;
    unsigned lineno = 0;
    int have_node = 0, have_alpha = 0;
    while (line <= end) {
        char* nl = memchr(line, '\n', (size_t)(end - line));
        char* line_end = nl != NULL ? nl : end;
        const char* cursor = line;
        const char* key;
        size_t key_len = 0;
        int32_t rc;
        *line_end = '\0';
        lineno++;
        key = next_token(&cursor, &key_len);
        if (key != NULL && key[0] != '#') {
            if (key_len == 4 && strncmp(key, "node", 4) == 0) {
                size_t name_len = 0, extra_len = 0;
                const char* name = next_token(&cursor, &name_len);
                if (have_node) {
                    return fail(err, GRAFT_PLUGIN_CONFIG, "node", "line %u: `node` given twice", lineno);
                }
                if (name == NULL) {
                    return fail(err, GRAFT_PLUGIN_CONFIG, "node", "line %u: `node` needs a name", lineno);
                }
                if (next_token(&cursor, &extra_len) != NULL) {
                    return fail(err, GRAFT_PLUGIN_CONFIG, "node", "line %u: a node name has no spaces", lineno);
                }
                if (name_len > STEERING_MAX_NAME) {
                    return fail(err, GRAFT_PLUGIN_CONFIG, "node", "line %u: node name of %zu bytes (at most %d)",
                                lineno, name_len, STEERING_MAX_NAME);
                }
                memcpy(s->node_name, name, name_len);
                s->node_name[name_len] = '\0';
                have_node = 1;
            } else if (key_len == 5 && strncmp(key, "alpha", 5) == 0) {
                size_t tok_len = 0, extra_len = 0;
                const char* tok = next_token(&cursor, &tok_len);
                if (have_alpha) {
                    return fail(err, GRAFT_PLUGIN_CONFIG, "alpha", "line %u: `alpha` given twice", lineno);
                }
                if (tok == NULL || !parse_float(tok, tok_len, &s->alpha) || next_token(&cursor, &extra_len) != NULL) {
                    return fail(err, GRAFT_PLUGIN_CONFIG, "alpha", "line %u: `alpha` needs one finite number",
                                lineno);
                }
                have_alpha = 1;
            } else if (key_len == 6 && strncmp(key, "vector", 6) == 0) {
                if (s->vector != NULL) {
                    return fail(err, GRAFT_PLUGIN_CONFIG, "vector", "line %u: `vector` given twice", lineno);
                }
                rc = parse_vector(cursor, lineno, s, err);
                if (rc != GRAFT_PLUGIN_OK) {
                    return rc;
                }
            } else {
                char field[32];
                snprintf(field, sizeof field, "%.*s", (int)(key_len > 31 ? 31 : key_len), key);
                return fail(err, GRAFT_PLUGIN_CONFIG, field,
                            "line %u: unknown key `%s` (expected node, alpha, vector)", lineno, field);
            }
        }
        if (nl == NULL) {
            break;
        }
        line = nl + 1;
    }
    if (!have_node) {
        return fail(err, GRAFT_PLUGIN_CONFIG, "node", "missing `node <name>` line");
    }
    if (!have_alpha) {
        return fail(err, GRAFT_PLUGIN_CONFIG, "alpha", "missing `alpha <float>` line");
    }
    if (s->vector == NULL) {
        return fail(err, GRAFT_PLUGIN_CONFIG, "vector", "missing `vector <floats...>` line");
    }
    return GRAFT_PLUGIN_OK;
}

/* Options: NULL, blank, or an empty JSON object. */
static int options_empty(const char* options) {
    const char* p = options;
    if (p == NULL) {
        return 1;
    }
    while (is_blank(*p) || *p == '\n') {
        p++;
    }
    if (*p == '\0') {
        return 1;
    }
    if (*p++ != '{') {
        return 0;
    }
    while (is_blank(*p) || *p == '\n') {
        p++;
    }
    if (*p++ != '}') {
        return 0;
    }
    while (is_blank(*p) || *p == '\n') {
        p++;
    }
    return *p == '\0';
}

static void steering_destroy(void* instance) {
    steering* s = instance;
    if (s != NULL) {
        free(s->vector);
        free(s);
    }
}

/* Everything `create` checks, reporting a code (see the header comment on codes). */
static int32_t build(steering* s, const char* source, const char* options, const graft_model_view* model,
                     graft_plugin_error* err) {
    graft_node_info info;
    char* text = NULL;
    size_t len = 0;
    int32_t rc;
    if (!options_empty(options)) {
        return fail(err, GRAFT_PLUGIN_CONFIG, "options", "the steering kind takes no options (pass \"\" or {})");
    }
    if (model == NULL || model->resolve == NULL) {
        return fail(err, GRAFT_PLUGIN_BAD_CALL, "model", "no model view to resolve the node with");
    }
    rc = read_source(source, &text, &len, err);
    if (rc != GRAFT_PLUGIN_OK) {
        return rc;
    }
    rc = parse_source(text, len, s, err);
    free(text);
    if (rc != GRAFT_PLUGIN_OK) {
        return rc;
    }
    memset(&info, 0, sizeof info);
    rc = model->resolve(model->ctx, s->node_name, &info, err);
    if (rc != GRAFT_PLUGIN_OK) {
        if (err != NULL && err->message[0] == '\0') {
            fail(err, (graft_plugin_code)rc, s->node_name, "the host cannot resolve node `%s`", s->node_name);
        }
        return rc;
    }
    if (info.op == GRAFT_NODE_INPUT) {
        return fail(err, GRAFT_PLUGIN_CONFIG, "node", "`%s` is a graph input; steering changes a node's output",
                    s->node_name);
    }
    if (info.out_features != s->width) {
        return fail(err, GRAFT_PLUGIN_SHAPE, "vector", "%zu values, but node `%s` has width %zu", s->width,
                    s->node_name, info.out_features);
    }
    s->node = info.node;
    return GRAFT_PLUGIN_OK;
}

static void* steering_create(const char* source, const char* options, const graft_model_view* model,
                             graft_plugin_error* err) {
    steering* s = calloc(1, sizeof *s);
    if (s == NULL) {
        fail(err, GRAFT_PLUGIN_INTERNAL, "", "out of memory");
        return NULL;
    }
    if (build(s, source, options, model, err) != GRAFT_PLUGIN_OK) {
        steering_destroy(s);
        return NULL;
    }
    return s;
}

static size_t steering_targets(void* instance, graft_target* out, size_t cap) {
    const steering* s = instance;
    if (s == NULL) {
        return 0;
    }
    if (out != NULL && cap >= 1) {
        out[0].node = s->node;
        out[0].hook = GRAFT_HOOK_POST;
        out[0].flags = 0;
    }
    return 1;
}

static int32_t steering_post(void* instance, const graft_hook_call* call, graft_plugin_error* err) {
    const steering* s = instance;
    float c;
    size_t r, j;
    if (s == NULL || call == NULL) {
        return fail(err, GRAFT_PLUGIN_BAD_CALL, "", "post called without an instance or a call");
    }
    if (call->target != 0) {
        return fail(err, GRAFT_PLUGIN_BAD_CALL, "target", "target %u out of range: the adapter has 1 target",
                    (unsigned)call->target);
    }
    if (call->y.cols != s->width) {
        return fail(err, GRAFT_PLUGIN_SHAPE, s->node_name, "y has %zu columns, the node has width %zu", call->y.cols,
                    s->width);
    }
    if (call->y.rows > 0 && (call->y.data == NULL || (call->y.rows > 1 && call->y.stride < call->y.cols))) {
        return fail(err, GRAFT_PLUGIN_BAD_CALL, s->node_name, "y has no data or a stride shorter than its rows");
    }
    if (!isfinite(call->scale)) {
        return fail(err, GRAFT_PLUGIN_BAD_CALL, s->node_name, "scale multiplier is not finite");
    }
    c = s->alpha * call->scale;
    for (r = 0; r < call->y.rows; r++) {
        float* y = call->y.data + r * call->y.stride;
        for (j = 0; j < s->width; j++) {
            y[j] += c * s->vector[j];
        }
    }
    return GRAFT_PLUGIN_OK;
}

static void steering_describe(void* instance, char* out, size_t cap) {
    const steering* s = instance;
    if (s == NULL || out == NULL || cap == 0) {
        return;
    }
    snprintf(out, cap, "steering node=%s alpha=%g width=%zu", s->node_name, (double)s->alpha, s->width);
}

static const graft_plugin STEERING_TABLE = {
    .abi_major = GRAFT_PLUGIN_ABI_MAJOR,
    .abi_minor = GRAFT_PLUGIN_ABI_MINOR,
    .struct_size = sizeof(graft_plugin),
    .name = "steering",
    .create = steering_create,
    .destroy = steering_destroy,
    .targets = steering_targets,
    .state_floats = NULL,
    .scratch_floats = NULL,
    .linear_delta = NULL,
    .tap = NULL,
    .post = steering_post,
    .feedback = NULL,
    .describe = steering_describe,
};

STEERING_EXPORT const graft_plugin* graft_plugin_entry(void);

STEERING_EXPORT const graft_plugin* graft_plugin_entry(void) {
    return &STEERING_TABLE;
}
