//! # graft-plugin-routing
//!
//! The `routing` adapter kind: AdaptDHM multi-distribution routing (Li et al., arXiv
//! 2211.12105). Each row's representation `x` (typically the concatenated feature
//! embeddings) is routed to one of `K` clusters by its nearest center, and that cluster's
//! tower computes the output that replaces the base model's prediction. The executable
//! reference is `Scenario-Wise-Rec` `adaptdhm.py`; the algorithm spec is
//! `algorithms.md` §4.
//!
//! ## Semantics (per row)
//! - Scores `s_j = ⟨x, c_j⟩` with the centers **as stored** (the reference keeps them at
//!   unit norm, which makes this the cosine-nearest center; graft does not renormalize
//!   and does not warn). `κ = argmax_j s_j`; ties go to the lower index, NaN scores rank
//!   below every number (an all-NaN row goes to cluster 0).
//! - Tower of cluster `j` (STAR-style): `a₀ = x`, `a_{ℓ+1} = ReLU(a_ℓ·(W⁰_ℓ ⊙ Wʲ_ℓ) (+ b⁰_ℓ + bʲ_ℓ))`
//!   for the hidden layers, no activation on the last, giving the logit `z`.
//! - `mode = "hard"` (the reference): the output is `z_κ`, or `σ(z_κ)` with
//!   `output_is = "prob"`. `mode = "soft"`: `r = softmax(s)`, `p = Σ_j r_j σ(z_j)` (a
//!   probability mixture; the reference does *not* do this), written as `p`, or as
//!   `logit(clamp(p, 1e-7, 1 − 1e-7))` with `output_is = "logit"`.
//! - Per-request multiplier `m` (the hook's `scale`, default 1):
//!   `y ← (1 − m)·y_base + m·y_routed`, in the output node's units. `m = 0` leaves the base
//!   value untouched, `m = 1` replaces it.
//! - Biases exist in the reference code but are never used; `use_bias = true` follows the
//!   STAR convention `b = b⁰ + bʲ`, which is a reconstruction, not checked against a
//!   primary source.
//!
//! ## File format (`format_version` 1)
//! One safetensors file of F32 tensors. `__metadata__["graft.adapter"]` holds the
//! configuration as a JSON object; the load option `{"config": {...}}` supplies (and takes
//! precedence over) it for files written by other tools. Unknown keys are a `CONFIG` error
//! naming the key.
//!
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `kind` | string | required | must be `"routing"` |
//! | `format_version` | integer | required | must be `1` (`UNSUPPORTED` otherwise) |
//! | `input_node` | string | required | node whose output is `x`; its width must be `dims[0]` (may be a graph input) |
//! | `output_node` | string | required | node whose output is replaced; its width must be `dims.last()`; not a graph input |
//! | `output_is` | `"logit"` \| `"prob"` | `"logit"` | units of the output node |
//! | `clusters` | integer ≥ 1 | required | `K` (at most 2²⁴, so κ is exact in an f32) |
//! | `dims` | array of integers ≥ 1, length ≥ 2 | required | tower widths `[D, h1, …, out]`; `out` is usually 1 |
//! | `activation` | string | `"relu"` | hidden activation; only `"relu"` (others are `UNSUPPORTED`) |
//! | `mode` | `"hard"` \| `"soft"` | `"hard"` | routing mode (above) |
//! | `use_bias` | boolean | `false` | whether bias tensors exist and are applied |
//!
//! Tensors (F32, exact shapes; no other tensor may be present; all values finite). With
//! `L = dims.len() − 1` layers, for `ℓ` in `0..L` and `j` in `0..K`:
//!
//! | name | shape | meaning |
//! |---|---|---|
//! | `centers` | `[K, D]` | cluster centers `c_j` (rows) |
//! | `shared.ℓ.weight` | `[dims[ℓ], dims[ℓ+1]]` | shared weight `W⁰_ℓ`, stored **(in, out)** as in the reference code (not the PyTorch Linear layout) |
//! | `cluster.j.ℓ.weight` | `[dims[ℓ], dims[ℓ+1]]` | cluster weight `Wʲ_ℓ`, (in, out) |
//! | `shared.ℓ.bias` | `[dims[ℓ+1]]` | only with `use_bias` |
//! | `cluster.j.ℓ.bias` | `[dims[ℓ+1]]` | only with `use_bias` |
//!
//! [`Config::tensors`] lists them; [`save`] writes such a file; [`inspect_file`]
//! summarizes one without a model. Note for exporters: the reference code keeps its
//! centers in a plain attribute that PyTorch's `state_dict` does not save; write them
//! explicitly.
//!
//! ## Hooks and run state
//! Target 0 is a `Tap` at `input_node`; target 1 a `Post` at `output_node`. The tap routes
//! the call's rows and runs the towers, leaving per row `dims.last() + 1` floats of state:
//! the routed output (in the output node's units, before the multiplier), then κ as an
//! f32. The post blends the state into the node's value. Hard mode scores the rows with
//! one host GEMM (see Decisions), sorts them by cluster (counting sort into scratch),
//! gathers each cluster's rows and runs its tower with the host `linear` kernel layer by
//! layer (ping-pong buffers in scratch), then scatters the results; soft mode runs every
//! tower over all rows. Hooks never allocate;
//! [`Adapter::scratch_floats`](graft_plugin_abi::Adapter::scratch_floats) of the tap covers
//! `rows` rows, the post needs none. A batch of one row is an ordinary batch (the
//! reference code breaks on it). `merge` and `linear_delta` are `UNSUPPORTED`.
//!
//! ## Decisions
//! - **Folded towers.** At load `W_j,ℓ = W⁰_ℓ ⊙ Wʲ_ℓ` (and `b⁰ + bʲ`) are precomputed per
//!   cluster and transposed to graft's `[out, in]`, so the host kernel runs `K` ordinary
//!   MLPs; a product that overflows f32 is a `NOT_FINITE` error.
//! - **f32 SIMD scores with an exact f64 fallback for rows whose argmax is within the f32
//!   error bound: routing decisions are identical on every machine and equal to the f64
//!   reference.** Hard mode scores a call's rows with one host GEMM `X·Cᵀ`; a row's f32
//!   winner is kept only when its lead over every other score exceeds both scores'
//!   worst-case f32 error (`γ_D·‖x‖·‖c_j‖`, `γ_D = D·u / (1 − D·u)`, `u = 2⁻²⁴`, valid for
//!   any kernel summation order, with slack for flush-to-zero), and every other row (near
//!   ties, identical centers, NaN, overflow) is rescored in f64 with a fixed summation
//!   order. So the decision never depends on kernel tiling, instruction set or how the host
//!   splits rows: identical centers tie exactly and the lower index wins whatever the
//!   batch. With random data at `D = 1728`, `K = 4` about one row in a hundred falls back.
//!   Soft mode uses the scores' values, not just the winner, so it scores every row in f64
//!   (the same fixed order). `D > 2²³` disables the f32 path.
//! - **Owned tensors.** Files are small and transformed at load, so they are read whole
//!   (`std::fs::read`) and copied; nothing stays mapped (`mapped_bytes = 0`).
//! - **NaN propagates.** A NaN in `x` goes to cluster 0 and yields NaN outputs, as the
//!   base model would; ReLU keeps NaN (as torch does).
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
mod route;

pub use adapter::RoutingAdapter;
pub use config::{Activation, Config, FORMAT_VERSION, MAX_CLUSTERS, METADATA_KEY, Mode, OutputIs};
pub use file::{save, save_with_metadata};
pub use inspect::inspect_file;
pub use load::{load_bytes, load_file};

/// The kind's name.
pub const KIND: &str = "routing";

graft_plugin_abi::adapter_kind_module!(kind = KIND, load = load_file);
