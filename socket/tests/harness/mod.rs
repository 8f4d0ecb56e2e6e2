//! The socket tests' harness: `common::testing` (every child under a deadline, output
//! collected, waiting for narration, a private runtime directory per test).

#![allow(dead_code)]

pub use common::testing::{Done, Proc, TestDir};
