#!/usr/bin/env bash
# Ingest at fleet scale (issue 7): the real `vigil serve` (release build) on 127.0.0.1 against vigil-loadgen's
# simulated agents, each on its own real SSH connection with its own key and envelope secret, plus the SQLite
# measurements it is compared with, all in one run on this machine. Prints the table BENCHMARKS.md quotes
# ("Ingest at fleet scale").
#
# Usage: bench/run-ingest.sh
# Env:   DURATION=S     measured seconds per throughput run (default 20; each run also warms up for 5 s)
#        IDLE_MAX=N     largest idle fleet (default 10000)
#        PROFILE=0      skip the perf profile of the server (software cpu-clock sampling; on by default when perf works)
#        HISTORY=0      skip the `vigil status` history databases (they take a few minutes and ~6 GB)
#        KEEP=1         keep the temporary directory (logs, JSON results) and print its path
#        BUILD=0        do not run cargo build first
#        NICE=N         niceness of serve and the load generator (default -10 as root: other work on a shared machine
#                       then takes less of the two cores; the table shows the machine's busy CPU beside the server's)
# Needs: cargo, python3. Raises the open-file limit itself (each connection is one fd on each side).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${DURATION:-20}"
WARMUP="${WARMUP:-5}"
IDLE_MAX="${IDLE_MAX:-10000}"
HISTORY="${HISTORY:-1}"
VIGIL="$ROOT/target/release/vigil"
LOADGEN="$ROOT/target/release/vigil-loadgen"
if [[ $(id -u) == 0 ]]; then NICE="${NICE:--10}"; else NICE="${NICE:-0}"; fi

die() { echo "run-ingest: $*" >&2; exit 1; }
log() { echo "run-ingest: $*" >&2; }

if [[ "${BUILD:-1}" != 0 ]]; then
    (cd "$ROOT" && cargo build --release -p vigil-server -p vigil-tests --bin vigil --bin vigil-loadgen) >&2
fi
[[ -x "$VIGIL" && -x "$LOADGEN" ]] || die "build first: cargo build --release -p vigil-server -p vigil-tests"
# Run copies: a rebuild of target/ during the run must not swap the binaries (or their symbols, for perf).
BIN="$(mktemp -d /tmp/vigil-ingest-bin.XXXXXX)"
cp "$VIGIL" "$LOADGEN" "$BIN/"
VIGIL="$BIN/vigil"
LOADGEN="$BIN/vigil-loadgen"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
ulimit -n 65536 2>/dev/null || true
(( $(ulimit -n) > IDLE_MAX + 100 )) || log "warning: open-file limit $(ulimit -n) is below $IDLE_MAX connections"

