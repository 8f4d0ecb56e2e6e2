//! The Hello frame: the writer says what it runs, so the reader can follow it.
//!
//! Every session opens with one Hello ([`Kind::Hello`](crate::frame::Kind::Hello)) before
//! the first Data or Ping. It names the writer's program and version, the mode, the
//! message size, count and warm-up, the flavour, how it waits and what its channel holds.
//! A reader started with only the rendezvous flags runs whatever the Hello says; a reader
//! flag that contradicts it is an error that names both values and the fix
//! ([`Expect::check`]), instead of a run that "fails verification" for no visible reason.
//!
//! The payload, little-endian, at most [`MAX_LEN`] bytes:
//!
//! | offset | size | field      | meaning                                                   |
//! |-------:|-----:|------------|-----------------------------------------------------------|
//! |      0 |    1 | `mode`     | 1 text, 2 stream, 3 pingpong                              |
//! |      1 |    1 | `wait`     | 1 spin, 2 block, 3 adaptive                               |
//! |      2 |    1 | `verify`   | 0 full (checksum over every payload), 1 `--verify seq`    |
//! |      3 |    1 | `zero_copy`| 0 frames copied through the channel, 1 built in place     |
//! |      4 |    4 | `size`     | payload bytes per message (0 in text mode)                |
//! |      8 |    8 | `count`    | timed messages or round trips (0 in text mode)            |
//! |     16 |    8 | `warmup`   | untimed messages sent first                               |
//! |     24 |    8 | `capacity` | bytes the channel holds (pipe buffer, ring, queue); 0 unknown |
//! |     32 |  1+n | `program`  | length byte, then the name (`pipe-writer`), at most 32    |
//! |      … |  1+n | `version`  | length byte, then the crate version, at most 16           |
//! |      … |  1+n | `flavour`  | length byte, then `fifo`, `posix`, `tmpfs`, …, at most 32 |
//!
//! [`Hello::decode`] is total, like the frame decoder: any bytes give a `Hello` or an error
//! that says which field is wrong.

use std::fmt;

use anyhow::{bail, Result};

use crate::cli::Mode;
use crate::setup::{Setup, Wait};

/// Largest Hello payload: the fixed part and three strings at their longest.
pub const MAX_LEN: usize = 32 + (1 + 32) + (1 + 16) + (1 + 32);

/// This build's version, as a Hello carries it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a writer runs, as its Hello says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The writer's program name.
    pub program: String,
    /// Its version ([`VERSION`] of its build).
    pub version: String,
    /// Text, stream or pingpong.
    pub mode: Mode,
    /// Payload bytes per message (0 in text mode).
    pub size: u64,
    /// Timed messages or round trips (0 in text mode).
    pub count: u64,
    /// Untimed messages sent first.
    pub warmup: u64,
    /// The variant of the mechanism (`Flavour::as_str`).
    pub flavour: String,
    /// How the writer waits.
    pub wait: Wait,
    /// Bytes the channel holds, 0 when the writer does not know.
    pub capacity: u64,
    /// How much of each frame is checked.
    pub verify: Verify,
    /// Whether the writer builds its frames in place in a shared ring (`--zero-copy`).
    pub zero_copy: bool,
}

/// How much of each message the reader checks (`--verify`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Verify {
    /// Sequence, session, content prefix and a checksum over every payload byte.
    #[default]
    Full,
    /// Sequence, session and length only: the checksum covers the header, and the reader
    /// need not read the payload at all (as zero-copy frameworks' own benchmarks do).
    Seq,
}

impl Verify {
    /// `full` or `seq`, as on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Verify::Full => "full",
            Verify::Seq => "seq",
        }
    }
}

impl Hello {
    /// The Hello of a writer with this setup; `capacity` as the writer measured it.
    pub fn of(setup: &Setup, capacity: u64) -> Hello {
        let a = &setup.args;
        let text = a.mode == Mode::Text;
        Hello {
            program: setup.program.into(),
            version: VERSION.into(),
            mode: a.mode,
            size: if text { 0 } else { a.size as u64 },
            count: if text { 0 } else { a.count },
            warmup: a.warmup(),
            flavour: setup.flavour.as_str().into(),
            wait: setup.wait,
            capacity,
            verify: Verify::Full,
            zero_copy: false,
        }
    }

    /// The payload bytes (strings longer than their limit are cut at a character boundary).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_LEN);
        out.push(mode_code(self.mode));
        out.push(wait_code(self.wait));
        out.push(match self.verify {
            Verify::Full => 0,
            Verify::Seq => 1,
        });
        out.push(u8::from(self.zero_copy));
        // A size never exceeds 16 MiB (frame::MAX_PAYLOAD), so it fits in 32 bits.
        out.extend_from_slice(&(self.size.min(u32::MAX as u64) as u32).to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.warmup.to_le_bytes());
        out.extend_from_slice(&self.capacity.to_le_bytes());
        for (s, max) in [
            (&self.program, 32),
            (&self.version, 16),
            (&self.flavour, 32),
        ] {
            let s = cut(s, max);
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
        out
    }

