//! What the host lends adapter kinds: kernel tables behind the plugin ABI, and the view of
//! the model an adapter is validated against while it loads (module-name resolution,
//! dequantized base weights, biases).
//!
//! Kinds never see graft types: every call goes through `graft-plugin-abi`, so a kind
//! linked statically and one loaded from a shared library are served identically.

mod linear_t;

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{ROption, RResult, RSlice, RSliceMut, RStr, RString};
use graft_plugin_abi::{
    ElemFormat, ErrorCode, HostKernelsExt, HostKernelsRef, KernelStatus, MatView, MatViewMut, ModelView, NodeInfo,
    NodeOp, PluginError, WeightView, linear_shapes_agree,
};

use crate::error::{Error, Result};
use crate::graph::{Graph, InputKind, Op};
use crate::kernels::{self, Kernels, Level, WeightData, WeightMatrix};
use crate::model::Model;
use crate::view::{MatMut, MatRef};

/// Explicit module-path → node-name mapping, for models whose node names differ from the
/// module names adapter files use. Consulted before the built-in rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModuleMap {
    entries: HashMap<String, String>,
}

impl ModuleMap {
    /// An empty map (only the built-in rules apply).
    pub fn new() -> ModuleMap {
        ModuleMap::default()
    }

    /// Maps `module_path` to the node `node`.
    pub fn insert(&mut self, module_path: impl Into<String>, node: impl Into<String>) -> &mut ModuleMap {
        self.entries.insert(module_path.into(), node.into());
        self
    }

    /// Reads a JSON object `{"module.path": "node_name", ...}`.
    pub fn from_json(text: &str) -> Result<ModuleMap> {
        let entries: HashMap<String, String> = serde_json::from_str(text).map_err(|e| Error::InvalidOption {
            detail: format!("module map: expected a JSON object of strings: {e}"),
        })?;
        Ok(ModuleMap { entries })
    }

    /// Reads [`ModuleMap::from_json`] from a file.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<ModuleMap> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        ModuleMap::from_json(&text).map_err(|e| e.in_file(path))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Resolves a module path to a node index. Rules, in order: the explicit map; a node of
/// that name; a node whose recorded source is that path; the path with `.` replaced by
/// `_` (how older imports flattened `top.fc1` into `top_fc1`); a node whose name ends in
/// `.<path>` (the model was exported inside a wrapper module, so its parameters carry a
/// prefix such as `model.`, while PEFT names modules from the library model itself).
/// Every rule must be unambiguous.
pub fn resolve_module(g: &Graph, map: &ModuleMap, path: &str) -> core::result::Result<usize, String> {
    if let Some(node) = map.entries.get(path) {
        return g.node(node).ok_or_else(|| format!("the module map sends `{path}` to `{node}`, which is not a node"));
    }
    let flat = path.replace('.', "_");
    let rules: [&dyn Fn(&crate::graph::Node) -> bool; 3] =
        [&|n| n.name == path, &|n| n.source.as_deref() == Some(path), &|n| n.name == flat];
    for rule in rules {
        let mut hits = g.nodes.iter().enumerate().filter(|(_, n)| rule(n)).map(|(i, _)| i);
        if let Some(first) = hits.next() {
            return match hits.next() {
                None => Ok(first),
                Some(second) => Err(format!(
                    "`{path}` matches both `{}` and `{}`; add a module map entry",
                    g.nodes[first].name, g.nodes[second].name
                )),
            };
        }
    }
    // A wrapper's prefix: the shortest `<prefix>.<path>` wins (`model.mlp.0` over
    // `model.senet.mlp.0` for `mlp.0`); equally short matches are ambiguous.
    let suffix = format!(".{path}");
    let depth = |n: &crate::graph::Node| n.name[..n.name.len() - suffix.len()].matches('.').count();
    let mut best: Option<(usize, usize)> = None;
    let mut tied = None;
    for (i, n) in g.nodes.iter().enumerate().filter(|(_, n)| n.name.ends_with(&suffix)) {
        match best {
            Some((_, d)) if depth(n) > d => {}
            Some((j, d)) if depth(n) == d => tied = Some((j, i)),
            _ => {
                best = Some((i, depth(n)));
                tied = None;
            }
        }
    }
    if let Some((a, b)) = tied {
        return Err(format!(
            "`{path}` matches both `{}` and `{}`; add a module map entry",
            g.nodes[a].name, g.nodes[b].name
        ));
    }
    if let Some((i, _)) = best {
        return Ok(i);
    }
    let linears: Vec<&str> =
        g.nodes.iter().filter(|n| matches!(n.op, Op::Linear { .. })).map(|n| n.name.as_str()).take(12).collect();
    Err(format!("`{path}` matches no node (linear nodes: {})", linears.join(", ")))
}

/// The [`ModelView`] the host lends a kind during `load`.
#[derive(Debug)]
pub struct HostModelView<'a> {
    model: &'a Model,
    map: &'a ModuleMap,
}

