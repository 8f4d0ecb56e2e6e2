#!/usr/bin/env bash
# Compares each pair with the bare C loops of ../shared/baselines, interleaved in one run,
# writer pinned to CPU 0 and reader to CPU 1 (as the C programs pin themselves). This is
# how the ratios in the crate READMEs were measured. `bench` measures its own floors; this
# script is for checking the issues' goals against the C programs themselves.
#   usage: bench/compare-baselines.sh [REPETITIONS]     (from the workspace root)
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-3}
src=${BASELINES:-../shared/baselines}
bl=$(mktemp -d /tmp/ipc-study-baselines.XXXXXX)
rt=$(mktemp -d /tmp/ipc-study-compare.XXXXXX)
trap 'rm -rf "$bl" "$rt"' EXIT
cp "$src"/*.c "$src"/*.h "$src"/Makefile "$bl"/ && make -s -C "$bl" >/dev/null
# BIN=DIR compares other release binaries (say, a build of an earlier commit).
if [ -z "${BIN:-}" ]; then cargo build --release --workspace --quiet; fi
export IPC_STUDY_DIR="$rt"
B=${BIN:-target/release}

report() { # role label: print the report of that role from stdin
  python3 -c "
import sys, json
for l in sys.stdin:
    l = l.strip()
    if not l.startswith('{'): continue
    r = json.loads(l)
    if r['role'] != '$1': continue
    lat = r.get('latency_ns') or {}
    print('  ours %-34s p50 %8s ns  %7.3f GB/s  %9.0f msg/s' % ('$2', lat.get('p50', '-'), r['bytes_per_s'] / 1e9, r['msgs_per_s']))
"; }
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
c() { echo "  C    $*"; }

for rep in $(seq "$reps"); do
  echo "== repetition $rep ($(date +%T), load $(cut -d' ' -f1 /proc/loadavg))"
  c "$("$bl"/stream_pingpong pipe 64 50000 | tail -1)"
  spawned "pipe pingpong 64 B" --mode pingpong --count 50000
  pair "fifo pingpong 64 B" named-pipe-writer named-pipe-reader "" --name cmp-f1 --mode pingpong --count 50000
  c "$("$bl"/pipe_bw rw 64 2048 | tail -1)"
  spawned "pipe stream 64 KiB (1 MiB pipe)" --mode stream --count 40000 --size 64K --pipe-size 1M
  pair "fifo stream 64 KiB (1 MiB FIFO)" named-pipe-writer named-pipe-reader "--pipe-size 1M" --name cmp-f2 --mode stream --count 40000 --size 64K
  c "$("$bl"/stream_pingpong unix 64 50000 | tail -1)"
  pair "unix pingpong 64 B" socket-writer socket-reader "" --unix "$rt/u1.sock" --mode pingpong --count 50000
  c "$("$bl"/stream_pingpong tcp 64 50000 | tail -1)"
  pair "tcp pingpong 64 B" socket-writer socket-reader "" --tcp 127.0.0.1:47561 --mode pingpong --count 50000
  c "$("$bl"/sock_bw unix 64 2048 | tail -1)"
  pair "unix stream 64 KiB" socket-writer socket-reader "" --unix "$rt/u2.sock" --mode stream --count 40000 --size 64K
  c "$("$bl"/sock_bw tcp 64 2048 | tail -1)"
  pair "tcp stream 64 KiB" socket-writer socket-reader "" --tcp 127.0.0.1:47562 --mode stream --count 40000 --size 64K
  c "$("$bl"/mq_bench sysv pingpong 64 50000 | tail -1)"
  pair "mq sysv pingpong 64 B" msgqueue-writer msgqueue-reader "" --name cmp-m1 --mode pingpong --count 50000
  c "$("$bl"/mq_bench posix pingpong 64 50000 | tail -1)"
  pair "mq posix pingpong 64 B" msgqueue-writer msgqueue-reader "" --name cmp-m2 --posix --mode pingpong --count 50000
  c "$("$bl"/mq_bench sysv stream 8192 200000 | tail -1)"
  pair "mq sysv stream 8152 B" msgqueue-writer msgqueue-reader "" --name cmp-m3 --mode stream --count 200000 --size 8152
  c "$("$bl"/mq_bench posix stream 8192 200000 | tail -1)"
  pair "mq posix stream 8152 B" msgqueue-writer msgqueue-reader "" --name cmp-m4 --posix --mode stream --count 200000 --size 8152
  c "$("$bl"/cacheline_pingpong 500000 | tail -1)"
  pair "shm spin pingpong 64 B" shm-writer shm-reader "" --name cmp-s1 --wait spin --mode pingpong --count 500000
  pair "mmap tmpfs spin pingpong 64 B" mmap-writer mmap-reader "" --path "/dev/shm/ipc-study-$(id -u)-cmp1.map" --wait spin --mode pingpong --count 500000
  c "$("$bl"/futex_pingpong 50000 | tail -1)"
  pair "shm block pingpong 64 B" shm-writer shm-reader "" --name cmp-s2 --wait block --mode pingpong --count 50000
  pair "mmap tmpfs block pingpong 64 B" mmap-writer mmap-reader "" --path "/dev/shm/ipc-study-$(id -u)-cmp2.map" --wait block --mode pingpong --count 50000
  c "$(taskset -c 0 "$bl"/memcpy_bw 5 | grep 64KiB)"
  pair "shm spin stream 64 KiB" shm-writer shm-reader "" --name cmp-s3 --wait spin --mode stream --count 200000 --size 64K
  pair "mmap tmpfs adaptive stream 64 KiB" mmap-writer mmap-reader "" --path "/dev/shm/ipc-study-$(id -u)-cmp3.map" --mode stream --count 200000 --size 64K
  pair "shm adaptive stream 64 KiB" shm-writer shm-reader "" --name cmp-s4 --mode stream --count 200000 --size 64K
done
