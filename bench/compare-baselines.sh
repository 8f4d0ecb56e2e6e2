#!/usr/bin/env bash
# Compares each pair with the bare loop of its kernel path, interleaved in one run, writer
# pinned to CPU 0 and reader to CPU 1. This is how the ratios in the crate READMEs are
# measured; `bench` prints the same comparison as its "x bare" column, this script gives
# the raw lines, several repetitions of each, for checking the issues' goals.
#
# Everything comes from this repository: the pairs are the release binaries, the bare
# loops are the bench's own (`bench __bare KIND MODE SIZE COUNT`, bench/src/bare/: each
# mechanism's system calls, or the copies into shared memory, with no frame, checksum or
# statistics, pinned by themselves) and the floors are `bench __floor` (cache-line and
# futex round trips, memcpy bandwidth).
#
# BASELINES=DIR also runs the C programs the Rust bare loops follow (stream_pingpong,
# pipe_bw, sock_bw, mq_bench, shm_copy, cacheline_pingpong, futex_pingpong, memcpy_bw),
# built with make and gcc from DIR's .c files, common.h and Makefile, as "C" lines.
# BIN=DIR compares other release binaries (say, a build of an earlier commit); the bare
# loops and floors still come from this tree's bench.
#   usage: bench/compare-baselines.sh [REPETITIONS]     (from the workspace root)
# The shm and mmap streams run with --capacity 4M (the programs' default, passed so that a
# BIN= build of an earlier default compares the same), and the bare shm-copy streams hold
# as many bytes of ring (--ring 4M); C's shm_copy keeps its 8 slots.
# Prints, per comparison: "ours" (the pair), "bare" (the Rust bare loop), "floor" where
# one bounds it, and "C" with BASELINES; each line p50 (pingpong) and GB/s (1e9 B/s).
# At the end, each line's median over the repetitions with its range, then the issue's goal
# ratios taken within each repetition and their median: in a VM one side of a comparison
# may run in a faster state than the other (the two vCPUs sharing a core, say), and a ratio
# of two lines minutes apart is less exposed to that than a ratio of medians.
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-3}
target=${CARGO_TARGET_DIR:-target}
rt=$(mktemp -d /tmp/ipc-study-compare.XXXXXX)
bl=
cleanup() { rm -rf "$rt" ${bl:+"$bl"}; }
trap cleanup EXIT
if [ -z "${BIN:-}" ]; then
  cargo build --release --workspace --quiet
else
  cargo build --release -p bench --quiet
