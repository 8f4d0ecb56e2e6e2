//! Every bare loop (`bench __bare`) runs once at a small count, in both modes, and prints a
//! sane result: its own identity, a positive figure, ordered quantiles, and nothing left
//! behind. No figure is judged against a threshold: timings belong to real runs.

use std::process::{Command, Output, Stdio};

fn bare(args: &[&str]) -> (Output, u32) {
    let child = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("__bare")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bench __bare");
    let pid = child.id();
    (
        child.wait_with_output().expect("wait for bench __bare"),
        pid,
    )
}

/// Runs one loop and checks its JSON line; returns it.
fn check(kind: &str, mode: &str, size: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![kind, mode, size, "300"];
    args.extend_from_slice(extra);
    let (out, pid) = bare(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench __bare {args:?} failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.trim().is_empty(),
        "{args:?} wrote to stderr: {stderr}"
    );
    let b: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{args:?}: not one JSON line ({e}): {stdout}"));
    let what = format!("{args:?}: {b}");
    assert_eq!(b["kind"], kind, "{what}");
    assert_eq!(b["mode"], mode, "{what}");
    assert_eq!(b["status"], "ok", "{what}");
    assert_eq!(b["count"], 300, "{what}");
    let bps = b["bytes_per_s"].as_f64().unwrap();
    let mps = b["msgs_per_s"].as_f64().unwrap();
    assert!(bps > 0.0 && bps.is_finite(), "{what}");
    assert!(mps > 0.0 && mps.is_finite(), "{what}");
    let size_bytes = b["size_bytes"].as_f64().unwrap();
    assert!(((bps / mps) / size_bytes - 1.0).abs() < 1e-6, "{what}");
    if mode == "pingpong" {
        let l = &b["latency_ns"];
        let q = |k: &str| {
            l[k].as_u64()
                .unwrap_or_else(|| panic!("{what}: latency_ns.{k}"))
        };
        assert!(q("min") > 0, "{what}");
        assert!(
            q("min") <= q("p50") && q("p50") <= q("p90") && q("p90") <= q("p99"),
            "{what}"
        );
        assert!(q("p99") <= q("p999") && q("p999") <= q("max"), "{what}");
    } else {
        assert!(b["latency_ns"].is_null(), "{what}");
    }
    assert!(!b["setup"].as_str().unwrap().is_empty(), "{what}");
    // Nothing left behind: the FIFO directory, the POSIX queue names.
    let uid = nix::unistd::geteuid();
    assert!(
        !std::env::temp_dir()
            .join(format!("ipc-study-bare-{pid}"))
            .exists(),
        "{what}: FIFO directory left behind"
    );
    if let Ok(dir) = std::fs::read_dir("/dev/mqueue") {
        let prefix = format!("ipc-study-{uid}-bare-{pid}-");
        for e in dir.flatten() {
            assert!(
                !e.file_name().to_string_lossy().starts_with(&prefix),
                "{what}: left {:?}",
                e.path()
            );
        }
    }
    b
}

#[test]
fn every_bare_loop_runs_in_both_modes() {
    for kind in [
        "pipe", "fifo", "sysv-mq", "posix-mq", "shm-copy", "unix", "tcp",
    ] {
        for mode in ["pingpong", "stream"] {
            check(kind, mode, "1K", &[]);
        }
    }
}

#[test]
fn the_vmsplice_loop_streams_and_has_no_pingpong() {
    for size in ["4K", "64K"] {
        let b = check("pipe-vmsplice", "stream", size, &[]);
        let setup = b["setup"].as_str().unwrap();
        assert!(setup.contains("vmsplice from two alternating"), "{setup}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["__bare", "pipe-vmsplice", "pingpong", "64", "100"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stream loop"));
}

#[test]
fn shm_copy_also_waits_with_futexes() {
    for mode in ["pingpong", "stream"] {
        let b = check("shm-copy", mode, "4K", &["--wait", "block"]);
        assert_eq!(b["wait"], "block");
    }
    assert_eq!(check("shm-copy", "pingpong", "64", &[])["wait"], "spin");
}

#[test]
fn pipe_and_fifo_streams_take_a_pipe_size() {
    for kind in ["pipe", "fifo"] {
        let b = check(kind, "stream", "64K", &["--pipe-size", "256K"]);
        let setup = b["setup"].as_str().unwrap();
        assert!(setup.contains("262144 bytes"), "{setup}");
    }
}

#[test]
fn pinned_loops_run_on_the_given_cpus() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = if cpus >= 2 { "--pin=0,1" } else { "--pin=0,0" };
    check("pipe", "pingpong", "64", &[pin]);
    check("shm-copy", "stream", "64", &[pin]);
}

#[test]
fn bad_arguments_are_refused_with_the_reason() {
    for (args, says) in [
        (&["pipe", "text", "64", "10"][..], "pingpong or stream"),
        (
            &["carrier-pigeon", "stream", "64", "10"][..],
            "carrier-pigeon",
        ),
        (&["pipe", "stream", "0", "10"][..], "SIZE"),
        (&["pipe", "stream", "64", "10", "--pin", "0"][..], "--pin"),
    ] {
        let (out, _) = bare(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
