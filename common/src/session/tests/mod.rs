//! The sessions driven by an in-memory mechanism: frames go into a queue, whole. Frames
//! built and read in place (zero-copy) are in `in_place`.

use std::collections::VecDeque;

use super::*;
use anyhow::Result;

use crate::frame::{decode, Decoded, HEADER_LEN, MAX_PAYLOAD};
use crate::setup::Setup;
use crate::timing::Report;

fn setup(args: &[&str]) -> Setup {
    example_setup(args)
}

/// Runs a writer session into a queue of frames; pingpong answers come from a reader
/// session on the other side of the queue.
fn write_all(s: &Setup, input: &[u8]) -> (Result<Report>, VecDeque<Vec<u8>>) {
    let mut session = WriterSession::new(s);
    let mut buf = FrameBuf::new();
    let mut wire = VecDeque::new();
    let mut echo = ReaderSession::new(s);
    let mut lines = input.split_inclusive(|&b| b == b'\n');
    let result = loop {
        match session.next(&mut buf) {
            Err(e) => break Err(e),
            Ok(Next::Send(out)) => {
                if out.kind == crate::frame::Kind::Hello {
                    let hello = out.to_vec();
                    let (h, p) = parse(&hello);
                    assert!(matches!(echo.on_frame(&h, p).unwrap(), Action::Hello(_)));
                }
                wire.push_back(out.to_vec())
            }
            Ok(Next::NeedLine) => match lines.next() {
                Some(l) => session.push_line(l),
                None => session.end_of_input(),
            },
            Ok(Next::AwaitAnswer) => {
                let ping = wire.pop_back().unwrap();
                let (h, p) = parse(&ping);
                let Action::Echo(pong) = echo.on_frame(&h, p).unwrap() else {
                    panic!("a Ping is echoed")
                };
                let pong = pong.to_vec();
                let (h, p) = parse(&pong);
                session.answer(&h, p).unwrap();
                wire.push_back(ping);
            }
            Ok(Next::Done) => break Ok(session.finish()),
        }
    };
    (result, wire)
}

fn parse(bytes: &[u8]) -> (crate::frame::Header, &[u8]) {
    match decode(bytes, MAX_PAYLOAD).unwrap() {
        Decoded::Frame { header, total } => (header, &bytes[HEADER_LEN..total]),
        other => panic!("{other:?}"),
    }
}

/// Feeds frames to a reader session; `Ok(None)` when the frames ran out before End.
fn read_all(s: &Setup, wire: &VecDeque<Vec<u8>>) -> Result<Option<(Report, Vec<String>)>> {
    let mut session = ReaderSession::new(s);
    let mut printed = Vec::new();
    for f in wire {
        let (h, p) = parse(f);
        match session.on_frame(&h, p)? {
            Action::Continue | Action::Echo(_) | Action::Hello(_) => {}
            Action::Print(line) => printed.push(line.to_string()),
            Action::Done => return Ok(Some((session.finish(), printed))),
        }
    }
    Ok(None)
}

#[test]
fn stream_is_verified_end_to_end() {
    let s = setup(&[
        "--mode", "stream", "--count", "50", "--size", "100", "--warmup", "5",
    ]);
    let (w, wire) = write_all(&s, b"");
    let wr = w.unwrap();
    assert_eq!((wr.count, wr.warmup, wr.bytes), (50, 5, 5000));
    assert_eq!(wire.len(), 57, "Hello, 55 Data frames and End");
    let (rr, _) = read_all(&s, &wire).unwrap().unwrap();
    assert!(rr.verified);
    assert_eq!((rr.count, rr.warmup, rr.bytes), (50, 5, 5000));
    assert_eq!(
        (rr.role.as_str(), rr.latency_kind.as_str()),
        ("reader", "one_way")
    );
}

