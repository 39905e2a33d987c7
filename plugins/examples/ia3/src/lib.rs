//! # graft-plugin-ia3
//!
//! An example third-party adapter kind, `ia3`: PEFT (IA)³ adapters ("Infused Adapter by
//! Inhibiting and Amplifying Inner Activations", Liu et al. 2022) on linear layers. It is
//! built only on the public plugin interface (`graft-plugin-abi`), links statically like
//! a built-in kind, and with the `plugin` feature its `cdylib` loads as a plugin file.
//!
//! ## Files
//! The source is a PEFT directory as `save_pretrained` writes it:
//! - `adapter_config.json` (PEFT 0.21.2 `IA3Config`). Read: `peft_type` (must be `"IA3"`),
//!   `feedforward_modules` (a list of names, a regex string, or null), `fan_in_fan_out`,
//!   `modules_to_save` (must be null or empty), `peft_version` (a note). Accepted and
//!   ignored: `target_modules`, `exclude_modules` (the tensors name the modules),
//!   `init_ia3_weights`, `inference_mode`, `task_type`, `base_model_name_or_path`,
//!   `revision`, `auto_mapping`. Any other key is a `CONFIG` error naming it: a field from
//!   a newer PEFT could change the semantics, and an adapter must never load as a
//!   silently different model.
//! - `adapter_model.safetensors`: one tensor per adapted module,
//!   `base_model.model.<module>.ia3_l`, F32, F16 or BF16, shape `[out, 1]` for an
//!   output-scaling module and `[1, in]` for a feedforward module (PEFT's shapes). Every
//!   value must be finite. The legacy pickle `adapter_model.bin` is refused.
//!
//! `<module>` is resolved through the host ([`ModelView::resolve`](graft_plugin_abi::ModelView::resolve)),
//! which owns the mapping from PEFT module paths to graph nodes; it must be a linear node.
//! Load options: `""` or `{}` (the kind has none; any key is a `CONFIG` error).
//!
//! ## Semantics (PEFT 0.21.2, `peft/tuners/ia3/layer.py`, `Linear.forward`)
//! - **Output scaling** (module not in `feedforward_modules`):
//!   `result = self.base_layer(x); result = (result * ia3_scaling)`, i.e.
//!   `y = (x·Wᵀ + b) ⊙ l`. The bias is scaled too (PEFT's `merge` scales `bias` by the
//!   vector for non-feedforward layers, consistently).
//! - **Feedforward** (input scaling): `interm = (x * ia3_scaling); result =
//!   self.base_layer(interm)`, i.e. `y = (x ⊙ l)·Wᵀ + b`. The bias is not scaled.
//! - Which modules are feedforward: PEFT's rule (`_check_target_module_feedforward`) is
//!   `any(key.endswith(m) for m in feedforward_modules)` for a list and
//!   `re.fullmatch(feedforward_modules, key)` for a string. A list is applied here and
//!   cross-checked against the vector's shape (a mismatch is a `CONFIG` error on
//!   `feedforward_modules`). A regex string (or null) is not evaluated; the shape decides,
//!   which is exactly PEFT's choice because PEFT creates the vector as `[1, in]` iff the
//!   module is feedforward. The one ambiguous case, a `[1, 1]` vector on a 1→1 layer, is
//!   `UNSUPPORTED` unless a list decides it.
//! - **Per-request multiplier `m`** (PEFT has none for IA3): the vector is interpolated
//!   towards the identity, `l' = 1 + m·(l − 1)`. `m = 1` is the adapter as trained, `m = 0`
//!   the base model, `m = 0.5` halfway in vector space, any finite `m` is accepted.
//!
//! ## Implementation
//! Both cases are `LinearDelta` hooks (the hook sees `x`, and `y` = base output plus
//! earlier adapters of the row's set):
//! - Output scaling: `y ← y ⊙ l'` in place. Scratch: `out` floats for `l'` (when `m ≠ 1`);
//!   nothing is precomputed. Stacked after other adapters, their deltas are scaled too,
//!   which is PEFT's order (IA3 multiplies whatever the wrapped layer returns).
//! - Feedforward: `W·(x ⊙ l') = W·x + m·W·((l − 1) ⊙ x)`, so the hook adds
//!   `m · x·W_Δᵀ` with `W_Δ = W·diag(l − 1)` through the host's `linear` kernel. The hook
//!   never sees `W`, so `W_Δ` is built once at load from the host's dequantized base rows
//!   ([`ModelView::base_weight_row`](graft_plugin_abi::ModelView::base_weight_row)).
//!   **Memory cost:** `4·out·in` bytes per feedforward module (an f32 copy of the layer's
//!   weight size), reported in `owned_bytes`. The result equals PEFT's up to f32 rounding
//!   (the two orders of summation differ). Stacked with other adapters, feedforward
//!   vectors add their deltas (`W((l₁ + l₂ − 1) ⊙ x)`) where PEFT multiplies
//!   (`W(l₁ ⊙ l₂ ⊙ x)`); a single adapter is exact.
//! - [`merge`](graft_plugin_abi::Adapter::merge) (at `m = 1`): output scaling
//!   `W_o ← l_o·W_o, b_o ← l_o·b_o`; feedforward `W_{o,i} ← W_{o,i}·l_i`, `b` unchanged
//!   (PEFT's `Linear.merge`).
//! - Hooks never allocate and every hook body runs inside a `catch_unwind` guard, so a bug
//!   becomes an `INTERNAL` error instead of unwinding across the ABI.
//!
//! ## Linking
//! [`module`] returns the root module for static linking. With the `plugin` feature the
//! crate exports `graft_adapter_kind_root`, so `libgraft_plugin_ia3.so` (`.dylib`, `.dll`)
//! loads with `Registry::load_plugin` / `graft plugin load`.

// `Adapter` is a `#[sabi_trait]`; its impl may expand to items the lint flags.
#![allow(non_local_definitions)]

mod adapter;
mod config;
mod inspect;
mod load;

pub use adapter::{Ia3Adapter, Scaling};
pub use config::{KNOWN_KEYS, MAX_CONFIG_BYTES};
pub use inspect::inspect_dir;
pub use load::{CONFIG_FILE, LEGACY_FILE, MAX_TENSOR_BYTES, TENSOR_FILE, load_bytes, load_dir};

/// The kind's name.
pub const KIND: &str = "ia3";

graft_plugin_abi::adapter_kind_module!(kind = KIND, load = load_dir);
