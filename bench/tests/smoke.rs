//! Smoke test of the runner: tiny counts over every mechanism this build knows; each case
//! must produce a verified result, and every output file must exist and parse. No figure
//! is judged: timings belong to real runs, not to tests.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn runner_produces_verified_results_and_every_file() {
    let out = std::env::temp_dir().join(format!("ipc-study-bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut child = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--count", "300", "--deadline", "60", "--json", "--out"])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bench");
    // The runner has its own per-case deadline; this one guards the whole run.
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(400) {
            let _ = child.kill();
            panic!("bench did not finish in 400 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed:\n{stdout}\n{stderr}");

    let all: serde_json::Value =
        serde_json::from_str(stdout.trim()).expect("--json prints one object");
    let rows = all["rows"].as_array().expect("rows");
    assert!(!rows.is_empty());
    for r in rows {
        assert_eq!(r["status"], "ok", "{r}");
        assert!(r["msgs_per_s"].as_f64().unwrap() > 0.0, "{r}");
        // Every row is also divided by its bare loop, run in the same repetition.
        assert!(!r["bare"].as_str().unwrap().is_empty(), "{r}");
        assert!(r["x_bare"].as_f64().unwrap() > 0.0, "{r}");
    }
    let bares = all["bare"].as_array().expect("bare");
    assert!(!bares.is_empty());
    for b in bares {
        assert_eq!(b["status"], "ok", "{b}");
    }
    // Each row's bare loop ("pipe block", "shm-copy spin") is among them.
    for r in rows {
        let name = r["bare"].as_str().unwrap();
        assert!(
            bares.iter().any(|b| format!(
                "{} {}",
                b["kind"].as_str().unwrap(),
                b["wait"].as_str().unwrap()
            ) == name
                && b["mode"] == r["mode"]
                && b["size_bytes"] == r["size_bytes"]),
            "no bare loop {name} for {r}"
        );
    }
    // Both modes of every mechanism that has cases in this build.
    for mech in rows.iter().map(|r| r["mechanism"].as_str().unwrap()) {
        for mode in ["pingpong", "stream"] {
            assert!(
                rows.iter()
                    .any(|r| r["mechanism"] == mech && r["mode"] == mode),
                "{mech} {mode} missing"
            );
        }
    }
    let floors = all["floors"].as_array().expect("floors");
    for name in ["cacheline", "futex", "memcpy"] {
        assert!(
            floors.iter().any(|f| f["name"] == name),
            "floor {name} missing"
        );
    }

    let file =
        |n: &str| std::fs::read_to_string(out.join(n)).unwrap_or_else(|e| panic!("{n}: {e}"));
    let results: serde_json::Value =
        serde_json::from_str(&file("results.json")).expect("results.json parses");
    assert_eq!(results["rows"].as_array().unwrap().len(), rows.len());
    let env: serde_json::Value =
        serde_json::from_str(&file("environment.json")).expect("environment.json parses");
    assert!(env["kernel"].as_str().unwrap().starts_with("Linux"));
    let csv = file("results.csv");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert!(header.contains(&"p50_ns") && header.contains(&"bytes_per_s"));
    assert!(header.contains(&"x_floor") && header.contains(&"x_bare"));
    let body: Vec<&str> = lines.collect();
    assert_eq!(body.len(), all["outcomes"].as_array().unwrap().len());
    for svg in ["latency.svg", "throughput.svg"] {
        let s = file(svg);
        assert!(
            s.trim_start().starts_with("<svg") && s.trim_end().ends_with("</svg>"),
            "{svg} is not an SVG document"
        );
        assert!(
            s.contains("<polyline") || s.contains("<circle") || s.contains("<polygon"),
            "{svg} has no data"
        );
    }
    let html = file("index.html");
    assert!(html.contains("latency.svg") && html.contains("x bare"));
    assert!(html.contains("Why a ratio can be below 1.00x"));
    assert_eq!(html.matches("<figcaption>").count(), 2);
    std::fs::remove_dir_all(&out).unwrap();
}

/// `--soak N` runs every mechanism and flavour and prints what each reader counted: every
/// message received, none lost, repeated or corrupt, and RSS at the start and the end.
#[test]
fn soak_counts_every_message_of_every_mechanism() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--soak", "3000", "--deadline", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bench --soak");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            panic!("bench --soak did not finish in 300 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<&str> = stdout
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    for mech in ["pipe", "named-pipe", "msgqueue", "shm", "mmap", "socket"] {
        assert!(
            rows.iter().any(|r| r.starts_with(mech)),
            "{mech} missing:\n{stdout}"
        );
    }
    for r in &rows {
        let cols: Vec<&str> = r.split_whitespace().collect();
        // mechanism flavour wait sent received lost rep. corrupt ...
        assert_eq!((cols[3], cols[4]), ("3000", "3000"), "{r}");
        assert_eq!(&cols[5..8], ["0", "0", "0"], "{r}");
        assert!(r.ends_with("ok"), "{r}");
    }
}
