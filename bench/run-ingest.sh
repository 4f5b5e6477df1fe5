#!/usr/bin/env bash
# Ingest at fleet scale (issue 7): the real `vigil serve` (release build) on 127.0.0.1 against vigil-loadgen's
# simulated agents, each on its own real SSH connection with its own key and envelope secret, plus the SQLite
# measurements it is compared with, all in one run on this machine. Prints the table BENCHMARKS.md quotes
# ("Ingest at fleet scale"). With ENGINES="sqlite postgres" the same load runs go, one engine after the other, into a
# real PostgreSQL too (issue 17; BENCHMARKS.md "PostgreSQL: ingest beside SQLite").
#
# Usage: bench/run-ingest.sh
# Env:   DURATION=S     measured seconds per throughput run (default 20; each run also warms up for 5 s)
#        IDLE_MAX=N     largest idle fleet (default 10000)
#        PROFILE=0      skip the perf profile of the server (software cpu-clock sampling; on by default when perf works)
#        PROFILE_ENGINE=E  which engine's run the server is profiled in (default sqlite; e.g. postgres)
#        HISTORY=0      skip the `vigil status` history databases (they take a few minutes and ~6 GB)
#        KEEP=1         keep the temporary directory (logs, JSON results) and print its path
#        BUILD=0        do not run cargo build first
#        ENGINES=LIST   which stores the load runs go into, in order (default "sqlite"): sqlite, postgres (a durable
#                       cluster: fsync, synchronous_commit, full_page_writes on, the other settings PostgreSQL's
#                       defaults), postgres-async (the same with synchronous_commit=off). Each PostgreSQL engine gets
#                       its own cluster from `vigil-loadgen postgres` (vigil-testkit: initdb + postgres on a free
#                       loopback port, in /tmp, stopped by PID at the end) and every run a fresh database.
#        PG_PROFILE=0   skip the PostgreSQL profile (pg_stat_statements, WAL statistics, wait events and perf -a
#                       during one vitals run on a separate cluster); on by default when ENGINES has postgres
#        CEILING=0      skip the raw SQLite ceiling and store measurements
#        PG_TEMPLATE_SQL=SQL  run on each PostgreSQL fleet's template database after its setup (A/B of a schema
#                       change with the same binary, e.g. dropping an index)
#        ONLY=REGEX     run only the load runs whose label matches (e.g. ONLY='vitals, 1000 agents, max')
#        ALERT_RULES=XML alert rules every host gets (clients.xml <defaults>), e.g. '<alert type="cpu" limit="95"/>'
#        NICE=N         niceness of serve and the load generator (default -10 as root: other work on a shared machine
#                       then takes less of the two cores; the table shows the machine's busy CPU beside the server's)
# Needs: cargo, python3; psql, initdb and postgres (Debian postgresql) for the PostgreSQL engines. Raises the open-file limit itself (each connection is one fd on each side).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${DURATION:-20}"
WARMUP="${WARMUP:-5}"
IDLE_MAX="${IDLE_MAX:-10000}"
HISTORY="${HISTORY:-1}"
ENGINES="${ENGINES:-sqlite}"
VIGIL="${VIGIL:-$ROOT/target/release/vigil}"
LOADGEN="${LOADGEN:-$ROOT/target/release/vigil-loadgen}"
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
PG_HELPER=""   # pid of `vigil-loadgen postgres`, which holds the cluster while its stdin (fd 8, a fifo) is open
PG_PID=""      # the postmaster
PG_BASE=""     # postgres://vigil@127.0.0.1:PORT
cleanup() {
    if [[ -n "$SERVE_PID" ]]; then kill -TERM "$SERVE_PID" 2>/dev/null || true; wait "$SERVE_PID" 2>/dev/null || true; fi
    pg_stop
    rm -rf "$BIN"
    if [[ "${KEEP:-0}" == 1 ]]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

# pg_start SETTINGS: a durable PostgreSQL cluster (`vigil-loadgen postgres`, settings `name=value,...` on top of
# fsync/synchronous_commit/full_page_writes on); sets PG_HELPER, PG_PID, PG_BASE.
pg_start() {
    rm -f "$TMP/pg.in" && mkfifo "$TMP/pg.in"
    "$LOADGEN" postgres --settings "$1" <"$TMP/pg.in" >"$TMP/pg.out" 2>>"$TMP/pg.err" &
    PG_HELPER=$!
    # Every process started from here on inherits fd 8; serve (the long-lived one) is started with it closed.
    exec 8>"$TMP/pg.in"
    for _ in $(seq 1 1200); do
        if grep -q '^READY ' "$TMP/pg.out" 2>/dev/null; then
            local url dir
            read -r _ url PG_PID dir < <(grep '^READY ' "$TMP/pg.out")
            PG_BASE="${url%/postgres}"
            log "PostgreSQL $(pg_sql postgres 'SHOW server_version') on ${PG_BASE#*@}, pid $PG_PID, $dir: fsync $(pg_sql postgres 'SHOW fsync'), synchronous_commit $(pg_sql postgres 'SHOW synchronous_commit'), shared_buffers $(pg_sql postgres 'SHOW shared_buffers')"
            return 0
        fi
        kill -0 "$PG_HELPER" 2>/dev/null || die "PostgreSQL did not start: $(tail -5 "$TMP/pg.err")"
        sleep 0.1
    done
    die "PostgreSQL did not start in 120 s"
}
# Closing its stdin makes the helper stop the cluster by PID and remove its directory.
pg_stop() {
    [[ -n "$PG_HELPER" ]] || return 0
    exec 8>&-
    wait "$PG_HELPER" 2>/dev/null || log "vigil-loadgen postgres: $(tail -3 "$TMP/pg.err" 2>/dev/null)"
    PG_HELPER="" PG_PID="" PG_BASE=""
}
# pg_sql DB SQL: one statement through psql over loopback TCP (the cluster trusts 127.0.0.1), unaligned output.
pg_sql() {
    psql -X -q -v ON_ERROR_STOP=1 -At "$PG_BASE/$1" -c "$2"
}

# fleet_setup ENGINE: registers IDLE_MAX agents into ENGINE's database; FLEET is that fleet's directory.
fleet_setup() {
    FLEET="$TMP/fleet-$1"
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    log "registering $IDLE_MAX agents (keys, secrets, clients.xml, database) for $1"
    if [[ "$1" == sqlite ]]; then
        "$LOADGEN" setup --dir "$FLEET" --agents "$IDLE_MAX" --port "$PORT" >/dev/null
    else
        # Registered into `vigil`, which then becomes the template each run's fresh `vigil` is copied from.
        pg_sql postgres "CREATE DATABASE vigil"
        "$LOADGEN" setup --dir "$FLEET" --agents "$IDLE_MAX" --port "$PORT" --database "$PG_BASE/vigil" >/dev/null
        [[ -n "${PG_TEMPLATE_SQL:-}" ]] && pg_sql vigil "$PG_TEMPLATE_SQL"
        pg_sql postgres "ALTER DATABASE vigil RENAME TO fleet"
    fi
    if [[ -n "${ALERT_RULES:-}" ]]; then
        # Every host gets these alert rules (clients.xml <defaults>), evaluated in each report's transaction.
        python3 - "$FLEET/clients.xml" "$ALERT_RULES" <<'PY'
import sys
p, rules = sys.argv[1], sys.argv[2]
s = open(p).read().replace("<clients>", "<clients>\n  <defaults>" + rules + "</defaults>", 1)
open(p, "w").write(s)
PY
    fi
    rm -rf "$TMP/data.template" && cp -a "$FLEET/data" "$TMP/data.template"
}

# Starts a fresh `vigil serve` (empty history, every agent registered) and waits until it listens.
start_serve() {
    rm -rf "$FLEET/data" && cp -a "$TMP/data.template" "$FLEET/data"
    if [[ -n "$PG_BASE" ]]; then
        pg_sql postgres "DROP DATABASE IF EXISTS vigil WITH (FORCE)"
        pg_sql postgres "CREATE DATABASE vigil TEMPLATE fleet"
        pg_sql vigil "CHECKPOINT"
    fi
    VIGIL_LOG=warn nice -n "$NICE" "$VIGIL" serve --clients "$FLEET/clients.xml" --jobs "$FLEET/jobs.toml" \
        >"$TMP/serve.out" 2>>"$TMP/serve.err" 8>&- &
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
    if [[ -n "${ONLY:-}" && ! "$label" =~ $ONLY ]]; then return 0; fi
    label="$LABEL_PREFIX$label"
    log "$label (load average $(cut -d' ' -f1 /proc/loadavg))"
    start_serve
    local out load0
    load0="$(cut -d' ' -f1 /proc/loadavg)"
    local db=()
    [[ -n "$PG_PID" ]] && db=(--db-pid "$PG_PID")
    out=$(nice -n "$NICE" "$LOADGEN" run --dir "$FLEET" --server-pid "$SERVE_PID" "${db[@]}" "$@" 2>>"$TMP/loadgen.err" | tail -1) \
        || die "$label: vigil-loadgen failed: $(tail -5 "$TMP/loadgen.err")"
    local db_reports
    stop_serve
    if [[ -n "$PG_BASE" ]]; then
        db_reports=$(pg_sql vigil "select count(*) from reports")
    else
        db_reports=$(python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("select count(*) from reports").fetchone()[0])' "$FLEET/data/vigil.db")
    fi
    python3 -c 'import json,sys; d=json.loads(sys.argv[2]); d["label"]=sys.argv[1]; d["db_reports"]=int(sys.argv[3]); d["load1"]=sys.argv[4]; print(json.dumps(d))' \
        "$label" "$out" "$db_reports" "$load0 $(cut -d' ' -f1 /proc/loadavg)" >>"$RESULTS"
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
LABEL_PREFIX=""

# The load runs of one engine, on its fleet.
load_runs() {
    # Throughput: as fast as acks allow, every agent with up to WINDOW reports awaiting their ack.
    load "vitals, 100 agents, max"   --agents 100  --mode vitals --window 64 "${RUN[@]}"
    load "vitals, 1000 agents, max"  --agents 1000 --mode vitals --window 16 "${RUN[@]}"
    load "full, 100 agents, max"     --agents 100  --mode full   --window 16 "${RUN[@]}"
    load "full, 1000 agents, max"    --agents 1000 --mode full   --window 4  "${RUN[@]}"
    # Latency at a set offered rate: 1,000 agents at 10 reports/s each.
    load "vitals, 1000 agents, 10000/s offered" --agents 1000 --mode vitals --rate 10000 --window 32 "${RUN[@]}"
    # Memory per idle connection (connected, welcomed, silent).
    load "idle, 1000 agents"  --agents 1000 --mode idle --warmup 2 --duration 5
    if (( IDLE_MAX > 1000 )); then
        load "idle, $IDLE_MAX agents" --agents "$IDLE_MAX" --mode idle --warmup 2 --duration 5
    fi
}

# Where the server's time goes: perf samples (software cpu-clock, every thread) during a vitals run, by thread and
# by kind of work.
serve_profile() {
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
}

# Where PostgreSQL's time goes, on a cluster of its own with pg_stat_statements loaded (so that the measured runs
# above carry no extension): one vitals run with 1,000 agents as fast as acks allow; statements by total execution
# time, WAL statistics (track_wal_io_timing), the backends' wait events sampled every 0.4 s, and perf -a (the whole
# machine, software cpu-clock) by process and symbol. Written to $TMP/pg-profile.txt.
pg_profile() {
    log "PostgreSQL profile: vitals, 1000 agents, max, pg_stat_statements, wait events, perf -a"
    pg_start "shared_preload_libraries=pg_stat_statements,pg_stat_statements.track=all,track_io_timing=on,track_wal_io_timing=on"
    fleet_setup postgres
    start_serve
    pg_sql vigil "CREATE EXTENSION pg_stat_statements"
    nice -n "$NICE" "$LOADGEN" run --dir "$FLEET" --server-pid "$SERVE_PID" --db-pid "$PG_PID" --agents 1000 \
        --mode vitals --window 16 --warmup 4 --duration 16 >"$TMP/pg-profile.json" 2>>"$TMP/loadgen.err" &
    local lg=$!
    sleep 6
    pg_sql vigil "SELECT pg_stat_statements_reset(); SELECT pg_stat_reset_shared('wal')" >/dev/null
    local t0 perf_pid
    t0=$(date +%s%N)
    if command -v perf >/dev/null && perf record -e cpu-clock -o /dev/null -- true 2>/dev/null; then
        perf record -q -a -e cpu-clock -F 499 -o "$TMP/perf-pg.data" -- sleep 8 >/dev/null 2>&1 &
        perf_pid=$!
    fi
    : >"$TMP/pg-waits.txt"
    for _ in $(seq 1 20); do
        pg_sql vigil "SELECT backend_type, coalesce(wait_event_type, 'CPU'), coalesce(wait_event, '-'), coalesce(state, '-') FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND backend_type <> 'autovacuum launcher' AND backend_type <> 'logical replication launcher'" >>"$TMP/pg-waits.txt" || true
        sleep 0.4
    done
    [[ -n "${perf_pid:-}" ]] && wait "$perf_pid" || true
    local t1
    t1=$(date +%s%N)
    {
        echo "pg_stat_statements over $(( (t1 - t0) / 1000000 )) ms of the run (all statements, by total time):"
        echo
        echo "| calls | total ms | ms per call | rows | share of statement time | statement |"
        echo "|---|---|---|---|---|---|"
        pg_sql vigil "SELECT calls || ' | ' || round(total_exec_time::numeric, 0) || ' | ' || round(mean_exec_time::numeric, 3) || ' | ' || rows || ' | ' || round((100 * total_exec_time / sum(total_exec_time) OVER ())::numeric, 1) || '% | \`' || left(regexp_replace(query, '\s+', ' ', 'g'), 110) || '\`' FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'vigil') ORDER BY total_exec_time DESC LIMIT 14" | sed 's/^/| /; s/$/ |/'
        echo
        echo "WAL (pg_stat_wal over the same span):"
        pg_sql vigil "SELECT 'records ' || wal_records || ', full-page images ' || wal_fpi || ', ' || pg_size_pretty(wal_bytes) || ', buffers full ' || wal_buffers_full || ', writes ' || wal_write || ' (' || round(wal_write_time::numeric) || ' ms), syncs ' || wal_sync || ' (' || round(wal_sync_time::numeric) || ' ms)' FROM pg_stat_wal"
        pg_sql vigil "SELECT 'transactions committed ' || xact_commit || ', rolled back ' || xact_rollback FROM pg_stat_database WHERE datname = 'vigil'"
        echo
        echo "Wait events of PostgreSQL's processes, 20 samples 0.4 s apart (count: backend type | wait type | event | state):"
        sort "$TMP/pg-waits.txt" | uniq -c | sort -rn | head -20 || true
    } >"$TMP/pg-profile.txt" 2>&1
    wait "$lg" || true
    stop_serve
    # The plans of the two costliest kinds of statement, on the database the run left: the latest report of a host
    # (silence evaluation, repair), and one table's bulk insert of a batch's rows (rolled back) with its foreign-key
    # triggers.
    {
        echo
        echo "EXPLAIN ANALYZE, after the run ($(pg_sql vigil 'SELECT count(*) FROM reports') reports; autovacuum's statistics as they were):"
        echo '```'
        pg_sql vigil "EXPLAIN (ANALYZE, BUFFERS) SELECT r.received_at_ms FROM reports r JOIN hosts h ON h.id = r.host_id WHERE h.name = 'load-00500' ORDER BY r.received_at_ms DESC LIMIT 1"
        echo
        pg_sql vigil "BEGIN; EXPLAIN (ANALYZE, BUFFERS, WAL) INSERT INTO cpu (host_id, client_ip, report_id, ts, total_pct, per_core_pct, load1, load5, load15) SELECT * FROM unnest((SELECT array_agg(host_id) FROM (SELECT host_id FROM reports ORDER BY id DESC LIMIT 3000) a), (SELECT array_agg(client_ip) FROM (SELECT client_ip FROM reports ORDER BY id DESC LIMIT 3000) b), (SELECT array_agg(id) FROM (SELECT id FROM reports ORDER BY id DESC LIMIT 3000) c), (SELECT array_agg(collected_at_ms) FROM (SELECT collected_at_ms FROM reports ORDER BY id DESC LIMIT 3000) d), array_fill(12.5::float8, ARRAY[3000]), array_fill('[12.5,12.5,12.5,12.5,12.5,12.5,12.5,12.5]'::text, ARRAY[3000]), array_fill(0.5::float8, ARRAY[3000]), array_fill(0.4::float8, ARRAY[3000]), array_fill(0.3::float8, ARRAY[3000])); ROLLBACK"
        echo '```'
    } >>"$TMP/pg-profile.txt" 2>&1 || true
    pg_stop
    if [[ -f "$TMP/perf-pg.data" ]]; then
        {
            echo
            echo "perf -a, cpu-clock, 8 s (share of all samples of the machine; by process, then the top symbols of postgres):"
            perf report -i "$TMP/perf-pg.data" --no-children --sort comm -g none --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -12
            echo
            perf report -i "$TMP/perf-pg.data" --no-children --comms postgres --sort dso,symbol -g none --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -25
        } >>"$TMP/pg-profile.txt" || true
    fi
}

for engine in $ENGINES; do
    case "$engine" in
        sqlite) LABEL_PREFIX="" ;;
        postgres) pg_start ""; LABEL_PREFIX="postgres: " ;;
        postgres-async) pg_start "synchronous_commit=off"; LABEL_PREFIX="postgres, synchronous_commit=off: " ;;
        *) die "unknown engine $engine (sqlite, postgres, postgres-async)" ;;
    esac
    fleet_setup "$engine"
    load_runs
    if [[ "$engine" == "${PROFILE_ENGINE:-sqlite}" && "${PROFILE:-1}" != 0 ]] && command -v perf >/dev/null \
        && perf record -e cpu-clock -o /dev/null -- true 2>/dev/null; then
        serve_profile
    fi
    pg_stop
