//! The adapter: one target whose hooks misbehave as the mode says.

use abi_stable::std_types::{RResult, RSliceMut, RString, RVec};
use graft_plugin_abi::{
    Adapter, AdapterInfo, ErrorCode, HookKind, HostKernelsRef, LinearDelta, MatViewMut, PluginError, Post, Target,
    TargetInfo,
};

use crate::spec::Mode;

/// A loaded faulty adapter.
#[derive(Debug)]
pub struct FaultyAdapter {
    pub(crate) source: String,
    pub(crate) mode: Mode,
    pub(crate) module: String,
    pub(crate) node: u32,
    pub(crate) node_name: String,
    pub(crate) hook: HookKind,
}

/// Runs `f`, turning a panic into an `INTERNAL` error so it never crosses the boundary.
/// The message names the mode, since a panic here is the point, not a bug.
fn guard<T>(what: &str, f: impl FnOnce() -> Result<T, PluginError>) -> RResult<T, PluginError> {
    graft_plugin_abi::guard_with(
        || {
            PluginError::new(
                ErrorCode::INTERNAL,
                what,
                "the faulty kind panicked in a hook (mode panic); the call was abandoned",
            )
        },
        f,
    )
}

impl FaultyAdapter {
    /// The mode the source file chose.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn misbehave(&self, target: u32, hook: HookKind, y: &mut MatViewMut<'_>) -> Result<(), PluginError> {
        if target != 0 || hook != self.hook {
            return Err(PluginError::new(
                ErrorCode::BAD_CALL,
                "target",
                format!("{hook:?} call for target {target}; the adapter has one {:?} target", self.hook),
            ));
        }
        match self.mode {
            Mode::Ok | Mode::PanicOnLoad => Ok(()),
            Mode::Error => Err(PluginError::new(ErrorCode::BAD_CALL, "faulty", "mode error: this hook always fails")),
            Mode::Panic => panic!("faulty kind: mode panic"),
            Mode::Nan => {
                for row in 0..y.rows() {
                    y.row_mut(row).fill(f32::NAN);
                }
                Ok(())
            }
        }
    }
}

impl Adapter for FaultyAdapter {
    fn targets(&self) -> RVec<Target> {
        RVec::from(vec![Target::new(self.node, self.hook)])
    }

    fn info(&self) -> AdapterInfo {
        AdapterInfo {
            kind: RString::from(crate::KIND),
            source: RString::from(self.source.as_str()),
            targets: RVec::from(vec![TargetInfo {
                module: RString::from(self.module.as_str()),
                node: RString::from(self.node_name.as_str()),
                rank: 0,
                scale: 1.0,
                variant: RString::from(self.mode.name()),
                bytes: 0,
            }]),
            mapped_bytes: 0,
            owned_bytes: 0,
            notes: RVec::new(),
        }
    }

    fn scratch_floats(&self, _target: u32, _rows: usize, _kernels: HostKernelsRef) -> usize {
        0
    }

    fn linear_delta(&self, mut call: LinearDelta<'_>) -> RResult<(), PluginError> {
        guard("linear_delta", || self.misbehave(call.target, HookKind::LinearDelta, &mut call.y))
    }

    fn merge(&self, target: u32, _weight: MatViewMut<'_>, _bias: RSliceMut<'_, f32>) -> RResult<(), PluginError> {
        RResult::RErr(PluginError::new(
            ErrorCode::UNSUPPORTED,
            "merge",
            format!("target {target}: the faulty kind cannot be merged"),
        ))
    }

    fn post(&self, mut call: Post<'_>) -> RResult<(), PluginError> {
        guard("post", || self.misbehave(call.target, HookKind::Post, &mut call.y))
    }
}