/// A stream stamps `sent_ns` on its first timed Data frame and on one frame of each block
/// of LATENCY_EVERY sequence numbers, at a place that moves from block to block, 0 on the
/// rest (warm-up included), and the reader times exactly the stamped ones and says so.
#[test]
fn a_stream_times_one_data_frame_in_each_block_of_latency_every() {
    let (count, warmup) = (16_000u64, 5u64);
    let s = setup(&[
        "--mode",
        "stream",
        "--count",
        &count.to_string(),
        "--size",
        "8",
        "--warmup",
        &warmup.to_string(),
    ]);
    let (w, wire) = write_all(&s, b"");
    w.unwrap();
    let stamped: Vec<u64> = wire
        .iter()
        .map(|f| parse(f).0)
        .filter(|h| h.kind == crate::frame::Kind::Data && h.sent_ns != 0)
        .map(|h| h.seq)
        .collect();
    assert_eq!(
        stamped[0], warmup,
        "the first timed frame, and no warm-up frame"
    );
    let total = warmup + count;
    for block in 1..total / LATENCY_EVERY {
        let n = stamped
            .iter()
            .filter(|&&q| q / LATENCY_EVERY == block)
            .count();
        assert_eq!(n, 1, "block {block}: {n} stamped frames");
    }
    let places: std::collections::BTreeSet<u64> =
        stamped.iter().map(|q| q % LATENCY_EVERY).collect();
    assert_eq!(
        places.len() as u64,
        LATENCY_EVERY,
        "every place in a block is drawn"
    );
    let (rr, _) = read_all(&s, &wire).unwrap().unwrap();
    assert!(rr.verified, "{rr:?}");
    assert!(rr.latency_ns.is_some());
    let want = format!(
        "one-way latency from {} of the {count} timed messages",
        stamped.len()
    );
    let note = rr
        .notes
        .iter()
        .find(|n| n.starts_with("one-way latency from"));
    assert_eq!(
        note.map(|n| n.split(':').next().unwrap()),
        Some(want.as_str()),
        "{:?}",
        rr.notes
    );

    // Payloads of SAMPLED_BELOW bytes: every frame timed, and no note.
    let size = SAMPLED_BELOW.to_string();
    let s = setup(&[
        "--mode", "stream", "--count", "40", "--size", &size, "--warmup", "2",
    ]);
    let (w, wire) = write_all(&s, b"");
    w.unwrap();
    let data = wire.iter().map(|f| parse(f).0);
    let data: Vec<_> = data
        .filter(|h| h.kind == crate::frame::Kind::Data)
        .collect();
    assert!(data.iter().all(|h| h.sent_ns != 0), "every frame stamped");
    let (rr, _) = read_all(&s, &wire).unwrap().unwrap();
    assert!(rr.verified && !rr.notes.iter().any(|n| n.starts_with("one-way")));
}

#[test]
fn pingpong_measures_every_timed_round_trip() {
    let s = setup(&[
        "--mode", "pingpong", "--count", "20", "--size", "3", "--warmup", "2",
    ]);
    let (w, wire) = write_all(&s, b"");
    let wr = w.unwrap();
    assert_eq!(wr.latency_kind, "round_trip");
    assert_eq!(wr.count, 20);
    let lat = wr.latency_ns.expect("round trips were timed");
    assert!(lat.min <= lat.p50 && lat.p50 <= lat.max);
    let (rr, _) = read_all(&s, &wire).unwrap().unwrap();
    assert!(rr.verified, "{rr:?}");
    assert_eq!((rr.count, rr.warmup), (20, 2));
}