TMP="$(mktemp -d /tmp/vigil-ingest.XXXXXX)"
RESULTS="$TMP/results.jsonl"
SERVE_PID=""
cleanup() {
    if [[ -n "$SERVE_PID" ]]; then kill -TERM "$SERVE_PID" 2>/dev/null || true; wait "$SERVE_PID" 2>/dev/null || true; fi
    rm -rf "$BIN"
    if [[ "${KEEP:-0}" == 1 ]]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
FLEET="$TMP/fleet"
log "registering $IDLE_MAX agents (keys, secrets, clients.xml, database)"
"$LOADGEN" setup --dir "$FLEET" --agents "$IDLE_MAX" --port "$PORT" >/dev/null
cp -a "$FLEET/data" "$TMP/data.template"

# Starts a fresh `vigil serve` (empty history, every agent registered) and waits until it listens.
start_serve() {
    rm -rf "$FLEET/data" && cp -a "$TMP/data.template" "$FLEET/data"
    VIGIL_LOG=warn nice -n "$NICE" "$VIGIL" serve --clients "$FLEET/clients.xml" --jobs "$FLEET/jobs.toml" \
        >"$TMP/serve.out" 2>>"$TMP/serve.err" &
    SERVE_PID=$!
    for _ in $(seq 1 300); do
        grep -q "listening on" "$TMP/serve.out" 2>/dev/null && return 0
        kill -0 "$SERVE_PID" 2>/dev/null || die "vigil serve died: $(tail -5 "$TMP/serve.err")"
        sleep 0.1
    done
    die "vigil serve did not start"
}
stop_serve() {
    kill -TERM "$SERVE_PID" 2>/dev/null || true
    wait "$SERVE_PID" 2>/dev/null || true
    SERVE_PID=""
}
# load LABEL ARGS...: one load-generator run against a fresh server; its JSON summary goes to $RESULTS.
load() {
    local label="$1"; shift
    log "$label"
    start_serve
    local out
    out=$(nice -n "$NICE" "$LOADGEN" run --dir "$FLEET" --server-pid "$SERVE_PID" "$@" 2>>"$TMP/loadgen.err" | tail -1) \
        || die "$label: vigil-loadgen failed: $(tail -5 "$TMP/loadgen.err")"
    local db_reports
    stop_serve
    db_reports=$(python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("select count(*) from reports").fetchone()[0])' "$FLEET/data/vigil.db")
    python3 -c 'import json,sys; d=json.loads(sys.argv[2]); d["label"]=sys.argv[1]; d["db_reports"]=int(sys.argv[3]); print(json.dumps(d))' \
        "$label" "$out" "$db_reports" >>"$RESULTS"
}
# sql LABEL ARGS...: one SQLite measurement (ceiling or history) to $RESULTS.
sql() {
    local label="$1"; shift
    log "$label"
    "$LOADGEN" "$@" | python3 -c 'import json,sys; d=json.loads(sys.stdin.readline()); d["label"]=sys.argv[1]; print(json.dumps(d))' "$label" >>"$RESULTS"
}
# status_time LABEL DIR: `vigil status` wall time on a history database (first run, then the median of 5), and
# `vigil check` on the same files (the config parse every status run also pays), median of 5.
status_time() {
    local label="$1" dir="$2" times=() checks=()
    for i in 1 2 3 4 5 6; do
        local t0 t1
        t0=$(date +%s%N)
        "$VIGIL" status --clients "$dir/clients.xml" --jobs "$dir/jobs.toml" >"$TMP/status.out"
        t1=$(date +%s%N)
        times+=("$(( (t1 - t0) / 1000 ))")
    done
    for i in 1 2 3 4 5; do
        local t0 t1
        t0=$(date +%s%N)
        "$VIGIL" check --clients "$dir/clients.xml" --jobs "$dir/jobs.toml" >/dev/null
        t1=$(date +%s%N)
        checks+=("$(( (t1 - t0) / 1000 ))")
    done
    local hosts
    hosts=$(grep -c '^load-' "$TMP/status.out" || true)
    python3 -c 'import json,sys,statistics as s; t=[int(x)/1000 for x in sys.argv[3:9]]; c=[int(x)/1000 for x in sys.argv[9:]]; print(json.dumps({"label":sys.argv[1],"status_first_ms":t[0],"status_median_ms":s.median(t[1:]),"check_median_ms":s.median(c),"status_hosts":int(sys.argv[2])}))' \
        "$label" "$hosts" "${times[@]}" "${checks[@]}" >>"$RESULTS"
}

LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
RUN=(--warmup "$WARMUP" --duration "$DURATION")
# Throughput: as fast as acks allow, every agent with up to WINDOW reports awaiting their ack.
load "vitals, 100 agents, max"   --agents 100  --mode vitals --window 64 "${RUN[@]}"
load "vitals, 1000 agents, max"  --agents 1000 --mode vitals --window 16 "${RUN[@]}"
load "full, 100 agents, max"     --agents 100  --mode full   --window 16 "${RUN[@]}"
load "full, 1000 agents, max"    --agents 1000 --mode full   --window 4  "${RUN[@]}"
# Latency at a set offered rate: 1,000 agents at 10 reports/s each.
load "vitals, 1000 agents, 10000/s offered" --agents 1000 --mode vitals --rate 10000 --window 32 "${RUN[@]}"
# Where the server's time goes: perf samples (software cpu-clock, every thread) during a vitals run, by thread and
# by kind of work.
if [[ "${PROFILE:-1}" != 0 ]] && command -v perf >/dev/null && perf record -e cpu-clock -o /dev/null -- true 2>/dev/null; then
    log "profile: vitals, 1000 agents, max, perf on the server"
    start_serve
    nice -n "$NICE" "$LOADGEN" run --dir "$FLEET" --server-pid "$SERVE_PID" --agents 1000 --mode vitals --window 16 \
        --warmup 4 --duration 12 >"$TMP/profile.json" 2>>"$TMP/loadgen.err" &
    PROF_LG=$!
    sleep 8
    perf record -q -e cpu-clock -F 999 -p "$SERVE_PID" -o "$TMP/perf.data" -- sleep 8 >/dev/null 2>&1 || true
    wait "$PROF_LG" || true
    stop_serve
    perf report -i "$TMP/perf.data" --no-children --sort comm,dso,symbol -g none --stdio 2>/dev/null \
        >"$TMP/perf.txt" || true
fi

# Memory per idle connection (connected, welcomed, silent).
load "idle, 1000 agents"  --agents 1000 --mode idle --warmup 2 --duration 5
if (( IDLE_MAX > 1000 )); then
    load "idle, $IDLE_MAX agents" --agents "$IDLE_MAX" --mode idle --warmup 2 --duration 5
fi

# The SQLite ceiling of this machine, in the same run: vitals-shaped rows from 1,000 hosts interleaved, the server's
# statements and indexes, 2,500 reports (10,000 rows) per transaction; then the store's own insert path.
# The database grows to about the size the server's vitals runs leave behind (400,000 reports).
sql "raw SQLite, 1000 hosts, 10k rows/txn" ceiling --db "$TMP/ceiling.db" --hosts 1000 --reports 400000 --txn 2500
sql "raw SQLite, 1000 hosts, 4k rows/txn" ceiling --db "$TMP/ceiling.db" --hosts 1000 --reports 400000 --txn 1024
sql "raw SQLite, 1000 hosts, 40k rows/txn" ceiling --db "$TMP/ceiling.db" --hosts 1000 --reports 400000 --txn 10000
sql "store, vitals, 1024/txn" ceiling --db "$TMP/ceiling.db" --hosts 1000 --reports 400000 --txn 1024 --store vitals
sql "store, full, 1024/txn"   ceiling --db "$TMP/ceiling.db" --hosts 1000 --reports 80000 --txn 1024 --store full
rm -f "$TMP"/ceiling.db*

if [[ "$HISTORY" != 0 ]]; then
    # `vigil status` against 1,000 hosts of history. 30 days at the shipped schedule (vitals every 10 s) would be
    # ~1.2 billion rows; the 30-day database keeps the vitals/disks ratio at 1/30 of the density (every 300 s and
    # 1800 s: ~39M rows, what one day at the shipped schedule holds), and is compared with 1 day at the same density.
    sql "history 30 d" history --dir "$TMP/h30" --hosts 1000 --days 30 --vitals-s 300 --disks-s 1800
    status_time "status, 30 d" "$TMP/h30"
    rm -rf "$TMP/h30"
    sql "history 1 d" history --dir "$TMP/h1" --hosts 1000 --days 1 --vitals-s 300 --disks-s 1800
    status_time "status, 1 d" "$TMP/h1"
    rm -rf "$TMP/h1"
fi

python3 - "$RESULTS" "$(nproc)" "$(uname -r)" "$TMP/perf.txt" "$LOAD_START" "$(cut -d' ' -f1-3 /proc/loadavg)" \
    "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"\nvigil ingest benchmark at {sys.argv[7]}: {sys.argv[2]} cores, kernel {sys.argv[3]}, server and load generator on the same machine;"
      f" load average {sys.argv[5]} at the start, {sys.argv[6]} at the end\n")