    /// Reads a Hello payload back; an error names the field that is wrong.
    pub fn decode(p: &[u8]) -> Result<Hello> {
        if p.len() < 32 {
            bail!(
                "Hello payload is {} bytes: shorter than its 32-byte fixed part",
                p.len()
            );
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&p[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let mode = match p[0] {
            1 => Mode::Text,
            2 => Mode::Stream,
            3 => Mode::Pingpong,
            m => bail!("Hello names mode {m} (1 text, 2 stream, 3 pingpong expected)"),
        };
        let wait = match p[1] {
            1 => Wait::Spin,
            2 => Wait::Block,
            3 => Wait::Adaptive,
            w => bail!("Hello names wait {w} (1 spin, 2 block, 3 adaptive expected)"),
        };
        let verify = match p[2] {
            0 => Verify::Full,
            1 => Verify::Seq,
            v => bail!("Hello names verify {v} (0 full, 1 seq expected)"),
        };
        let zero_copy = match p[3] {
            0 => false,
            1 => true,
            z => bail!("Hello names zero-copy {z} (0 or 1 expected)"),
        };
        let mut rest = &p[32..];
        let mut text = |field: &str| -> Result<String> {
            let Some((&n, tail)) = rest.split_first() else {
                bail!("Hello ends before its {field} field");
            };
            let Some((s, tail)) = tail.split_at_checked(n as usize) else {
                bail!("Hello's {field} says {n} bytes; only {} follow", tail.len());
            };
            rest = tail;
            Ok(String::from_utf8_lossy(s).into_owned())
        };
        let (program, version, flavour) = (text("program")?, text("version")?, text("flavour")?);
        Ok(Hello {
            program,
            version,
            mode,
            size: u32::from_le_bytes([p[4], p[5], p[6], p[7]]) as u64,
            count: u64_at(8),
            warmup: u64_at(16),
            flavour,
            wait,
            capacity: u64_at(24),
            verify,
            zero_copy,
        })
    }

    /// The writer's command line as far as the Hello states it: `--mode stream --size 65536
    /// --count 100000 --warmup 10000`.
    pub fn flags(&self) -> String {
        let mut f = match self.mode {
            Mode::Text => "--mode text".to_string(),
            m => format!(
                "--mode {} --size {} --count {} --warmup {}",
                m.as_str(),
                self.size,
                self.count,
                self.warmup
            ),
        };
        if self.zero_copy {
            f.push_str(" --zero-copy");
        }
        if self.verify == Verify::Seq {
            f.push_str(" --verify seq");
        }
        f
    }
}

impl fmt::Display for Hello {
    /// `pipe-writer 0.1.0 runs --mode stream --size 64 --count 100000 --warmup 10000 (shell,
    /// waits: block, capacity 65536 B)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} runs {} ({}, waits: {}",
            self.program,
            self.version,
            self.flags(),
            self.flavour,
            self.wait
        )?;
        if self.capacity > 0 {
            write!(f, ", capacity {} B", self.capacity)?;
        }
        f.write_str(")")
    }
}

/// What a reader's own flags ask of the writer: each `Some` must match its Hello.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expect {
    /// `--mode` given to the reader.
    pub mode: Option<Mode>,
    /// `--size`.
    pub size: Option<usize>,
    /// `--count`.
    pub count: Option<u64>,
    /// `--warmup`.
    pub warmup: Option<u64>,
}

impl Expect {
    /// Nothing asked: follow the writer.
    pub fn is_empty(&self) -> bool {
        *self == Expect::default()
    }

    /// Checks the writer's Hello against these flags. The error names both values and
    /// how to start the reader instead: "the writer runs --mode stream --size 65536 ...;
    /// this reader was started with --mode pingpong: restart it without --mode, or with
    /// --mode stream".
    pub fn check(&self, hello: &Hello) -> Result<()> {
        let text = hello.mode == Mode::Text;
        let mut differ: Vec<(&str, String, String)> = Vec::new();
        if let Some(m) = self.mode.filter(|m| *m != hello.mode) {
            differ.push(("--mode", m.as_str().into(), hello.mode.as_str().into()));
        }
        let numbers = [
            ("--size", self.size.map(|s| s as u64), hello.size),
            ("--count", self.count, hello.count),
            ("--warmup", self.warmup, hello.warmup),
        ];
        for (flag, mine, theirs) in numbers {
            match mine {
                Some(v) if text => differ.push((flag, v.to_string(), "(none: text mode)".into())),
                Some(v) if v != theirs => differ.push((flag, v.to_string(), theirs.to_string())),
                _ => {}
            }
        }
        if differ.is_empty() {
            return Ok(());
        }
        let mine: Vec<String> = differ.iter().map(|(f, v, _)| format!("{f} {v}")).collect();
        let without: Vec<&str> = differ.iter().map(|(f, _, _)| *f).collect();
        let with: Vec<String> = differ
            .iter()
            .filter(|(_, _, t)| !t.starts_with('('))
            .map(|(f, _, t)| format!("{f} {t}"))
            .collect();
        let mut fix = format!("restart the reader without {}", without.join(" "));
        if !with.is_empty() {
            fix.push_str(&format!(", or with {}", with.join(" ")));
        }
        bail!(
            "the writer ({}) runs {}; this reader was started with {}: {fix}",
            hello.program,
            hello.flags(),
            mine.join(" ")
        )
    }
}

