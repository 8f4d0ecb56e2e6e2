//! The socket tests' harness: `common::testing` (every child under a deadline, output
//! collected, waiting for narration, a private runtime directory per test), `kernel`:
//! what /proc and `ioctl(FIONREAD)` say about sockets, and `pair`: starting the two
//! programs.

#![allow(dead_code)]

pub mod kernel;
pub mod pair;

#[allow(unused_imports)]
pub use common::testing::{skip, Done, Proc, TestDir};
