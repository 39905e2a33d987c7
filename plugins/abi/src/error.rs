//! Errors that cross the plugin boundary: a stable code, the field or tensor at fault,
//! and a message. The host turns them into its own typed error with the adapter id.

use core::fmt;

use abi_stable::StableAbi;
use abi_stable::std_types::RString;

/// A stable error category. Values are never reused; new ones are only appended.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// A file is missing or unreadable.
    pub const IO: ErrorCode = ErrorCode(1);
    /// The configuration is malformed or contradicts itself.
    pub const CONFIG: ErrorCode = ErrorCode(2);
    /// A tensor file is malformed, or a tensor has the wrong dtype or size.
    pub const TENSOR: ErrorCode = ErrorCode(3);
    /// A tensor's shape does not fit the model or the configuration.
    pub const SHAPE: ErrorCode = ErrorCode(4);
    /// A parameter is NaN or infinite.
    pub const NOT_FINITE: ErrorCode = ErrorCode(5);
    /// A module path matches no node of the model.
    pub const UNKNOWN_MODULE: ErrorCode = ErrorCode(6);
    /// A variant or feature this kind does not implement.
    pub const UNSUPPORTED: ErrorCode = ErrorCode(7);
    /// A host kernel refused its arguments (a bug in the kind or the host).
    pub const KERNEL: ErrorCode = ErrorCode(8);
    /// The kind panicked or broke an invariant.
    pub const INTERNAL: ErrorCode = ErrorCode(9);
    /// A call's arguments do not fit the adapter (wrong target, short scratch).
    pub const BAD_CALL: ErrorCode = ErrorCode(10);
    /// A feedback ticket that was never issued, already answered, or evicted.
    pub const TICKET: ErrorCode = ErrorCode(11);
    /// Saved state that is torn, or belongs to another model or configuration.
    pub const STATE: ErrorCode = ErrorCode(12);

    /// A short name for the code.
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "io",
            2 => "config",
            3 => "tensor",
            4 => "shape",
            5 => "not finite",
            6 => "unknown module",
            7 => "unsupported",
            8 => "kernel",
            9 => "internal",
            10 => "bad call",
            11 => "ticket",
            12 => "state",
            _ => "unknown",
        }
    }
}

/// An error from a kind: what went wrong, where.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct PluginError {
    /// The category.
    pub code: ErrorCode,
    /// The config field, tensor or file at fault (may be empty).
    pub field: RString,
    /// What was expected and what was found.
    pub message: RString,
}

impl PluginError {
    /// An error about `field`.
    pub fn new(code: ErrorCode, field: impl Into<String>, message: impl Into<String>) -> PluginError {
        PluginError { code, field: RString::from(field.into()), message: RString::from(message.into()) }
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.code.name(), self.message)
        } else {
            write!(f, "{} `{}`: {}", self.code.name(), self.field, self.message)
        }
    }
}

impl std::error::Error for PluginError {}