/// A Ping sealed while the one before it waits for its Pong, and stamped with its send
/// time only when that Pong is in, is byte for byte the frame a fresh seal builds with
/// that send time; and every timed round trip reaches the histogram, the last one too
/// (each is recorded once the next Ping is out, or before End).
#[test]
fn a_ping_sealed_ahead_is_the_frame_a_fresh_seal_builds() {
    use crate::frame::{encode_header, Fields, Kind};
    for (size, warmup) in [("64", "3"), ("1", "0"), ("8", "2"), ("100000", "1")] {
        let s = setup(&[
            "--mode", "pingpong", "--count", "6", "--size", size, "--warmup", warmup,
        ]);
        let mut session = WriterSession::new(&s);
        let mut echo = ReaderSession::new(&s);
        let mut buf = FrameBuf::new();
        let (mut pings, mut answered) = (0, 0);
        loop {
            match session.next(&mut buf).unwrap() {
                Next::Send(out) if out.kind == Kind::Ping => {
                    let ping = out.to_vec();
                    let (h, p) = parse(&ping);
                    let fields = Fields {
                        kind: Kind::Ping,
                        flags: h.flags,
                        nonce: session.nonce(),
                        seq: pings,
                        sent_ns: h.sent_ns,
                    };
                    assert_ne!(
                        h.sent_ns, 0,
                        "Ping {pings} of {size} bytes carries a send time"
                    );
                    let fresh = encode_header(fields, p).unwrap();
                    assert_eq!(
                        &ping[..HEADER_LEN],
                        &fresh[..],
                        "Ping {pings} of {size} bytes"
                    );
                    pings += 1;
                    let Action::Echo(pong) = echo.on_frame(&h, p).unwrap() else {
                        panic!("a Ping is echoed")
                    };
                    let pong = pong.to_vec();
                    assert!(matches!(session.next(&mut buf).unwrap(), Next::AwaitAnswer));
                    let (h, p) = parse(&pong);
                    session.answer(&h, p).unwrap();
                    answered += 1;
                }
                Next::Send(out) => {
                    let frame = out.to_vec();
                    let (h, p) = parse(&frame);
                    let _ = echo.on_frame(&h, p).unwrap();
                    if h.kind == Kind::End {
                        // The last round trip is in the histogram before End leaves.
                        assert_eq!(session.round_trips_recorded(), 6, "{size} bytes");
                    }
                }
                Next::Done => break,
                other => panic!("{other:?}"),
            }
        }
        let warm: u64 = warmup.parse().unwrap();
        assert_eq!((pings, answered), (6 + warm, 6 + warm), "{size} bytes");
    }
}

#[test]
fn a_pong_for_another_ping_is_refused() {
    let s = setup(&["--mode", "pingpong", "--count", "2", "--warmup", "0"]);
    let mut session = WriterSession::new(&s);
    let mut buf = FrameBuf::new();
    let _hello = session.next(&mut buf).unwrap();
    let Next::Send(ping) = session.next(&mut buf).unwrap() else {
        panic!()
    };
    let ping = ping.to_vec();
    assert!(matches!(session.next(&mut buf).unwrap(), Next::AwaitAnswer));
    let (h, p) = parse(&ping);
    let mut wrong = h;
    wrong.kind = crate::frame::Kind::Pong;
    wrong.seq = 7;
    let e = session.answer(&wrong, p).unwrap_err().to_string();
    assert!(e.contains("expected Pong seq 0"), "{e}");
    wrong.seq = 0;
    let e = session.answer(&wrong, &p[..3]).unwrap_err().to_string();
    assert!(e.contains("does not carry the payload"), "{e}");
}

#[test]
fn a_lost_message_fails_verification() {
    let s = setup(&["--mode", "stream", "--count", "10", "--warmup", "0"]);
    let (_, mut wire) = write_all(&s, b"");
    wire.remove(4);
    let (rr, _) = read_all(&s, &wire).unwrap().unwrap();
    assert!(!rr.verified);
}

#[test]
fn a_repeated_or_corrupt_message_fails_verification() {
    let s = setup(&["--mode", "stream", "--count", "10", "--warmup", "0"]);
    let (_, mut wire) = write_all(&s, b"");
    let again = wire[3].clone();
    wire.insert(4, again);
    let (rr, _) = read_all(&s, &wire).unwrap().unwrap();
    assert!(!rr.verified, "a repeat is not verified");
}

