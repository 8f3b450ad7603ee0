//! The logging shim: one set of macros that route to `defmt`, to `log`, or to nothing.
//!
//! With neither feature the arguments are still type-checked (inside a never-called closure),
//! so a build without logging cannot hide a broken log line.
#![allow(unused_macros)]

macro_rules! xlog {
    ($level:ident, $($arg:tt)+) => {{
        cfg_if::cfg_if! {
            if #[cfg(feature = "defmt")] {
                defmt::$level!($($arg)+);
            } else if #[cfg(feature = "log")] {
                log::$level!($($arg)+);
            } else {
                let _ = || { let _ = core::format_args!($($arg)+); };
            }
        }
    }};
}

macro_rules! trace { ($($arg:tt)+) => { xlog!(trace, $($arg)+) }; }
macro_rules! debug { ($($arg:tt)+) => { xlog!(debug, $($arg)+) }; }
macro_rules! info { ($($arg:tt)+) => { xlog!(info, $($arg)+) }; }
macro_rules! warn { ($($arg:tt)+) => { xlog!(warn, $($arg)+) }; }
macro_rules! error { ($($arg:tt)+) => { xlog!(error, $($arg)+) }; }