done
LABEL_PREFIX=""
if [[ " $ENGINES " == *" postgres"* && "${PG_PROFILE:-1}" != 0 ]]; then
    pg_profile
fi

if [[ "${CEILING:-1}" != 0 ]]; then
    # The SQLite ceiling of this machine, in the same run: vitals-shaped rows from 1,000 hosts interleaved, the
    # server's statements and indexes, 2,500 reports (10,000 rows) per transaction; then the store's own insert path.
    # The database grows to about the size the server's vitals runs leave behind (400,000 reports).
    sql "raw SQLite, 1000 hosts, 10k rows/txn" ceiling --db "$TMP/ceiling.db" --hosts 1000 --reports 400000 --txn 2500
    sql "raw SQLite, 1000 hosts, 4k rows/txn" ceiling --db "$TMP/ceiling.db" --hosts 1000 --reports 400000 --txn 1024
    sql "raw SQLite, 1000 hosts, 40k rows/txn" ceiling --db "$TMP/ceiling.db" --hosts 1000 --reports 400000 --txn 10000
    sql "store, vitals, 1024/txn" ceiling --db "$TMP/ceiling.db" --hosts 1000 --reports 400000 --txn 1024 --store vitals
    sql "store, full, 1024/txn"   ceiling --db "$TMP/ceiling.db" --hosts 1000 --reports 80000 --txn 1024 --store full
    rm -f "$TMP"/ceiling.db*