#[test]
fn stale_frames_of_another_session_are_skipped_and_counted() {
    let s = setup(&["--mode", "stream", "--count", "10", "--warmup", "0"]);
    let (_, old) = write_all(&s, b"");
    let (_, mut wire) = write_all(&s, b"");
    // Leftovers of a crashed run: its frames 3..7, no End, before the new session.
    for f in old.iter().skip(3).take(4).rev() {
        wire.push_front(f.clone());
    }
    let (rr, _) = read_all(&s, &wire).unwrap().unwrap();
    assert!(rr.verified, "{rr:?}");
    assert_eq!(rr.stale_skipped, 4);
    assert_eq!(rr.count, 10);
}

#[test]
fn a_new_session_after_leftovers_with_seq_0_discards_them() {
    let s = setup(&["--mode", "stream", "--count", "10", "--warmup", "0"]);
    let (_, old) = write_all(&s, b"");
    let (_, mut wire) = write_all(&s, b"");
    // A crashed run's Hello and first three frames (seq 0..2, no End), then the new run.
    for f in old.iter().take(4).rev() {
        wire.push_front(f.clone());
    }
    let (rr, _) = read_all(&s, &wire).unwrap().unwrap();
    assert!(rr.verified, "{rr:?}");
    assert_eq!((rr.stale_skipped, rr.count), (3, 10));
}

#[test]
fn no_end_is_reported_as_such() {
    let s = setup(&["--mode", "stream", "--count", "10", "--warmup", "0"]);
    let (_, mut wire) = write_all(&s, b"");
    wire.pop_back();
    assert!(read_all(&s, &wire).unwrap().is_none());
    let mut session = ReaderSession::new(&s);
    for f in &wire {
        let (h, p) = parse(f);
        session.on_frame(&h, p).unwrap();
    }
    let e = session.writer_left("the queue", None).to_string();
    assert!(e.contains("after 10 messages without sending End"), "{e}");
    let e = session.writer_left("the pipe", Some((5, 104))).to_string();
    assert!(
        e.contains("truncated stream") && e.contains("(5 of 104 bytes)"),
        "{e}"
    );
}

#[test]
fn text_lines_become_messages_and_an_oversized_line_is_refused() {
    let mut s = setup(&["--mode", "text"]);
    s.max_payload = 10;
    let (w, wire) = write_all(&s, b"hello\nworld\r\n");
    let wr = w.unwrap();
    assert_eq!((wr.count, wr.bytes), (2, 10));
    let (rr, printed) = read_all(&s, &wire).unwrap().unwrap();
    assert!(rr.verified);
    assert!(printed[0].starts_with("#0 (5 B, ") && printed[0].ends_with("): hello"));
    assert!(printed[1].ends_with("): world"), "{printed:?}");

    let (w, wire) = write_all(&s, b"ok\nthis line is too long\n");
    let e = w.unwrap_err().to_string();
    assert!(
        e.contains("line 2 is 21 bytes") && e.contains("10 bytes"),
        "{e}"
    );
    // The line before it was delivered and the session closed cleanly.
    let (rr, _) = read_all(&s, &wire).unwrap().unwrap();
    assert!(rr.verified);
    assert_eq!(rr.count, 1);
}

#[test]
fn reader_left_names_the_messages_sent() {
    let s = setup(&["--mode", "stream", "--count", "10", "--warmup", "0"]);
    let mut session = WriterSession::new(&s);
    let mut buf = FrameBuf::new();
    assert!(matches!(session.next(&mut buf).unwrap(), Next::Send(_)));
    let e = session.reader_left("closed the pipe").to_string();
    assert!(
        e.starts_with("reader closed the pipe right after this writer's Hello (--mode stream --size 64 --count 10 --warmup 0)"),
        "{e}"
    );
    for _ in 0..4 {
        assert!(matches!(session.next(&mut buf).unwrap(), Next::Send(_)));
    }
    let e = session.reader_left("closed the pipe").to_string();
    assert!(
        e.starts_with("reader closed the pipe after this writer sent 4 messages; stopping (a reader that refuses"),
        "{e}"
    );
}

