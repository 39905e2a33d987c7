/*
 * Self-test of the steering plugin through its table, with a fake model view (no graft
 * host involved). Exit status 0 when every check passes.
 *
 *   cc -std=c11 -Wall -Wextra -Werror -pedantic -o test_steering test_steering.c steering.c -lm
 *   ./test_steering [SCRATCH_DIR]      (default: the current directory)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../abi/include/graft_plugin.h"

const graft_plugin* graft_plugin_entry(void);

static int failures = 0;
static const char* scratch_dir = ".";

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                          \
        }                                                                        \
    } while (0)

/* Nodes: "h1" (activation, width 4, node 3), "fc" (linear 2→3, node 1), "dense" (input). */
static int32_t fake_resolve(void* ctx, const char* name, graft_node_info* out, graft_plugin_error* err) {
    (void)ctx;
    memset(out, 0, sizeof *out);
    if (strcmp(name, "h1") == 0) {
        out->node = 3;
        out->op = GRAFT_NODE_OTHER;
        out->out_features = 4;
    } else if (strcmp(name, "fc") == 0) {
        out->node = 1;
        out->op = GRAFT_NODE_LINEAR;
        out->in_features = 2;
        out->out_features = 3;
        out->has_bias = 1;
    } else if (strcmp(name, "dense") == 0) {
        out->node = 0;
        out->op = GRAFT_NODE_INPUT;
        out->out_features = 4;
    } else {
        snprintf(err->field, sizeof err->field, "%s", name);
        snprintf(err->message, sizeof err->message, "no such node");
        return GRAFT_PLUGIN_UNKNOWN_MODULE;
    }
    snprintf(out->name, sizeof out->name, "/%s/out", name);
    return GRAFT_PLUGIN_OK;
}

static const graft_model_view MODEL = {NULL, fake_resolve, NULL, NULL};