impl<'a> HostModelView<'a> {
    /// A view of `model` resolving names through `map`.
    pub fn new(model: &'a Model, map: &'a ModuleMap) -> HostModelView<'a> {
        HostModelView { model, map }
    }

    fn linear(&self, node: u32) -> core::result::Result<(usize, Option<usize>), PluginError> {
        match self.model.graph().nodes.get(node as usize).map(|n| &n.op) {
            Some(Op::Linear { weight, bias }) => Ok((*weight, *bias)),
            _ => Err(PluginError::new(ErrorCode::BAD_CALL, "", format!("node {node} is not a linear"))),
        }
    }
}

impl ModelView for HostModelView<'_> {
    fn resolve(&self, module_path: RStr<'_>) -> RResult<NodeInfo, PluginError> {
        let g = self.model.graph();
        let index = match resolve_module(g, self.map, module_path.as_str()) {
            Ok(i) => i,
            Err(detail) => {
                // A dense graph input (a tap's query may be the raw features).
                let input = g.inputs.iter().position(|i| i.name == module_path.as_str());
                if let Some(k) = input
                    && let InputKind::Dense { width } = g.inputs[k].kind
                {
                    return RResult::ROk(NodeInfo {
                        node: (g.nodes.len() + k) as u32,
                        name: RString::from(module_path.as_str()),
                        op: NodeOp::Input,
                        in_features: 0,
                        out_features: width,
                        has_bias: false,
                        base_format: RString::from("f32"),
                    });
                }
                return RResult::RErr(PluginError::new(ErrorCode::UNKNOWN_MODULE, module_path.as_str(), detail));
            }
        };
        let node = &g.nodes[index];
        let (op, in_features, out_features, has_bias, format) = match node.op {
            Op::Linear { weight, bias } => {
                let w = &g.weights[weight];
                (NodeOp::Linear, w.cols, w.rows, bias.is_some(), w.format.as_str())
            }
            Op::EmbeddingBag { table, .. } => {
                let w = &g.weights[table];
                (NodeOp::EmbeddingBag, w.rows, w.cols, false, w.format.as_str())
            }
            _ => (NodeOp::Other, 0, node.width, false, ""),
        };
        RResult::ROk(NodeInfo {
            node: index as u32,
            name: RString::from(node.name.as_str()),
            op,
            in_features,
            out_features,
            has_bias,
            base_format: RString::from(format),
        })
    }

    fn base_weight_row(&self, node: u32, row: usize, mut out: RSliceMut<'_, f32>) -> RResult<(), PluginError> {
        let result = self.linear(node).and_then(|(weight, _)| {
            let w = self.model.weight(weight).map_err(|e| PluginError::new(ErrorCode::TENSOR, "", e.to_string()))?;
            if row >= w.rows || out.len() != w.cols {
                return Err(PluginError::new(
                    ErrorCode::BAD_CALL,
                    "",
                    format!("row {row} into {} values of a {}x{} weight", out.len(), w.rows, w.cols),
                ));
            }
            w.dequant_row(row, out.as_mut_slice());
            Ok(())
        });
        result.into()
    }

    fn base_bias(&self, node: u32) -> ROption<RSlice<'_, f32>> {
        match self.linear(node) {
            Ok((_, Some(bias))) => self.model.vector(bias).ok().map(RSlice::from_slice).into(),
            _ => ROption::RNone,
        }
    }

    fn fingerprint(&self) -> u64 {
        self.model.fingerprint()
    }
}

/// The plugin-ABI kernel table for a host kernel level.
pub fn host_kernels(level: Level) -> HostKernelsRef {
    static SCALAR: OnceLock<HostKernelsRef> = OnceLock::new();
    static AVX2: OnceLock<HostKernelsRef> = OnceLock::new();
    static NEON: OnceLock<HostKernelsRef> = OnceLock::new();
    static DOTPROD: OnceLock<HostKernelsRef> = OnceLock::new();
    static I8MM: OnceLock<HostKernelsRef> = OnceLock::new();
    static AVX512: OnceLock<HostKernelsRef> = OnceLock::new();
    static AVX512_VNNI: OnceLock<HostKernelsRef> = OnceLock::new();
    match level {
        Level::Scalar => *SCALAR.get_or_init(table::<0>),
        Level::Avx2 => *AVX2.get_or_init(table::<1>),
        Level::Neon => *NEON.get_or_init(table::<2>),
        Level::Dotprod => *DOTPROD.get_or_init(table::<3>),
        Level::I8mm => *I8MM.get_or_init(table::<4>),
        Level::Avx512 => *AVX512.get_or_init(table::<5>),
        Level::Avx512Vnni => *AVX512_VNNI.get_or_init(table::<6>),
    }
}