#[test]
fn a_pong_at_the_reader_is_refused() {
    let s = setup(&["--mode", "pingpong", "--count", "1", "--warmup", "0"]);
    let mut w = WriterSession::new(&s);
    let mut buf = FrameBuf::new();
    let mut r = ReaderSession::new(&s);
    let Next::Send(hello) = w.next(&mut buf).unwrap() else {
        panic!()
    };
    let hello = hello.to_vec();
    let (h, p) = parse(&hello);
    assert!(matches!(r.on_frame(&h, p).unwrap(), Action::Hello(_)));
    let Next::Send(ping) = w.next(&mut buf).unwrap() else {
        panic!()
    };
    let ping = ping.to_vec();
    let (h, p) = parse(&ping);
    let Action::Echo(pong) = r.on_frame(&h, p).unwrap() else {
        panic!()
    };
    let pong = pong.to_vec();
    let (h, p) = parse(&pong);
    let e = r.on_frame(&h, p).unwrap_err().to_string();
    assert!(e.contains("does not expect a Pong"), "{e}");
}

#[test]
fn a_writer_says_verified_only_where_it_checked_something() {
    let s = setup(&["--mode", "stream", "--count", "5", "--warmup", "0"]);
    let (w, _) = write_all(&s, b"");
    let wr = w.unwrap();
    assert!(!wr.verified && wr.verified_by == "reader" && !wr.checks_here());
    let text = wr.to_string();
    assert!(
        text.contains("sent (the reader verifies them)") && !text.contains(", verified"),
        "{text}"
    );
    assert!(
        conclude(&wr, true).is_ok(),
        "sending everything is a success for a writer"
    );

    let s = setup(&["--mode", "pingpong", "--count", "5", "--warmup", "0"]);
    let (w, _) = write_all(&s, b"");
    let wr = w.unwrap();
    assert!(wr.verified && wr.verified_by == "writer" && wr.checks_here());
    assert!(wr.to_string().contains(", verified"));
}

#[test]
fn text_lines_are_escaped_and_long_ones_cut() {
    let show = |text: &[u8]| {
        TextLine {
            seq: 1,
            latency_ns: 5,
            text,
        }
        .to_string()
    };
    let line = show(b"bell\x07 esc\x1b[2J tab\t bad\xff\xfe ok");
    assert!(
        line.ends_with(r"bell\u{7} esc\u{1b}[2J tab\t bad\xff\xfe ok"),
        "{line}"
    );
    assert!(!line.contains('\x1b') && !line.contains('\u{fffd}'));
    let long = vec![b'a'; 65_672];
    let line = show(&long);
    assert!(line.contains("(65672 B,"), "{line}");
    assert!(
        line.ends_with(&format!("{} … 65,472 more bytes", "a".repeat(200))),
        "{line}"
    );
    assert!(show("naïve ünïcode".as_bytes()).ends_with("naïve ünïcode"));
}

/// A reader's setup: the flags it was given are checks on the writer's Hello.
fn reader_setup(flags: &[&str]) -> Setup {
    use crate::cli::{ExpectArgs, OutputArgs, RunFlags};
    use clap::Parser;
    #[derive(Parser)]
    struct R {
        #[command(flatten)]
        run: ExpectArgs,
        #[command(flatten)]
        out: OutputArgs,
    }
    let r = R::parse_from(std::iter::once("reader").chain(flags.iter().copied()));
    Setup {
        args: r.run.resolve(None, &r.out),
        ..example_setup(&[])
    }
}

#[test]
fn a_reader_without_flags_follows_a_stream_writer() {
    let w = setup(&[
        "--mode", "stream", "--count", "30", "--size", "100", "--warmup", "3",
    ]);
    let (_, wire) = write_all(&w, b"");
    let r = reader_setup(&[]);
    let (rr, printed) = read_all(&r, &wire).unwrap().unwrap();
    assert!(rr.verified, "{rr:?}");
    assert!(printed.is_empty(), "a stream is verified, not printed");
    assert_eq!(
        (rr.mode.as_str(), rr.count, rr.warmup, rr.bytes),
        ("stream", 30, 3, 3000)
    );
}