fi

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
pg = any(r.get("db_cpu") is not None for r in rows)
extra = " PostgreSQL CPU / PSS MiB | load avg (1 min) before / after |" if pg else ""
print("| run | agents (connected) | acked reports/s | rows/s | ack p50 / p99 / max ms | CPU: server / loadgen / machine | server waiting for a CPU | server RSS MiB | reports in DB |" + extra)
print("|---|---|---|---|---|---|---|---|---|" + ("---|---|" if pg else ""))
def more(r):
    if not pg:
        return ""
    cpu = f"{r['db_cpu']:.2f}" if r.get("db_cpu") is not None else "-"
    pss = f"{r['db_pss_kib']/1024:.0f}" if r.get("db_pss_kib") else "-"
    return f" {cpu} / {pss} | {r.get('load1', '-').replace(' ', ' / ')} |"
for r in rows:
    if "acked" not in r:
        continue
    rss = f"{r['server_rss_kib']/1024:.0f}" if r.get("server_rss_kib") else "-"
    if r["mode"] == "idle":
        per = r["server_rss_kib"] / max(r["connected"], 1) if r.get("server_rss_kib") else 0
        print(f"| {r['label']} | {r['agents']} ({r['connected']}) | - | - | connect all: {r['connect_s']:.1f} s | - | - | {rss} ({per:.0f} KiB per connection, base included) | - |" + more(r))
        continue
    print(f"| {r['label']} | {r['agents']} ({r['connected']}) | {r['reports_per_s']:,.0f} | {r['rows_per_s']:,.0f} | "
          f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} / {r['max_ms']:.0f} | {r['server_cpu'] or 0:.2f} / {r['loadgen_cpu']:.2f} / {r['machine_cpu']:.2f} | {r.get('server_runq_wait') or 0:.2f} | {rss} | {r['db_reports']:,} |" + more(r))
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
if [[ -f "$TMP/pg-profile.txt" ]]; then
    echo
    echo "PostgreSQL profile (a separate cluster with pg_stat_statements; vitals, 1000 agents, max):"
    cat "$TMP/pg-profile.txt"
    [[ -f "$TMP/pg-profile.json" ]] && echo && echo "that run: $(tail -1 "$TMP/pg-profile.json")"
fi
