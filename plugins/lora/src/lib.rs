//! # graft-plugin-lora
//!
//! The `lora` adapter kind: PEFT LoRA, rsLoRA and DoRA adapters on linear layers, plus
//! explicit-scale (ALLoRA-style) adapters, loaded from a PEFT directory
//! (`adapter_config.json` + `adapter_model.safetensors`) and applied through the stable
//! plugin interface of `graft-plugin-abi`.
//!
//! ## Semantics
//! For a module with base `W [out, in]`, bias `b`, factors `A [r, in]`, `B [out, r]` and
//! effective scale `c = s · multiplier` (the multiplier is the per-request scale, PEFT's
//! `set_scale`):
//! - LoRA / rsLoRA: `y += c·(x·Aᵀ)·Bᵀ` (plus `c·b_B` with `lora_bias`), where
//!   `s = alpha/r`, or `alpha/sqrt(r)` with `use_rslora`. `r` and `alpha` are per module
//!   through `rank_pattern` / `alpha_pattern` (regex keys; a path `p` matches key `K` if it
//!   matches `(.*\.)?(K)$`; the first matching key in file order wins, as in PEFT).
//! - An explicit scale replaces `s` for every module: the load option `{"scaling": x}`,
//!   else the graft config extension `"scaling": x` (ALLoRA adapters have `s = 1` and PEFT
//!   has no flag for them).
//! - DoRA (PEFT semantics, including stacking after other adapters): with `y` the layer
//!   output so far (base bias included), `u = c·B(Ax)` and `f = m / ‖W + c·BA‖_row`,
//!   `y ← f ⊙ (y − b) + b + f ⊙ u`. The base bias is not rescaled.
//!
//! ## Decisions
//! - **Unmerged forward.** The adapter runs next to the base linear (two thin GEMMs through
//!   the host's kernels, in the adapter's stored f32/f16/bf16), so one base model serves
//!   many adapters and quantized bases are never re-quantized. [`merge`](graft_plugin_abi::Adapter::merge)
//!   exists for explicit merges (`W += s·BA`; DoRA `W_o ← f_o·(W_o + s·(BA)_o)`).
//! - **Files read once, or mapped.** A safetensors file of at most
//!   [`COPY_LIMIT`] (16 MiB) is read into memory at load and verified,
//!   so later changes to the file cannot reach the adapter; a larger one is memory-mapped
//!   under the SIGBUS guard and checked after every hook (a truncated or rewritten file is
//!   an `IO` error for that call, never a fault or a mix). Either way tensors are used in
//!   place and only a tensor misaligned in the file is copied (`owned_bytes` counts
//!   copies, `mapped_bytes` the mapped case). Headers are parsed by the `safetensors` crate, which checks lengths and offsets
//!   with overflow-checked arithmetic, so hostile headers fail with `TENSOR` errors.
//! - **DoRA norms for any multiplier.** At load the kind keeps, per output row,
//!   `‖W_o‖²`, `⟨W_o, (BA)_o⟩` and `‖(BA)_o‖²` (f64, from the host's dequantized base
//!   rows), so `‖W_o + c·(BA)_o‖` is exact for every per-request multiplier in O(out) work
//!   per call, instead of PEFT's O(out·in) recomputation. The factor at multiplier 1 is
//!   cached.
//! - **`fan_in_fan_out`** is accepted and changes nothing: it describes the *base* weight's
//!   storage in the source framework (GPT-2 `Conv1D`), while `A` and `B` keep the layout
//!   above, the forward uses only `x`, `A`, `B`, and the host hands `merge` its weight in
//!   graft's own `[out, in]` layout.
//! - **Module selection.** Every `(lora_A, lora_B)` pair in the file attaches to the module
//!   its key names (resolved by the host), which is equivalent to PEFT's
//!   `target_modules` / `exclude_modules` matching at inference; those fields are ignored.
//! - **Rejected** (an error naming the field, never a silently different model): other
//!   `peft_type`s; `bias` other than `"none"`; `modules_to_save`; embedding LoRA
//!   (`lora_embedding_A/B`, no hook point); non-linear target nodes; the legacy pickle
//!   `adapter_model.bin`; dtypes other than f32/f16/bf16; and the variants `use_bdlora`,
//!   `alora_invocation_tokens`, `velora_config`, `arrow_config`, `use_qalora`,
//!   `layer_replication`, `trainable_token_indices`, `target_parameters`,
//!   `megatron_config`, `kasa_config`, `monteclora_config` when set. Training-only fields
//!   (`lora_dropout`, `init_lora_weights`, `loftq_config`, …) are ignored.
//! - **Pattern regexes** use Rust `regex` syntax (no look-around or back-references), with
//!   a compiled-size cap; a key that does not compile is a `CONFIG` error.
//! - `lora_alpha` may be zero or negative (PEFT accepts both); it must be finite.
//!
//! ## Linking
//! [`module`] returns the root module for static linking. With the `plugin` feature the
//! crate also exports the abi_stable root-module symbol, so the `cdylib` loads as a
//! plugin; it is off by default because several statically linked kinds would collide.

// `Adapter` is a `#[sabi_trait]`; its impl may expand to items the lint flags.
#![allow(non_local_definitions)]

mod adapter;
mod config;
mod dora;
mod inspect;
mod load;
mod tensors;

pub use adapter::LoraAdapter;
pub use config::{MAX_CONFIG_BYTES, REJECTED_KEYS};
pub use inspect::inspect_dir;
pub use load::{CONFIG_FILE, LEGACY_FILE, TENSOR_FILE, load_bytes, load_dir};
pub use tensors::COPY_LIMIT;

/// The kind's name.
pub const KIND: &str = "lora";

graft_plugin_abi::adapter_kind_module!(kind = KIND, load = load_dir);