static void write_source(const char* path, const char* text, size_t len) {
    FILE* f = fopen(path, "wb");
    if (f == NULL || fwrite(text, 1, len, f) != len || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
}

/* Creates from `text`; on failure, `err` holds the error. */
static void* create_from(const char* text, size_t len, const char* options, graft_plugin_error* err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/steering_test_source.txt", scratch_dir);
    write_source(path, text, len);
    memset(err, 0, sizeof *err);
    return graft_plugin_entry()->create(path, options, &MODEL, err);
}

static void expect_error(const char* text, const char* options, const char* field) {
    graft_plugin_error err;
    void* inst = create_from(text, strlen(text), options, &err);
    CHECK(inst == NULL);
    if (inst != NULL) {
        graft_plugin_entry()->destroy(inst);
        return;
    }
    if (strcmp(err.field, field) != 0) {
        fprintf(stderr, "source %s: expected field `%s`, got `%s` (%s)\n", text, field, err.field, err.message);
        failures++;
    }
    CHECK(err.message[0] != '\0');
}

static void test_table(void) {
    const graft_plugin* p = graft_plugin_entry();
    CHECK(p == graft_plugin_entry());
    CHECK(p->abi_major == GRAFT_PLUGIN_ABI_MAJOR && p->abi_minor == GRAFT_PLUGIN_ABI_MINOR);
    CHECK(p->struct_size == sizeof(graft_plugin));
    CHECK(strcmp(p->name, "steering") == 0);
    CHECK(p->create && p->destroy && p->targets && p->post && p->describe);
    CHECK(!p->linear_delta && !p->tap && !p->feedback && !p->state_floats && !p->scratch_floats);
}

static void test_post(void) {
    const graft_plugin* p = graft_plugin_entry();
    const char* text = "# steer h1\r\n\nvector 1 -2 4 0.25\r\n  alpha\t0.5  \nnode h1";
    graft_plugin_error err;
    graft_target t[2];
    char desc[128];
    /* Two rows of width 4, stride 5: the fifth column is padding and must stay 42. */
    float y[10] = {1, 1, 1, 1, 42, 0, -1, 2, 8, 42};
    graft_hook_call call;
    void* inst = create_from(text, strlen(text), "", &err);
    CHECK(inst != NULL);
    if (inst == NULL) {
        fprintf(stderr, "create failed: %s: %s\n", err.field, err.message);
        return;
    }
    CHECK(p->targets(inst, NULL, 0) == 1);
    CHECK(p->targets(inst, t, 2) == 1);
    CHECK(t[0].node == 3 && t[0].hook == GRAFT_HOOK_POST && t[0].flags == 0);
    p->describe(inst, desc, sizeof desc);
    CHECK(strcmp(desc, "steering node=h1 alpha=0.5 width=4") == 0);
    p->describe(inst, desc, 9);
    CHECK(strcmp(desc, "steering") == 0);

    memset(&call, 0, sizeof call);
    call.target = 0;
    call.y.data = y;
    call.y.rows = 2;
    call.y.cols = 4;
    call.y.stride = 5;
    call.scale = 2.0f; /* alpha · scale = 1: y += v */
    CHECK(p->post(inst, &call, &err) == GRAFT_PLUGIN_OK);
    {
        const float want[10] = {2, -1, 5, 1.25f, 42, 1, -3, 6, 8.25f, 42};
        int i;
        for (i = 0; i < 10; i++) {
            if (y[i] != want[i]) {
                fprintf(stderr, "y[%d] = %g, want %g\n", i, (double)y[i], (double)want[i]);
                failures++;
            }
        }
    }
    call.scale = 0.0f; /* m = 0: unchanged */
    CHECK(p->post(inst, &call, &err) == GRAFT_PLUGIN_OK && y[0] == 2 && y[8] == 8.25f);

    call.target = 1;
    CHECK(p->post(inst, &call, &err) == GRAFT_PLUGIN_BAD_CALL && strcmp(err.field, "target") == 0);
    call.target = 0;
    call.y.cols = 3;
    CHECK(p->post(inst, &call, &err) == GRAFT_PLUGIN_SHAPE);
    call.y.cols = 4;
    call.scale = NAN;
    CHECK(p->post(inst, &call, &err) == GRAFT_PLUGIN_BAD_CALL);
    call.scale = 1.0f;
    call.y.data = NULL;
    CHECK(p->post(inst, &call, &err) == GRAFT_PLUGIN_BAD_CALL);
    call.y.rows = 0; /* no rows: nothing to do, no data needed */
    CHECK(p->post(inst, &call, &err) == GRAFT_PLUGIN_OK);
    CHECK(y[0] == 2); /* refused calls wrote nothing */
    p->destroy(inst);
}

static void test_errors(void) {
    graft_plugin_error err;
    char long_name[300];
    char buf[512];
    memset(long_name, 'n', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';

    expect_error("alpha 1\nvector 1 2 3 4\n", "", "node");
    expect_error("node h1\nvector 1 2 3 4\n", "", "alpha");
    expect_error("node h1\nalpha 1\n", "", "vector");
    expect_error("", "", "node");
    expect_error("node h1\nnode h1\nalpha 1\nvector 1 2 3 4\n", "", "node");
    expect_error("node h1 extra\nalpha 1\nvector 1 2 3 4\n", "", "node");
    expect_error("node\nalpha 1\nvector 1 2 3 4\n", "", "node");
    expect_error("node h1\nalpha abc\nvector 1 2 3 4\n", "", "alpha");
    expect_error("node h1\nalpha nan\nvector 1 2 3 4\n", "", "alpha");
    expect_error("node h1\nalpha 1e60\nvector 1 2 3 4\n", "", "alpha");
    expect_error("node h1\nalpha 1 2\nvector 1 2 3 4\n", "", "alpha");
    expect_error("node h1\nalpha 1\nalpha 2\nvector 1 2 3 4\n", "", "alpha");
    expect_error("node h1\nalpha 1\nvector 1 x 3 4\n", "", "vector");
    expect_error("node h1\nalpha 1\nvector 1 2 3 inf\n", "", "vector");
    expect_error("node h1\nalpha 1\nvector 1 2 3 4.5.6\n", "", "vector");
    expect_error("node h1\nalpha 1\nvector\n", "", "vector");
    expect_error("node h1\nalpha 1\nvector 1 2 3 4\nvector 1 2 3 4\n", "", "vector");
    expect_error("node h1\nalpha 1\nvector 1 2 3\n", "", "vector");      /* width 4 */
    expect_error("node fc\nalpha 1\nvector 1 2 3 4\n", "", "vector");    /* width 3 */
    expect_error("node h1\nalpha 1\nvector 1 2 3 4\ngain 2\n", "", "gain");
    expect_error("node nope\nalpha 1\nvector 1 2 3 4\n", "", "nope");    /* the host's error */
    expect_error("node dense\nalpha 1\nvector 1 2 3 4\n", "", "node");   /* a graph input */
    expect_error("node h1\nalpha 1\nvector 1 2 3 4\n", "{\"alpha\": 2}", "options");
    expect_error("node h1\nalpha 1\nvector 1 2 3 4\n", "[]", "options");
    snprintf(buf, sizeof buf, "node %s\nalpha 1\nvector 1 2 3 4\n", long_name);
    expect_error(buf, "", "node");

    /* A NUL byte inside the file. */
    {
        static const char with_nul[] = "node h1\nalpha 1\0\nvector 1 2 3 4\n";
        void* inst = create_from(with_nul, sizeof with_nul - 1, "", &err);
        CHECK(inst == NULL && strcmp(err.field, "source") == 0);
    }
    /* Options "{}" and blank are accepted; a missing file and a directory are IO errors. */
    {
        const char* ok = "node fc\nalpha -1.5\nvector 0x1p-2 2e0 -3\n";
        void* inst = create_from(ok, strlen(ok), " { } ", &err);
        char desc[128];
        CHECK(inst != NULL);
        if (inst != NULL) {
            graft_plugin_entry()->describe(inst, desc, sizeof desc);
            CHECK(strcmp(desc, "steering node=fc alpha=-1.5 width=3") == 0);
            graft_plugin_entry()->destroy(inst);
        }
        memset(&err, 0, sizeof err);
        CHECK(graft_plugin_entry()->create("/nonexistent/steering.txt", "", &MODEL, &err) == NULL);
        CHECK(strcmp(err.field, "source") == 0);
        CHECK(graft_plugin_entry()->create(scratch_dir, "", &MODEL, &err) == NULL);
        CHECK(graft_plugin_entry()->create(NULL, "", &MODEL, &err) == NULL);
        CHECK(graft_plugin_entry()->create(ok, "", NULL, &err) == NULL);
    }
    graft_plugin_entry()->destroy(NULL);
}

int main(int argc, char** argv) {
    if (argc > 1) {
        scratch_dir = argv[1];
    }
    test_table();
    test_post();
    test_errors();
    if (failures != 0) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("steering: all checks passed\n");
    return 0;
}
