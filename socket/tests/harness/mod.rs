//! The socket tests' harness: `common::testing` (every child under a deadline, output
//! collected, waiting for narration, a private runtime directory per test), and `kernel`:
//! what /proc and `ioctl(FIONREAD)` say about sockets.

#![allow(dead_code)]

pub mod kernel;

#[allow(unused_imports)]
pub use common::testing::{skip, Done, Proc, TestDir};