fn mode_code(m: Mode) -> u8 {
    match m {
        Mode::Text => 1,
        Mode::Stream => 2,
        Mode::Pingpong => 3,
    }
}

fn wait_code(w: Wait) -> u8 {
    match w {
        Wait::Spin => 1,
        Wait::Block => 2,
        Wait::Adaptive => 3,
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Hello {
        Hello {
            program: "pipe-writer".into(),
            version: "0.1.0".into(),
            mode: Mode::Stream,
            size: 65536,
            count: 100_000,
            warmup: 10_000,
            flavour: "shell".into(),
            wait: Wait::Block,
            capacity: 65536,
            verify: Verify::Full,
            zero_copy: false,
        }
    }

    /// Pins the bytes of a Hello payload: a change of layout must change this on purpose.
    #[test]
    fn hello_bytes_are_pinned() {
        let mut expected = vec![
            2, // mode = stream
            2, // wait = block
            0, // verify = full
            0, // zero-copy = no
            0, 0, 1, 0, // size = 65536
            0xa0, 0x86, 0x01, 0, 0, 0, 0, 0, // count = 100000
            0x10, 0x27, 0, 0, 0, 0, 0, 0, // warmup = 10000
            0, 0, 1, 0, 0, 0, 0, 0, // capacity = 65536
            11,
        ];
        expected.extend_from_slice(b"pipe-writer");
        expected.push(5);
        expected.extend_from_slice(b"0.1.0");
        expected.push(5);
        expected.extend_from_slice(b"shell");
        assert_eq!(sample().encode(), expected);
        assert_eq!(Hello::decode(&expected).unwrap(), sample());
    }

    #[test]
    fn the_longest_hello_fits_the_limit_and_long_names_are_cut() {
        let mut h = sample();
        h.program = "p".repeat(100);
        h.version = "v".repeat(100);
        h.flavour = "é".repeat(100);
        let bytes = h.encode();
        assert!(bytes.len() <= MAX_LEN, "{} > {MAX_LEN}", bytes.len());
        let back = Hello::decode(&bytes).unwrap();
        assert_eq!(back.program.len(), 32);
        assert_eq!(back.flavour, "é".repeat(16));
    }

    #[test]
    fn a_damaged_hello_names_its_field_and_never_panics() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(Hello::decode(&bytes[..n]).is_err(), "cut at {n}");
        }
        let mut bad = bytes.clone();
        bad[0] = 9;
        let e = Hello::decode(&bad).unwrap_err().to_string();
        assert!(e.contains("mode 9"), "{e}");
        let mut zc = sample();
        (zc.verify, zc.zero_copy) = (Verify::Seq, true);
        let zc_bytes = zc.encode();
        assert_eq!(&zc_bytes[2..4], &[1, 1]);
        assert_eq!(Hello::decode(&zc_bytes).unwrap(), zc);
        assert!(zc.flags().ends_with("--zero-copy --verify seq"));
        let mut bad = bytes.clone();
        bad[32] = 200;
        let e = Hello::decode(&bad).unwrap_err().to_string();
        assert!(e.contains("program") && e.contains("200"), "{e}");
    }

    #[test]
    fn a_reader_with_no_flags_follows_any_writer() {
        assert!(Expect::default().check(&sample()).is_ok());
        let same = Expect {
            mode: Some(Mode::Stream),
            size: Some(65536),
            ..Expect::default()
        };
        assert!(same.check(&sample()).is_ok());
    }

    #[test]
    fn a_contradicting_flag_names_both_values_and_the_fix() {
        let e = Expect {
            mode: Some(Mode::Pingpong),
            ..Expect::default()
        };
        let msg = e.check(&sample()).unwrap_err().to_string();
        assert!(msg.contains("runs --mode stream --size 65536"), "{msg}");
        assert!(msg.contains("started with --mode pingpong"), "{msg}");
        assert!(
            msg.contains("restart the reader without --mode, or with --mode stream"),
            "{msg}"
        );
        let e = Expect {
            size: Some(16),
            count: Some(10),
            ..Expect::default()
        };
        let msg = e.check(&sample()).unwrap_err().to_string();
        assert!(msg.contains("--size 16 --count 10"), "{msg}");
        assert!(msg.contains("or with --size 65536 --count 100000"), "{msg}");
    }

    #[test]
    fn a_size_given_to_a_text_reader_says_text_mode_has_none() {
        let text = Hello {
            mode: Mode::Text,
            size: 0,
            count: 0,
            warmup: 0,
            ..sample()
        };
        let e = Expect {
            size: Some(64),
            ..Expect::default()
        };
        let msg = e.check(&text).unwrap_err().to_string();
        assert!(msg.contains("runs --mode text"), "{msg}");
        assert!(msg.contains("restart the reader without --size"), "{msg}");
        assert!(!msg.contains("or with"), "{msg}");
    }
}
