//! The named-pipe tests' harness: `common::testing` (every child under a deadline, output
//! collected, waiting for narration) plus the FIFO check.

#![allow(dead_code)]

use std::path::Path;

pub use common::testing::{Done, Proc, TestDir};

/// Whether `p` exists as a FIFO.
pub fn is_fifo(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_fifo())
}

/// Kernel facts the claim tests read from `/proc` (shared with the FIFO tests).
pub use common::testing::kernel;