fn table<const L: u8>() -> HostKernelsRef {
    HostKernelsExt {
        level: level_name::<L>,
        scratch_floats: scratch_floats::<L>,
        linear: linear::<L>,
        linear_t: linear_transposed::<L>,
    }
    .leak_into_prefix()
    .as_host_kernels()
}

fn kernels_of<const L: u8>() -> &'static Kernels {
    let level = match L {
        1 => Level::Avx2,
        2 => Level::Neon,
        3 => Level::Dotprod,
        4 => Level::I8mm,
        5 => Level::Avx512,
        6 => Level::Avx512Vnni,
        _ => Level::Scalar,
    };
    // A table for a level is only built for sessions that selected it, so it exists.
    kernels::select(level).unwrap_or(&kernels::SCALAR)
}

extern "C" fn level_name<const L: u8>() -> RStr<'static> {
    RStr::from_str(kernels_of::<L>().level.as_str())
}

fn matrix<'a>(w: &WeightView<'a>) -> WeightMatrix<'a> {
    let data = match w.format() {
        ElemFormat::F32 => WeightData::F32(w.as_f32().unwrap_or(&[])),
        ElemFormat::F16 => WeightData::F16(w.as_u16().unwrap_or(&[])),
        ElemFormat::Bf16 => WeightData::Bf16(w.as_u16().unwrap_or(&[])),
    };
    WeightMatrix { data, rows: w.rows(), cols: w.cols() }
}

extern "C" fn scratch_floats<const L: u8>(w: WeightView<'_>, rows: usize) -> usize {
    kernels_of::<L>().linear.scratch_len(&matrix(&w), rows)
}

extern "C" fn linear<const L: u8>(
    x: MatView<'_>,
    w: WeightView<'_>,
    alpha: f32,
    accumulate: bool,
    mut y: MatViewMut<'_>,
    mut scratch: RSliceMut<'_, f32>,
) -> KernelStatus {
    let kernel = kernels_of::<L>().linear;
    let wm = matrix(&w);
    if !linear_shapes_agree(&x, wm.rows, wm.cols, &y) {
        return KernelStatus::SHAPE_MISMATCH;
    }
    if scratch.len() < kernel.scratch_len(&wm, x.rows()) {
        return KernelStatus::SCRATCH_TOO_SMALL;
    }
    // SAFETY: the views' constructors guarantee their rows are in bounds and, for `y`,
    // exclusively borrowed for the call.
    let (xr, mut ym) = unsafe {
        (
            MatRef::from_raw_parts(x.as_ptr(), x.rows(), x.cols(), x.stride()),
            MatMut::from_raw_parts(y.as_mut_ptr(), y.rows(), y.cols(), y.stride()),
        )
    };
    let run = AssertUnwindSafe(|| {
        if !accumulate {
            ym.for_each_row(|_, row| row.fill(0.0));
        }
        kernel.linear_accumulate(xr, &wm, alpha, ym.reborrow(), scratch.as_mut_slice());
    });
    // Shapes were checked, so the kernels cannot panic; if one did, unwinding into the
    // plugin's frame would be undefined behaviour, so report it instead.
    match catch_unwind(run) {
        Ok(()) => KernelStatus::OK,
        Err(_) => KernelStatus(u32::MAX),
    }
}

extern "C" fn linear_transposed<const L: u8>(
    x: MatView<'_>,
    wt: MatView<'_>,
    alpha: f32,
    accumulate: bool,
    mut y: MatViewMut<'_>,
) -> KernelStatus {
    if !linear_shapes_agree(&x, wt.cols(), wt.rows(), &y) {
        return KernelStatus::SHAPE_MISMATCH;
    }
    let level = kernels_of::<L>().level;
    // SAFETY: as in `linear`: the views' constructors guarantee their rows are in bounds
    // and, for `y`, exclusively borrowed for the call.
    let (xr, wr, ym) = unsafe {
        (
            MatRef::from_raw_parts(x.as_ptr(), x.rows(), x.cols(), x.stride()),
            MatRef::from_raw_parts(wt.as_ptr(), wt.rows(), wt.cols(), wt.stride()),
            MatMut::from_raw_parts(y.as_mut_ptr(), y.rows(), y.cols(), y.stride()),
        )
    };
    // Shapes were checked; a panic must still not unwind into the plugin's frame.
    match catch_unwind(AssertUnwindSafe(|| linear_t::linear_t(level, xr, wr, alpha, accumulate, ym))) {
        Ok(()) => KernelStatus::OK,
        Err(_) => KernelStatus(u32::MAX),
    }
}
