//! # common: what every ipc-study pair shares
//!
//! Six mechanisms, one set of rules. A writer and a reader of any mechanism exchange the
//! same [`frame`]s, run the same three modes from [`session`], print the same
//! [`timing::Report`], take the same flags from [`cli`], meet in the same [`runtime`]
//! directory and clean up through the same [`cleanup`] registry. So when the `bench`
//! runner puts a pipe next to shared memory, the only difference is the mechanism.
//!
//! | module       | what it holds                                                                |
//! |--------------|------------------------------------------------------------------------------|
//! | [`checksum`] | CRC-32C of a frame: own loops as the CPU suits, piecewise, copied, combined  |
//! | [`frame`]    | the 40-byte header, encoder, total decoder, the stream `Reassembler`         |
//! | [`resum`]    | checksums a sender derives (repeated payloads, Pongs), not re-reading      |
//! | [`setup`]    | who runs: role, mechanism, flavour, wait strategy, the flags                 |
//! | [`session`]  | text, stream and pingpong as state machines that do no I/O; verification     |
//! | [`stream`]   | byte streams: `write` of a frame, `read` into the reassembler, pipe sizes    |
//! | [`timing`]   | CLOCK_MONOTONIC, HDR latency histogram, CPU time, the `Report`               |
//! | [`cli`]      | the shared flags and their limits; `start`, every program's entry point      |
//! | [`runtime`]  | the private runtime directory and kernel object names                        |
//! | [`cleanup`]  | the registry of owned objects and the Ctrl-C/SIGTERM thread                  |
//! | [`narrate`](mod@narrate) | `narrate!` and `warn!`: what a learner reads on stderr                       |
//! | [`peer`]     | is the peer process still alive?                                             |
//! | `testing`    | (feature `testing`) running the real binaries in tests, under a deadline      |
//! | [`ring`]     | the SPSC ring of frames over shared memory (`shm`, `mmap`): layout, waiting  |
//! | [`align`]    | private buffers laid out like ring records (copies at full speed)            |
//!
//! Read a pair in this order: the mechanism's `lib.rs` (how the two ends find each other),
//! its `writer.rs` and `reader.rs` (the system calls, top to bottom, and the loop that
//! moves the messages), then [`session`] (what the frames say and how they are checked).

pub mod align;
pub mod checksum;
pub mod cleanup;
pub mod cli;
pub mod frame;
pub mod hello;
pub mod loans;
pub mod lock;
pub mod narrate;
pub mod peer;
pub mod resum;
pub mod ring;
pub mod runtime;
pub mod session;
pub mod setup;
pub mod stall;
pub mod stream;
pub mod timing;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
