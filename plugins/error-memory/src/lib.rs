//! # graft-plugin-error-memory
//!
//! The `error-memory` adapter kind: a ReLoop2-style error memory (Zhu et al., KDD 2023,
//! arXiv 2306.08808). A frozen base model predicts `ŷ`; the memory keeps an LSH sketch of
//! the errors `e = y − ŷ` the model made on recent traffic, keyed by a hidden
//! representation `h`, and shifts each new prediction by `λ·ê(h)`, where `ê(h)` is the
//! error the memory recalls for similar keys. Labels arrive later through
//! [`feedback`](graft_plugin_abi::Adapter::feedback), so the memory learns while serving
//! and the base model never changes.
//!
//! **This is graft's reconstruction.** The paper's sources establish only a fast
//! non-parametric memory of error samples, top-k retrieval of similar samples, an LSH
//! sketch with O(1) access and constant memory, and continuous refresh. The sketch layout,
//! the estimators, the compensation and the forgetting rule below are graft's design
//! (reference spec §3, marked "recon" there), offered as documented options.
//!
//! ## Semantics
//! - **Key and buckets.** `h ∈ R^d` is the output of `key_node` (`d` its width). There are
//!   `L = tables` hash tables of `p = bits` signed random projections: `R_l ∈ R^{p×d}` and
//!   `b_l(h) = Σ_t [R_l[t]·h ≥ 0]·2^t ∈ [0, 2^p)`.
//! - **Memory.** Each bucket `(l, b)` holds an error sum `S`, a weight `C`, and, for
//!   `estimate = "topk"`, a key sum `Kσ ∈ R^d`. Inserting `(h, e)` adds, in every table,
//!   `w·e` to `S`, `w` to `C` and `w·h` to `Kσ` of bucket `b_l(h)` (`w` is the decay
//!   weight below); `estimate = "exact"` also keeps the last `exact_capacity` raw samples.
//! - **Estimates** `ê(h)`:
//!   - `pooled`: `Σ_l S[l,b_l] / Σ_l C[l,b_l]`, 0 when the denominator is 0. O(L).
//!   - `topk`: the `L` hit buckets are pseudo-samples with key `Kσ/C` and error `S/C`
//!     (empty buckets skipped); the `k` with the largest cosine to `h` (ties: the lower
//!     table index) are averaged with weights `softmax(cos/τ)`. O(L·d).
//!   - `exact`: the same top-k softmax over the raw samples in the ring (ties: the older
//!     sample). O(exact_capacity·d) per query: a reference mode for checking the sketch,
//!     not for serving.
//!
//!   Cosines use `normalize(v) = v / max(‖v‖, 1e-12)`.
//! - **Compensation** (at `output_node`, which must have width 1): with `ŷ` the node's value
//!   (`σ(z)` if `output_is = "logit"`), `m` the call's per-request scale multiplier, and
//!   `δ = λ·m·ê`: `space = "prob"` gives `ŷ' = clip(ŷ + δ, 0, 1)`; `space = "logit"` gives
//!   `z' = logit(ŷ) + δ`. The result is written back in the node's units (a probability
//!   is clamped to `[logit_eps, 1 − logit_eps]` before `logit`; a logit node in logit
//!   space is shifted directly, `z' = z + δ`). When `δ = 0` the value is left untouched.
//! - **Learning.** Each compensated row gets a ticket; `feedback(ticket, y)` with a label
//!   `y ∈ [0, 1]` computes `e = y − ŷ` (`space = "prob"`) or
//!   `e = logit(y) − logit(ŷ)` with both clamped by `logit_eps` (`space = "logit"`), where
//!   `ŷ` is the row's **uncompensated** prediction, so the memory never feeds on itself.
//!   The sample is inserted only if `|e| ≥ threshold`.
//! - **Forgetting.** `decay = ρ` decays every bucket by `ρ` per insertion. It is
//!   implemented exactly, in O(L) per insert, by inserting the `t`-th sample with global
//!   weight `ρ^(−t)`: every estimator reads only ratios (`ΣS/ΣC`, `S/C`, `Kσ/C`), which a
//!   factor common to all cells cancels. The weight is renormalized (all cells divided by
//!   it) when it would exceed 1e10. The exact ring does not decay; it forgets by capacity.
//!   Cells are f32: with `ρ = 1`, past 2^24 inserts into one bucket new samples stop
//!   moving it, so long streams want `ρ < 1`; with strong decay, a bucket whose every
//!   sample has decayed below f32 range (`ρ^age` under about 1e-38) reads as empty.
//! - **Guards.** A row whose key is not finite gets `ê = 0`; a row whose key is not finite
//!   or exceeds 1e12 in magnitude, or whose output is not finite, gets no ticket (0) and
//!   is never learned from. A probability node holding a value outside `[0, 1]` is a
//!   `BAD_CALL` (set `output_is = "logit"`).
//!
//! ## File format
//! One safetensors file. Its `__metadata__` key `graft.adapter` holds the config JSON
//! (or the load option `{"config": {…}}` supplies it, taking precedence). Unknown keys,
//! repeated keys, wrong types and out-of-range values are `CONFIG` errors naming the key.
//!
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `kind` | string | required | `"error-memory"` |
//! | `format_version` | integer | required | `1` |
//! | `key_node` | string | required | node whose output is the key `h` (may be a graph input) |
//! | `output_node` | string | required | node whose output is compensated; width 1 |
//! | `output_is` | `"prob"` \| `"logit"` | `"prob"` | what `output_node` holds |
//! | `tables` | integer 1..=256 | 8 | `L`, hash tables |
//! | `bits` | integer 1..=20 | 10 | `p`, hyperplanes per table (`2^p` buckets) |
//! | `seed` | u64 | 0 | seed of generated projections |
//! | `projections` | string | none | name of an F32 tensor `[L·p, d]` holding `R` explicitly |
//! | `estimate` | `"pooled"` \| `"topk"` \| `"exact"` | `"pooled"` | estimator |
//! | `top_k` | integer ≥ 1 | `L` | `k`; ≤ `L` for topk, ≤ `exact_capacity` for exact |
//! | `tau` | number > 0 | 1.0 | softmax temperature `τ` |
//! | `lambda` | number in [0, 1] | 0.5 | compensation weight `λ` |
//! | `space` | `"prob"` \| `"logit"` | `"prob"` | units of errors and compensation |
//! | `decay` | number in (0, 1] | 1.0 | `ρ`, forgetting per insertion |
//! | `threshold` | number ≥ 0 | 0.0 | `ε`: insert only `|e| ≥ ε` |
//! | `logit_eps` | number in [1e-12, 0.5) | 1e-6 | clamp before `logit` |
//! | `pending` | integer 1..=2^24 | 65536 | capacity of the ring of rows awaiting labels |
//! | `exact_capacity` | integer 1..=2^24 | 4096 | raw samples kept by `estimate = "exact"` |
//!
//! Tensors: none, or exactly the one named by `projections` (F32, `[L·p, d]`, finite; row
//! `l·p + t` is hyperplane `t` of table `l`). Any other tensor is a `TENSOR` error. Without
//! `projections`, `R` is generated from `seed` by [`projections_from_seed`]: SplitMix64,
//! two outputs per value (`u1 = (x₁>>11 + 1)·2⁻⁵³`, `u2 = (x₂>>11)·2⁻⁵³`), Box–Muller
//! `sqrt(−2 ln u1)·cos(2π u2)` in f64 (pure-Rust `libm`), rounded to f32, in the order
//! table, bit, dimension. The same seed gives the same bits on every platform.
//! [`save`] writes such a file; [`inspect_file`] summarizes one without a model.
//!
//! ## Hooks and run state
//! Targets: 0 = a `Tap` at `key_node` (variant `key`; no `BASE` flag), 1 = a `Post` at
//! `output_node` (variant `compensate`). Run state per row is `1 + L + d` floats:
//! `[ê, b_0 … b_{L−1}, h_0 … h_{d−1}]` (bucket indices as f32, exact below 2^24). The tap
//! hashes with one host-kernel GEMM (`x·Rᵀ`, scratch `rows·L·p` plus the kernel's plus
//! `2·max(L, k)`); the post needs no scratch. Neither allocates or waits on the memory.
//!
//! ## Tickets
//! The post writes a nonzero ticket per recorded row: unique per adapter instance,
//! increasing. Tickets live in a ring of `pending` entries; a full ring overwrites the
//! oldest. `feedback` answers `BAD_CALL` for a label that is not finite in `[0, 1]`, and
//! `TICKET` for a ticket that is 0 or never issued ("unknown"), already answered ("already
//! answered"), or overwritten ("expired (ring of N)"; a ticket answered and then
//! overwritten also reads as expired). Pending tickets are not persisted.
//!
//! ## State
//! [`save_state`](graft_plugin_abi::Adapter::save_state) writes a safetensors file with F32
//! tensors `S` `[L, 2^p]`, `C` `[L, 2^p]`, `K` (`Kσ`, `[L, 2^p, d]`, topk only), `exact_h`
//! `[n, d]` and `exact_e` `[n]` (exact only, oldest first, `n ≤ exact_capacity`), plus the
//! metadata key `graft.error-memory.state` = `{format_version: 1, model_fingerprint,
//! config_hash, inserts, weight, checksum}` (hashes as 16 hex digits; `weight` is the decay
//! weight of the next insert). `checksum` is FNV-1a 64 of the tensors' little-endian data
//! in the order listed. `config_hash` is FNV-1a 64 of the canonical JSON of the fields
//! that give the stored numbers their meaning (`key_node`, `output_node`, `d`, `tables`,
//! `bits`, `estimate`, `space`, `logit_eps`, `exact_capacity`) followed by the projection
//! bytes (so `seed` or the projection tensor is covered). Query-time settings (`lambda`,
//! `tau`, `top_k`, `decay`, `threshold`, `pending`, `output_is`) may change across a
//! restart. The file is written to `<path>.tmp.<pid>`, fsynced, renamed and the directory
//! fsynced. The load option `{"state": "<path>"}` restores it; a torn or truncated file,
//! a checksum mismatch, another model's fingerprint or another configuration is a `STATE`
//! error saying which. Without the option the memory starts empty.
//!
//! ## Concurrency
//! Taps and posts run on many threads while feedback runs on others. The memory's cells
//! are atomics read lock-free under a seqlock with bounded retries (module `sketch`: a
//! query overlapping an insert may see one bucket's `S` updated before its `C`, skewing
//! that one estimate by one sample's share). Inserts and saves are serialized by a writer
//! mutex off the hot path. The pending ring has a mutex per slot (module `pending`).
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
mod load;
mod pending;
mod projections;
mod sketch;
mod state;

pub use adapter::{COMPENSATE_TARGET, ErrorMemory, KEY_TARGET, Stats};
pub use config::{CONFIG_KEYS, Config, Estimate, FORMAT_VERSION, MAX_BITS, MAX_RING, MAX_TABLES, Units};
pub use file::{CONFIG_METADATA_KEY, MAX_FILE_BYTES, inspect_file, save};
pub use load::{DEFAULT_MAX_BYTES, MAX_PENDING_BYTES, MAX_SKETCH_BYTES, load_bytes, load_file};
pub use projections::{SplitMix64, projections_from_seed};
pub use sketch::{KEY_LIMIT, RENORM_ABOVE};
pub use state::{Fnv1a, STATE_FORMAT_VERSION, STATE_METADATA_KEY};

/// The kind's name.
pub const KIND: &str = "error-memory";

graft_plugin_abi::adapter_kind_module!(kind = KIND, load = load_file);
