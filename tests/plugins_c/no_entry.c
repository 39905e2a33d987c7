/*
 * no_entry.c — a shared library that is not a graft plugin: it exports neither
 * `graft_plugin_entry` nor the Rust root-module symbol (tests/tests/plugin_loading.rs).
 */
int graft_something_else(void);

int graft_something_else(void) {
    return 42;
}