fi
BENCH=$target/release/bench
B=${BIN:-$target/release}
if [ -n "${BASELINES:-}" ]; then
  if ! ls "$BASELINES"/*.c "$BASELINES"/common.h "$BASELINES"/Makefile >/dev/null 2>&1; then
    echo "BASELINES=$BASELINES: no .c files, common.h and Makefile there" >&2
    exit 2
  fi
  bl=$(mktemp -d /tmp/ipc-study-baselines.XXXXXX)
  cp "$BASELINES"/*.c "$BASELINES"/*.h "$BASELINES"/Makefile "$bl"/ && make -s -C "$bl" >/dev/null
fi
export IPC_STUDY_DIR="$rt"

line() { # what label [role]: print one JSON report, bare loop or floor from stdin
  python3 -c "
import sys, json
for l in sys.stdin:
    l = l.strip()
    if not l.startswith('{'): continue
    r = json.loads(l)
    if '${3:-}' and r.get('role') != '${3:-}': continue
    lat = r.get('latency_ns') or {}
    bps = r.get('bytes_per_s') or 0
    mps = r.get('msgs_per_s')
    print('  %-5s %-44s p50 %8s ns  %7.3f GB/s  %9s msg/s' % ('$1', '$2', lat.get('p50', '-'), bps / 1e9, '%.0f' % mps if mps else '-'))
"; }
report() { line ours "$2" "$1"; }
pair() { # label writer reader "writer-only flags" common flags...
  local label=$1 w=$2 r=$3 wonly=$4; shift 4
  taskset -c 1 $B/"$r" "$@" --json -q > "$rt/r.json" &
  local rp=$!
  # shellcheck disable=SC2086
  taskset -c 0 $B/"$w" "$@" $wonly --json -q > "$rt/w.json"
  wait $rp
  if [[ $* == *pingpong* ]]; then report writer "$label" < "$rt/w.json"; else report reader "$label" < "$rt/r.json"; fi
}
spawned() { # label: pipe-writer --spawn with the reader pinned to CPU 1
  local label=$1; shift
  taskset -c 0 $B/pipe-writer --spawn "$@" --json -q --reader-exe /usr/bin/taskset \
    --reader-arg=-c --reader-arg=1 --reader-arg "$(realpath "$B")/pipe-reader" > "$rt/p.json"
  if [[ $* == *pingpong* ]]; then report writer "$label" < "$rt/p.json"; else report reader "$label" < "$rt/p.json"; fi
}
bare() { # KIND MODE SIZE COUNT [flags]: the Rust bare loop, pinned to CPUs 0 and 1
  "$BENCH" __bare "$@" --pin 0,1 | line bare "$*"
}
floor() { # NAME ARGS...: a floor of bench, pinned to CPUs 0 and 1 (memcpy: CPU 0)
  "$BENCH" __floor "$@" | line floor "$*"
}
c() { # PROGRAM ARGS...: the C program's last line, with BASELINES only
  if [ -n "$bl" ]; then echo "  C     $* : $("$bl"/"$@" | tail -1)"; fi
}

for rep in $(seq "$reps"); do
  echo "== repetition $rep ($(date +%T), load $(cut -d' ' -f1 /proc/loadavg))"
  bare pipe pingpong 64 50000
  c stream_pingpong pipe 64 50000
  spawned "pipe pingpong 64 B" --mode pingpong --count 50000
  bare fifo pingpong 64 50000
  pair "fifo pingpong 64 B" named-pipe-writer named-pipe-reader "" --name cmp-f1 --mode pingpong --count 50000
  bare pipe stream 64K 40000 --pipe-size 1M
  c pipe_bw rw 64 2048
  spawned "pipe stream 64 KiB (1 MiB pipe)" --mode stream --count 40000 --size 64K --pipe-size 1M
  bare pipe-vmsplice stream 64K 40000 --pipe-size 1M
  c pipe_bw vms_read 64 2048
  spawned "pipe --splice stream 64 KiB (1 MiB pipe)" --mode stream --count 40000 --size 64K --pipe-size 1M --splice
  bare fifo stream 64K 40000 --pipe-size 1M
  pair "fifo stream 64 KiB (1 MiB FIFO)" named-pipe-writer named-pipe-reader "--pipe-size 1M" --name cmp-f2 --mode stream --count 40000 --size 64K
  bare unix pingpong 64 50000
  c stream_pingpong unix 64 50000
  pair "unix pingpong 64 B" socket-writer socket-reader "" --unix "$rt/u1.sock" --mode pingpong --count 50000
  bare tcp pingpong 64 50000
  c stream_pingpong tcp 64 50000
  pair "tcp pingpong 64 B" socket-writer socket-reader "" --tcp 127.0.0.1:47561 --mode pingpong --count 50000
  bare unix stream 64K 40000
  c sock_bw unix 64 2048
  pair "unix stream 64 KiB" socket-writer socket-reader "" --unix "$rt/u2.sock" --mode stream --count 40000 --size 64K
  bare tcp stream 64K 40000
  c sock_bw tcp 64 2048
  pair "tcp stream 64 KiB" socket-writer socket-reader "" --tcp 127.0.0.1:47562 --mode stream --count 40000 --size 64K
  bare sysv-mq pingpong 64 50000
  c mq_bench sysv pingpong 64 50000
  pair "mq sysv pingpong 64 B" msgqueue-writer msgqueue-reader "" --name cmp-m1 --mode pingpong --count 50000
  bare posix-mq pingpong 64 50000
  c mq_bench posix pingpong 64 50000
  pair "mq posix pingpong 64 B" msgqueue-writer msgqueue-reader "" --name cmp-m2 --posix --mode pingpong --count 50000
  bare sysv-mq stream 8152 200000
  c mq_bench sysv stream 8192 200000
  pair "mq sysv stream 8152 B" msgqueue-writer msgqueue-reader "" --name cmp-m3 --mode stream --count 200000 --size 8152
  bare posix-mq stream 8152 200000
  c mq_bench posix stream 8192 200000
  pair "mq posix stream 8152 B" msgqueue-writer msgqueue-reader "" --name cmp-m4 --posix --mode stream --count 200000 --size 8152
  floor cacheline 500000 0 1
  c cacheline_pingpong 500000
  bare shm-copy pingpong 64 500000
  c shm_copy pingpong 64 500000
  pair "shm spin pingpong 64 B" shm-writer shm-reader "" --name cmp-s1 --wait spin --mode pingpong --count 500000
  pair "mmap tmpfs spin pingpong 64 B" mmap-writer mmap-reader "" --path "/dev/shm/ipc-study-$(id -u)-cmp1.map" --wait spin --mode pingpong --count 500000
  floor futex 50000 0 1
  c futex_pingpong 50000
  bare shm-copy pingpong 64 50000 --wait block
  pair "shm block pingpong 64 B" shm-writer shm-reader "" --name cmp-s2 --wait block --mode pingpong --count 50000
  pair "mmap tmpfs block pingpong 64 B" mmap-writer mmap-reader "" --path "/dev/shm/ipc-study-$(id -u)-cmp2.map" --wait block --mode pingpong --count 50000
  floor memcpy 65536 1073741824 0
  if [ -n "$bl" ]; then echo "  C     memcpy_bw 5 : $(taskset -c 0 "$bl"/memcpy_bw 5 | grep 64KiB)"; fi
  bare shm-copy stream 64K 200000 --ring 4M
  c shm_copy stream 64K 200000
  pair "shm spin stream 64 KiB" shm-writer shm-reader "" --name cmp-s3 --wait spin --capacity 4M --mode stream --count 200000 --size 64K
  pair "mmap tmpfs adaptive stream 64 KiB" mmap-writer mmap-reader "" --path "/dev/shm/ipc-study-$(id -u)-cmp3.map" --capacity 4M --mode stream --count 200000 --size 64K
  pair "shm adaptive stream 64 KiB" shm-writer shm-reader "" --name cmp-s4 --capacity 4M --mode stream --count 200000 --size 64K
  # Copying and zero-copy rings against the bare copy loop, by size (spin waits).
  for size in 4K 64K 1M; do
    n=$([ "$size" = 1M ] && echo 2000 || echo 20000)
    bare shm-copy pingpong "$size" "$n"
    c shm_copy pingpong "$size" "$n"
    pair "shm spin pingpong $size" shm-writer shm-reader "" --name cmp-z1 --wait spin --capacity 4M --mode pingpong --count "$n" --size "$size"
    pair "shm spin pingpong $size --zero-copy" shm-writer shm-reader "--zero-copy" --name cmp-z2 --wait spin --capacity 4M --mode pingpong --count "$n" --size "$size"
    pair "shm spin pingpong $size --zero-copy --verify seq" shm-writer shm-reader "--zero-copy --verify seq" --name cmp-z3 --wait spin --capacity 4M --mode pingpong --count "$n" --size "$size"
  done
  pair "shm spin pingpong 64 B --zero-copy --verify seq" shm-writer shm-reader "--zero-copy --verify seq" --name cmp-z4 --wait spin --mode pingpong --count 500000
  for size in 4K 1M; do
    n=$([ "$size" = 1M ] && echo 4000 || echo 200000)
    bare shm-copy stream "$size" "$n" --ring 4M
    c shm_copy stream "$size" "$n"
    pair "shm spin stream $size" shm-writer shm-reader "" --name cmp-z5 --wait spin --capacity 4M --mode stream --count "$n" --size "$size"
  done
  pair "shm spin stream 64 KiB --zero-copy" shm-writer shm-reader "--zero-copy" --name cmp-z6 --wait spin --capacity 4M --mode stream --count 200000 --size 64K
  bare shm-copy stream 64 2000000 --ring 4M
  c shm_copy stream 64 2000000
  pair "shm spin stream 64 B" shm-writer shm-reader "" --name cmp-z7 --wait spin --capacity 4M --mode stream --count 2000000 --size 64
done | tee "$rt/lines.txt"

echo "== medians of $reps repetitions [min-max]: p50 ns for round trips, GB/s for streams and memcpy"
# Then the goals of the performance issue, as ratios taken within each repetition (the two
# lines of a ratio ran minutes apart at most, the medians may pair different VM states):
# ours against each reference present (the Rust bare loop; the C program with BASELINES).
python3 - "$rt/lines.txt" <<'EOF'
import re, statistics, sys
rows, reps = {}, []
for l in open(sys.argv[1]):
    if l.startswith("== repetition"):
        reps.append({})
        continue
    m = re.match(r"\s+(ours|bare|floor|C)\s+(.*)", l.rstrip())
    if not m:
        continue
    kind, rest = m.groups()
    if kind == "C":
        name, _, out = rest.partition(" : ")
        p50 = re.search(r"p50 ([0-9.]+)", out)
        gbs = re.search(r"([0-9.]+) GB/s", out)
        if name.startswith("memcpy_bw"):
            value, unit = float(out.split()[1]), "GB/s"
        elif p50:
            value, unit = float(p50.group(1)), "ns"
        elif gbs:
            value, unit = float(gbs.group(1)), "GB/s"
        else:
            continue
    else:
        f = re.match(r"(.*?)\s+p50\s+(\S+) ns\s+([0-9.]+) GB/s", rest)
        if not f:
            continue
        name = f.group(1)
        if f.group(2) != "-" and "stream" not in name:
            value, unit = float(f.group(2)), "ns"
        else:
            value, unit = float(f.group(3)), "GB/s"
    rows.setdefault((kind, name.strip(), unit), []).append(value)
    if reps and value:
        reps[-1][(kind, name.strip())] = value
for (kind, name, unit), v in rows.items():
    print("  %-5s %-52s %10.6g %-4s [%.6g-%.6g]" % (kind, name, statistics.median(v), unit, min(v), max(v)))
print("== per repetition: ours / reference, and the median of those ratios (goal)")
B, C = "bare", "C"
goals = [  # label, ours, references (kind, name), goal
    ("pipe pingpong 64 B", "pipe pingpong 64 B", [(B, "pipe pingpong 64 50000"), (C, "stream_pingpong pipe 64 50000")], "<= 1.05"),
    ("FIFO pingpong 64 B", "fifo pingpong 64 B", [(B, "fifo pingpong 64 50000")], "<= 1.05"),
    ("Unix pingpong 64 B", "unix pingpong 64 B", [(B, "unix pingpong 64 50000"), (C, "stream_pingpong unix 64 50000")], "<= 1.05"),
    ("TCP pingpong 64 B", "tcp pingpong 64 B", [(B, "tcp pingpong 64 50000"), (C, "stream_pingpong tcp 64 50000")], "<= 1.05"),
    ("System V queue pingpong 64 B", "mq sysv pingpong 64 B", [(B, "sysv-mq pingpong 64 50000"), (C, "mq_bench sysv pingpong 64 50000")], "<= 1.05"),
    ("POSIX queue pingpong 64 B", "mq posix pingpong 64 B", [(B, "posix-mq pingpong 64 50000"), (C, "mq_bench posix pingpong 64 50000")], "<= 1.05"),
    ("shm block pingpong 64 B", "shm block pingpong 64 B", [(B, "shm-copy pingpong 64 50000 --wait block")], "<= 1.05"),
    ("System V queue stream 8152 B", "mq sysv stream 8152 B", [(B, "sysv-mq stream 8152 200000")], ">= 1.0"),
    ("POSIX queue stream 8152 B", "mq posix stream 8152 B", [(B, "posix-mq stream 8152 200000")], ">= 1.0"),
    ("TCP stream 64 KiB", "tcp stream 64 KiB", [(B, "tcp stream 64K 40000")], ">= 1.0"),
    ("pipe --splice stream / write-read", "pipe --splice stream 64 KiB (1 MiB pipe)", [("ours", "pipe stream 64 KiB (1 MiB pipe)")], ">= 2"),
    ("pipe --splice stream / vmsplice loop", "pipe --splice stream 64 KiB (1 MiB pipe)", [(B, "pipe-vmsplice stream 64K 40000 --pipe-size 1M"), (C, "pipe_bw vms_read 64 2048")], ">= 0.8"),
    ("shm spin pingpong 64 B / cache-line floor", "shm spin pingpong 64 B", [("floor", "cacheline 500000 0 1"), (C, "cacheline_pingpong 500000")], "<= 1.5"),
    ("shm spin pingpong 4 KiB", "shm spin pingpong 4K", [(B, "shm-copy pingpong 4K 20000"), (C, "shm_copy pingpong 4K 20000")], "<= 1.5"),
    ("shm spin pingpong 64 KiB", "shm spin pingpong 64K", [(B, "shm-copy pingpong 64K 20000"), (C, "shm_copy pingpong 64K 20000")], "<= 1.5"),
    ("shm spin pingpong 1 MiB", "shm spin pingpong 1M", [(B, "shm-copy pingpong 1M 2000"), (C, "shm_copy pingpong 1M 2000")], "<= 1.5"),
    ("shm spin stream 64 B", "shm spin stream 64 B", [(B, "shm-copy stream 64 2000000 --ring 4M"), (C, "shm_copy stream 64 2000000")], ">= 0.8"),
    ("shm spin stream 4 KiB", "shm spin stream 4K", [(B, "shm-copy stream 4K 200000 --ring 4M"), (C, "shm_copy stream 4K 200000")], ">= 0.8"),
    ("shm spin stream 64 KiB", "shm spin stream 64 KiB", [(B, "shm-copy stream 64K 200000 --ring 4M"), (C, "shm_copy stream 64K 200000")], ">= 0.8"),
    ("shm spin stream 1 MiB", "shm spin stream 1M", [(B, "shm-copy stream 1M 4000 --ring 4M"), (C, "shm_copy stream 1M 4000")], ">= 0.8"),
    ("zero-copy --verify seq pingpong 64 KiB / its 64 B", "shm spin pingpong 64K --zero-copy --verify seq", [("ours", "shm spin pingpong 64 B --zero-copy --verify seq")], "<= 1.5"),
    ("zero-copy --verify seq pingpong 1 MiB / its 64 B", "shm spin pingpong 1M --zero-copy --verify seq", [("ours", "shm spin pingpong 64 B --zero-copy --verify seq")], "<= 1.5"),
    ("zero-copy pingpong 64 KiB, verified", "shm spin pingpong 64K --zero-copy", [(B, "shm-copy pingpong 64K 20000"), (C, "shm_copy pingpong 64K 20000")], "<= 1.0"),
    ("zero-copy stream 64 KiB, verified", "shm spin stream 64 KiB --zero-copy", [(B, "shm-copy stream 64K 200000 --ring 4M"), (C, "shm_copy stream 64K 200000")], ">= 1.0"),
]
for label, ours, refs, goal in goals:
    for ref in refs:
        ratios = [r[("ours", ours)] / r[ref] for r in reps if ("ours", ours) in r and ref in r]
        if not ratios:
            continue
        each = " ".join("%.2f" % x for x in ratios)
        print("  %-50s vs %-5s %s  (median %.2fx, goal %s)" % (label, ref[0], each, statistics.median(ratios), goal))
EOF