print("| run | agents (connected) | acked reports/s | rows/s | ack p50 / p99 / max ms | CPU: server / loadgen / machine | server waiting for a CPU | server RSS MiB | reports in DB |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    if "acked" not in r:
        continue
    rss = f"{r['server_rss_kib']/1024:.0f}" if r.get("server_rss_kib") else "-"
    if r["mode"] == "idle":
        per = r["server_rss_kib"] / max(r["connected"], 1) if r.get("server_rss_kib") else 0
        print(f"| {r['label']} | {r['agents']} ({r['connected']}) | - | - | connect all: {r['connect_s']:.1f} s | - | - | {rss} ({per:.0f} KiB per connection, base included) | - |")
        continue
    print(f"| {r['label']} | {r['agents']} ({r['connected']}) | {r['reports_per_s']:,.0f} | {r['rows_per_s']:,.0f} | "
          f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} / {r['max_ms']:.0f} | {r['server_cpu'] or 0:.2f} / {r['loadgen_cpu']:.2f} / {r['machine_cpu']:.2f} | {r.get('server_runq_wait') or 0:.2f} | {rss} | {r['db_reports']:,} |")
print()
print("| SQLite | reports | rows | per txn (reports) | rows/s | reports/s | DB MiB |")
print("|---|---|---|---|---|---|---|")
raw = store_full = None
for r in rows:
    if "rows_per_s" in r and "acked" not in r:
        if r["label"].startswith("raw SQLite") and "10k" in r["label"]:
            raw = r["rows_per_s"]
        if r["label"].startswith("store, full"):
            store_full = r["rows_per_s"]
        print(f"| {r['label']} | {r['reports']:,} | {r['rows']:,} | {r['per_txn_reports']:,} | {r['rows_per_s']:,.0f} | {r['reports_per_s']:,.0f} | {r['db_mib']:,.0f} |")
print()
for r in rows:
    if "acked" not in r or r["mode"] == "idle" or not r["rows_per_s"]:
        continue
    us = 1e6 * (r["server_cpu"] or 0) / r["reports_per_s"]
    line = f"- {r['label']}: server CPU {us:.0f} us per report"
    ref, name = (raw, "the raw vitals ceiling") if r["mode"] == "vitals" else (store_full, "the store's full-report ceiling")
    if ref:
        line += f"; {r['rows_per_s']:,.0f} rows/s = {100*r['rows_per_s']/ref:.0f}% of {name} ({ref:,.0f} rows/s)"
    print(line)
st = [r for r in rows if "status_median_ms" in r]
if st:
    print()
    print("| vigil status | hosts shown | first run ms | median of next 5 ms | vigil check (config only), median ms |")
    print("|---|---|---|---|---|")
    for r in st:
        print(f"| {r['label']} | {r['status_hosts']} | {r['status_first_ms']:.0f} | {r['status_median_ms']:.0f} | {r.get('check_median_ms', 0):.0f} |")
for r in rows:
    if r.get("what", "").startswith("history"):
        print(f"- {r['label']}: {r['what']}: {r['reports']:,} reports, {r['rows']:,} rows, {r['db_mib']:,.0f} MiB")

# perf: share of server samples by thread and by kind of work.
import os, re
perf = sys.argv[4]
if os.path.exists(perf) and os.path.getsize(perf) > 0:
    kinds = [
        ("SQLite (btree, pager, WAL, VDBE)", r"sqlite3|pcache|^wal|pager|btree|vdbe|balance_|rusqlite"),
        ("kernel: file I/O (page cache, ext4)", r"^\[k\] .*(ext4|filemap|folio|mpage|block_|buffer|pread|pwrite|copy_page|_copy_to_iter|copy_from_iter|generic_perform_write|iomap|jbd2|xas_)"),
        ("crypto (SSH cipher/MAC, envelope AES/HMAC)", r"aws_lc|chacha|poly1305|sha2|sha256|aes|hmac|cbc|curve25519|ed25519|ghash"),
        ("malloc/free/memcpy", r"malloc|free|_int_|unlink_chunk|realloc|memmove|memcpy|memset|memcmp|consolidate"),
        ("JSON (serde)", r"serde"),
        ("russh", r"russh"),
        ("tokio runtime, channels", r"tokio|mio|futures|parking"),
        ("vigil code", r"vigil"),
        ("kernel: network, scheduling, other", r"^\[k\]"),
    ]
    by_thread, by_kind, total = {}, {}, 0.0
    for line in open(perf):
        m = re.match(r"\s*([\d.]+)%\s+(\S+(?: \S+)?)\s+(\S+)\s+(\[[.k]\] .*?)\s*$", line)
        if not m:
            continue
        pct, comm, sym = float(m.group(1)), m.group(2), m.group(4)
        thread = "ingest writer" if comm.startswith("vigil-ingest") else ("tokio workers" if "tokio" in comm else comm)
        kind = next((k for k, rx in kinds if re.search(rx, sym, re.I)), "other")
        total += pct
        by_thread[thread] = by_thread.get(thread, 0) + pct
        by_kind[(thread, kind)] = by_kind.get((thread, kind), 0) + pct
    if total:
        print()
        print("| server thread | share of samples | where (share of all samples) |")
        print("|---|---|---|")
        for t, p in sorted(by_thread.items(), key=lambda x: -x[1]):
            if p < 1:
                continue
            parts = sorted(((k, v) for (tt, k), v in by_kind.items() if tt == t), key=lambda x: -x[1])
            print(f"| {t} | {100*p/total:.0f}% | " + ", ".join(f"{k} {100*v/total:.0f}%" for k, v in parts if 100*v/total >= 1) + " |")
PY
