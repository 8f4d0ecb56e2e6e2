//! The pipe tests' harness: `common::testing` (every child under a deadline, output
//! collected, waiting for narration) plus the shell pipeline `writer | reader`.

#![allow(dead_code)]

use std::process::{Command, Stdio};

pub use common::testing::{Done, Proc, TestDir};

pub const WRITER: &str = env!("CARGO_BIN_EXE_pipe-writer");
pub const READER: &str = env!("CARGO_BIN_EXE_pipe-reader");

/// Starts `writer_args | reader_args` the way a shell does: two children of this test
/// process, the writer's stdout connected to the reader's stdin. Returns (writer, reader).
pub fn shell_pair(writer_args: &[&str], reader_args: &[&str]) -> (Proc, Proc) {
    let mut w = Command::new(WRITER);
    w.args(writer_args);
    let mut r = Command::new(READER);
    r.args(reader_args);
    pipeline(w, r)
}

/// `writer | reader` for two commands of the test's making (a reader run through `sh`, a
/// writer run by another name). The writer's stdin and stderr are piped to the test, its
/// stdout goes to the reader; the reader's stdout and stderr are collected.
pub fn pipeline(mut writer: Command, mut reader: Command) -> (Proc, Proc) {
    writer
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut wchild = writer.spawn().expect("spawn pipe-writer");
    let pipe_out = wchild.stdout.take().expect("writer stdout");
    reader.stdin(Stdio::from(pipe_out));
    let reader = Proc::spawn("pipe-reader", &mut reader);
    // The writer's stdout went to the reader; the harness collects its stderr.
    let writer = Proc::adopt("pipe-writer", wchild);
    (writer, reader)
}

/// Kernel facts the claim tests read from `/proc` (shared with the FIFO tests).
pub use common::testing::kernel;