#[test]
fn a_reader_flag_that_contradicts_the_hello_names_both_values() {
    let w = setup(&["--mode", "stream", "--size", "65536", "--count", "10"]);
    let (_, wire) = write_all(&w, b"");
    let r = reader_setup(&["--mode", "pingpong"]);
    let e = read_all(&r, &wire).unwrap_err().to_string();
    assert!(
        e.contains("runs --mode stream --size 65536 --count 10"),
        "{e}"
    );
    assert!(
        e.contains("restart the reader without --mode, or with --mode stream"),
        "{e}"
    );
    let r = reader_setup(&["--mode", "stream", "--size", "65536"]);
    assert!(read_all(&r, &wire).unwrap().unwrap().0.verified);
}

#[test]
fn frames_before_any_hello_are_stale() {
    let s = setup(&["--mode", "stream", "--count", "5", "--warmup", "0"]);
    let (_, mut wire) = write_all(&s, b"");
    let hello = wire.pop_front().unwrap();
    let mut session = ReaderSession::new(&s);
    for f in &wire {
        let (h, p) = parse(f);
        assert!(matches!(session.on_frame(&h, p).unwrap(), Action::Continue));
    }
    assert!(session.writer_hello().is_none());
    let e = session.writer_left("the FIFO", None).to_string();
    assert!(e.contains("before its Hello"), "{e}");
    let (h, p) = parse(&hello);
    assert!(matches!(session.on_frame(&h, p).unwrap(), Action::Hello(_)));
}

#[test]
fn a_second_hello_of_another_mode_is_refused() {
    let a = setup(&["--mode", "stream", "--count", "5", "--warmup", "0"]);
    let b = setup(&["--mode", "pingpong", "--count", "5", "--warmup", "0"]);
    let (_, first) = write_all(&a, b"");
    let (_, second) = write_all(&b, b"");
    let mut wire: VecDeque<Vec<u8>> = first.iter().take(3).cloned().collect();
    wire.extend(second.iter().cloned());
    let e = read_all(&reader_setup(&[]), &wire).unwrap_err().to_string();
    assert!(
        e.contains("a second Hello arrived") && e.contains("--mode pingpong"),
        "{e}"
    );
}

/// `--verify seq` leaves the payload out of the checksum, and only then: a changed payload
/// byte (past the sequence number) passes with it and fails without it.
#[test]
fn a_header_only_checksum_ignores_the_payload_and_nothing_else() {
    use crate::hello::Verify;
    for verify in [Verify::Full, Verify::Seq] {
        let s = setup(&[
            "--mode", "stream", "--count", "3", "--size", "64", "--warmup", "0",
        ]);
        let mut w = WriterSession::new(&s).verify(verify);
        let mut buf = FrameBuf::new();
        let _hello = w.next(&mut buf).unwrap();
        let Next::Send(out) = w.next(&mut buf).unwrap() else {
            panic!()
        };
        let mut f = out.to_vec();
        f[HEADER_LEN + 20] ^= 1;
        let r = decode(&f, MAX_PAYLOAD);
        assert_eq!(r.is_ok(), verify == Verify::Seq, "{verify:?}: {r:?}");
        f[HEADER_LEN + 20] ^= 1;
        f[16] ^= 1; // the seq field: covered either way
        assert!(decode(&f, MAX_PAYLOAD).is_err());
    }
}

/// A pingpong reader reads the clock once for the timed part, not once per Ping: the
/// writer times the round trips, and the reader's report has no one-way latency.
#[test]
fn a_pingpong_reader_times_nothing_per_ping() {
    let s = setup(&["--mode", "pingpong", "--count", "10", "--warmup", "0"]);
    let (_, wire) = write_all(&s, b"");
    let (rr, _) = read_all(&s, &wire).unwrap().unwrap();
    assert!(rr.verified && rr.latency_ns.is_none(), "{rr:?}");
    assert_eq!(rr.count, 10);
}

mod in_place;
