//! # graft-plugin-ssf-pool
//!
//! The `ssf-pool` adapter kind: SSF scale-and-shift adapters (Lian et al., NeurIPS 2022)
//! and FedIns instance-adaptive SSF pools (Feng et al., ICCV 2023), applied through the
//! stable plugin interface of `graft-plugin-abi`. One kind covers both: a config without a
//! `pool` is static SSF, a config with one selects SSF parameters per row.
//!
//! ## Semantics
//! - **Static SSF.** At every site (a node's output, `C` wide): `y ← γ ⊙ y + β`, one `Post`
//!   hook per site, no run state.
//! - **Pool (FedIns).** A `Tap` at the query node (a graph input or any node, `D` wide) per
//!   row: `q̂ = q / max(‖q‖₂, eps)`, `sim_p = q̂ · k̂_p` (keys normalized the same way at
//!   load), `I` = the `top_k` largest similarities, best first. Equal similarities take the
//!   lower index first (so an all-zero query selects entries `0..top_k`); NaN ranks below
//!   every number (a query with NaN or ±inf has only NaN similarities and also selects
//!   `0..top_k`). It writes the uniform means `γ_s = mean_{p∈I} Γ_s[p]`,
//!   `β_s = mean_{p∈I} B_s[p]` to the row's state; each site's `Post` applies them. With
//!   `base_query` (default) the tap carries [`Target::BASE`](graft_plugin_abi::Target::BASE):
//!   FedIns queries the plain backbone. The reference similarity accumulates norms and
//!   dots in f64 and rounds to f32 once. The tap computes it as f32 SIMD similarities
//!   (one host GEMM per call) with an exact f64 fallback for rows whose ranking is within
//!   the f32 error bound (see `select.rs`): the selection, order included, is the f64
//!   reference's, identical on every instruction set and for any split of the rows.
//!   [`SsfPoolAdapter::fallback_rows`] counts the rows that took the fallback.
//! - **Ordering.** The query tap must run before the posts and the head that read its
//!   state. FedIns queries the final norm's output, *after* every site: with `base_query`
//!   the host computes it in a hook-free prefix pass. A query downstream of a site with
//!   `base_query = false` cannot be served; the kind cannot see graph order, so the host
//!   has to refuse that combination. The head validates the indices it reads (integers
//!   below `P`), but a zeroed state (tap skipped) reads as a valid selection of entry 0.
//! - **Pooled head (optional).** A `LinearDelta` at a linear node that *replaces* its
//!   output: `y = mean_{p∈I}(W_p x + b_p)`, through the host's GEMM kernel, one GEMM per
//!   selected entry over the rows that chose it.
//! - **Per-request multiplier `m`** (the call's `scale`) interpolates from the identity:
//!   `γ' = 1 + m(γ − 1)`, `β' = mβ` (`m = 1`: the stored parameters exactly; `m = 0`: the
//!   base output untouched); the head gives `y = (1 − m)·y_base + m·y_head`. Selection does
//!   not depend on `m`. A non-finite `m` is a `BAD_CALL`.
//! - **Merge.** Static SSF at a linear site folds exactly:
//!   `W'[o,:] = γ_o W[o,:]`, `b' = γ ⊙ b + β` (algorithms.md §2.2). A pool refuses with
//!   `UNSUPPORTED`: its parameters differ per instance.
//!
//! ## Run state (pool only)
//! `state_floats = Σ_s 2·C_s + top_k` per row: for each site in config order its averaged
//! γ (`C_s` floats) then β (`C_s`), then the `top_k` selected entry indices as f32 (exact:
//! pools are limited to 2²⁴ entries), best first. [`SsfPoolAdapter::gamma_columns`],
//! [`beta_columns`](SsfPoolAdapter::beta_columns) and
//! [`selection_columns`](SsfPoolAdapter::selection_columns) give the ranges. Static SSF
//! keeps no state.
//!
//! Targets, in order: the query `Tap` (pool only), one `Post` per site in config order, the
//! head `LinearDelta` (if any).
//!
//! ## File format
//! One safetensors file of **F32** tensors whose `__metadata__` maps `graft.adapter` to
//! the JSON config below. A file written by another tool may lack that entry; the load
//! option `{"config": {...}}` then supplies it (and takes precedence over the file's). The
//! load options accept no other key. [`save`] writes such a file.
//!
//! ```json
//! { "kind": "ssf-pool", "format_version": 1,
//!   "sites": [ {"node": "/fc1/Gemm", "gamma": "gamma_1", "beta": "beta_1"} ],
//!   "pool": { "keys": "keys", "query": "x", "top_k": 2, "query_eps": 1e-12, "base_query": true },
//!   "head": { "node": "/fc3/Gemm", "weight": "head_weight", "bias": "head_bias" } }
//! ```
//!
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `kind` | string | required | must be `"ssf-pool"` |
//! | `format_version` | integer | required | must be `1` (others: `UNSUPPORTED`) |
//! | `sites` | array, ≥ 1 | required | SSF sites; no node twice; no graph input |
//! | `sites[i].node` | string | required | module path of the node whose output is adapted |
//! | `sites[i].gamma` / `.beta` | string | required | tensor names (shapes below) |
//! | `pool` | object | absent | absent: static SSF; present: FedIns selection |
//! | `pool.keys` | string | required | tensor name of the keys |
//! | `pool.query` | string | required | module path of the query node (may be a graph input) |
//! | `pool.top_k` | integer | required | entries averaged per row, `1 ≤ top_k ≤ P` |
//! | `pool.query_eps` | number | `1e-12` | norm floor of the normalization, finite, `> 0` |
//! | `pool.base_query` | bool | `true` | query sees the base model's value (`Target::BASE`) |
//! | `head` | object | absent | pooled classifier heads (needs `pool`) |
//! | `head.node` | string | required | module path of a linear node (not the query node) |
//! | `head.weight` | string | required | tensor name of the head weights |
//! | `head.bias` | string | absent | tensor name of the head biases (absent: zero) |
//!
//! Unknown keys and keys written twice are `CONFIG` errors naming the key.
//!
//! | tensor | shape | notes |
//! |---|---|---|
//! | site γ, β (static) | `[C]` or `[1, C]` | `C` = the site node's output width |
//! | site γ, β (pool) | `[P, C]` | one row per pool entry |
//! | `pool.keys` | `[P, D]` | `D` = the query node's output width, `1 ≤ P ≤ 2²⁴` |
//! | head weight | `[P, out, in]` | the head node's `[out, in]` layout per entry |
//! | head bias | `[P, out]` | |
//!
//! Every value must be finite (`NOT_FINITE` names the tensor and index); other dtypes,
//! missing tensors and tensors the config does not name are `TENSOR` errors; wrong shapes
//! are `SHAPE` errors; an unknown module path keeps the host's `UNKNOWN_MODULE` code and
//! names the config field.
//!
//! ## Linking
//! [`module`] returns the root module for static linking. With the `plugin` feature the
//! crate also exports the abi_stable root-module symbol, so the `cdylib` loads as a
//! plugin; it is off by default because several statically linked kinds would collide.

// `Adapter` is a `#[sabi_trait]`; its impl may expand to items the lint flags.
#![allow(non_local_definitions)]

mod adapter;
mod config;
mod file;
mod inspect;
mod load;
mod select;

pub use adapter::SsfPoolAdapter;
pub use config::{CONFIG_KIND, Config, DEFAULT_QUERY_EPS, FORMAT_VERSION, HeadConfig, PoolConfig, SiteConfig};
pub use file::{CONFIG_KEY, save};
pub use inspect::{inspect_file, inspect_file_with_options};
pub use load::{MAX_POOL_SIZE, load_bytes, load_file};

/// The kind's name.
pub const KIND: &str = "ssf-pool";

graft_plugin_abi::adapter_kind_module!(kind = KIND, load = load_file);
