//! Logging that works on both kinds of target: the `log` facade on std builds, `defmt`
//! (feature `defmt`) on firmware, where `log`'s `core::fmt` machinery costs kilobytes of
//! flash and a logger that formats on the device. One macro per level, with a format
//! string both accept: positional `{}` arguments whose types implement both `Display` and
//! `defmt::Format` (no inline `{name}` captures, which defmt lacks).

/// Debug-level message.
macro_rules! log_debug {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        defmt::debug!($($arg)*);
        #[cfg(not(feature = "defmt"))]
        log::debug!($($arg)*);
    }};
}

/// Warning.
#[allow(unused_macros)]
macro_rules! log_warn {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        defmt::warn!($($arg)*);
        #[cfg(not(feature = "defmt"))]
        log::warn!($($arg)*);
    }};
}

/// Error.
#[allow(unused_macros)]
macro_rules! log_error {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        defmt::error!($($arg)*);
        #[cfg(not(feature = "defmt"))]
        log::error!($($arg)*);
    }};
}
