#!/usr/bin/env bash
# Agent footprint benchmark (issue 4 item 7): runs the real vigil-agent against a real `vigil serve` on loopback with
# the shipped jobs.toml's jobs, and in the same run Debian's prometheus-node-exporter (scraped every 15 s) and
# collectd (Debian's default config, 10 s interval) as the baseline. At the end it samples each process's RSS
# (VmRSS, VmHWM, RssAnon, RssFile from /proc/PID/status) and CPU seconds (utime+stime from /proc/PID/stat), prints one
# table, the agent's smaps_rollup, and the number of reports the server stored.
#
# Usage: bench/agent_footprint.sh [DURATION_S]     (default 60; also DURATION=...)
# Env:   VIGIL=path to vigil (default target/release/vigil), AGENT=path to vigil-agent (default target/agent/vigil-agent),
#        KEEP=1 keeps the temp dir (logs, database) and prints its path.
# Build first: cargo build --profile agent -p vigil-agent && cargo build --release -p vigil-server
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${1:-${DURATION:-60}}"
VIGIL="${VIGIL:-$ROOT/target/release/vigil}"
AGENT="${AGENT:-$ROOT/target/agent/vigil-agent}"
NODE_EXPORTER=/usr/bin/prometheus-node-exporter
COLLECTD=/usr/sbin/collectd
SCRAPE_EVERY=15
# Warm-up before the "steady" CPU baseline is taken: lets every process finish its start-up work.
WARMUP=5

die() { echo "agent_footprint: $*" >&2; exit 1; }
[[ "$DURATION" =~ ^[0-9]+$ ]] && (( DURATION > WARMUP )) || die "duration must be an integer > $WARMUP s"
[[ -x "$VIGIL" ]] || die "$VIGIL missing: cargo build --release -p vigil-server"
[[ -x "$AGENT" ]] || die "$AGENT missing: cargo build --profile agent -p vigil-agent"
for tool in curl sqlite3 python3; do command -v "$tool" >/dev/null || die "$tool is needed"; done
if [[ ! -x "$NODE_EXPORTER" || ! -x "$COLLECTD" || ! -f /etc/collectd/collectd.conf ]]; then
    echo "installing prometheus-node-exporter and collectd (Debian packages)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus-node-exporter collectd \
        >/dev/null || die "apt-get install failed"
fi

TMP="$(mktemp -d /tmp/vigil-footprint.XXXXXX)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ "${KEEP:-0}" == 1 ]]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- vigil serve with the shipped jobs, only the listen ports and data_dir changed -----------------------------
VIGIL_PORT="$(free_port)"
WEB_PORT="$(free_port)"
# Each section's own `listen`: [server]'s (the endpoint) and [web]'s (the dashboard) get different ports.
awk -v vp="$VIGIL_PORT" -v wp="$WEB_PORT" -v dd="$TMP/data" '
    /^\[/ { section = $0 }
    /^listen = / { print "listen = \"127.0.0.1:" (section == "[web]" ? wp : vp) "\""; next }
    /^data_dir = / { print "data_dir = \"" dd "\""; next }
    { print }' "$ROOT/jobs.toml" >"$TMP/jobs.toml"
grep -q "^listen = \"127.0.0.1:$VIGIL_PORT\"" "$TMP/jobs.toml" || die "could not set listen in jobs.toml"
grep -q "^data_dir = \"$TMP/data\"" "$TMP/jobs.toml" || die "could not set data_dir in jobs.toml"
cat >"$TMP/clients.xml" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<clients>
  <client name="bench" ip="127.0.0.1" username="bench"/>
</clients>
EOF
V=("$VIGIL" --clients "$TMP/clients.xml" --jobs "$TMP/jobs.toml")
"${V[@]}" check >"$TMP/check.log" 2>&1 || { cat "$TMP/check.log" >&2; die "vigil check failed"; }
# Enroll before serve starts, so the agent is in the allow-list the server loads.
"${V[@]}" enroll bench --dir "$TMP/agent" >"$TMP/enroll.log" 2>&1 || { cat "$TMP/enroll.log" >&2; die "enroll failed"; }

"${V[@]}" serve >"$TMP/serve.out" 2>"$TMP/serve.err" &
SERVE_PID=$!
PIDS+=("$SERVE_PID")
for _ in $(seq 100); do
    grep -q 'listening on' "$TMP/serve.out" 2>/dev/null && break
    kill -0 "$SERVE_PID" 2>/dev/null || { cat "$TMP/serve.err" >&2; die "vigil serve exited"; }
    sleep 0.1
done
grep -q 'listening on' "$TMP/serve.out" || die "vigil serve did not start listening"

# --- node_exporter: Debian's defaults, on a free loopback port ---------------------------------------------------
NE_PORT="$(free_port)"
"$NODE_EXPORTER" --web.listen-address="127.0.0.1:$NE_PORT" >"$TMP/node_exporter.log" 2>&1 &
NE_PID=$!
PIDS+=("$NE_PID")

# --- collectd: Debian's default collectd.conf, paths moved into the temp dir, Interval 10 -------------------------
mkdir -p "$TMP/collectd/rrd"
{
    echo "Interval 10"
    echo "BaseDir \"$TMP/collectd\""
    echo "PIDFile \"$TMP/collectd/collectd.pid\""
    sed -e "s|\"/var/lib/collectd/rrd\"|\"$TMP/collectd/rrd\"|" /etc/collectd/collectd.conf
} >"$TMP/collectd.conf"
"$COLLECTD" -f -C "$TMP/collectd.conf" >"$TMP/collectd.log" 2>&1 &
CD_PID=$!
PIDS+=("$CD_PID")

# --- the agent ---------------------------------------------------------------------------------------------------
"$AGENT" --config "$TMP/agent/agent.toml" >"$TMP/agent.out" 2>"$TMP/agent.err" &
AGENT_PID=$!
PIDS+=("$AGENT_PID")
START=$(date +%s.%N)

# node_exporter is only worth measuring while something scrapes it: a Prometheus-like 15 s scrape.
(
    while :; do
        curl -s -o /dev/null "http://127.0.0.1:$NE_PORT/metrics" || true
        sleep "$SCRAPE_EVERY"
    done
) &
SCRAPER_PID=$!
PIDS+=("$SCRAPER_PID")

CLK_TCK="$(getconf CLK_TCK)"
# CPU seconds of PID (all its threads): "user sys" with `cpu_parts`, their sum with `cpu_s`. Fields are counted
# after the ")" that ends comm, which may hold spaces: 1=state ... 12=utime 13=stime, in clock ticks.
cpu_parts() {
    local stat rest
    stat="$(cat "/proc/$1/stat")"
    rest="${stat##*) }"
    # shellcheck disable=SC2086
    set -- $rest
    python3 -c "print(${12} / $CLK_TCK, ${13} / $CLK_TCK)"
}
cpu_s() { cpu_parts "$1" | awk '{ print $1 + $2 }'; }
status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
alive() { kill -0 "$1" 2>/dev/null || die "$2 (pid $1) died; logs in $TMP (rerun with KEEP=1)"; }

sleep "$WARMUP"
declare -A CPU0
for name_pid in "agent:$AGENT_PID" "node_exporter:$NE_PID" "collectd:$CD_PID"; do
    alive "${name_pid#*:}" "${name_pid%%:*}"
    CPU0[${name_pid%%:*}]="$(cpu_s "${name_pid#*:}")"
done
T0=$(date +%s.%N)
sleep $((DURATION - WARMUP))
END=$(date +%s.%N)

# --- sample everything at the end, before anything is stopped -----------------------------------------------------
ne_size=$(stat -c %s "$NODE_EXPORTER")
cd_size=$(stat -c %s "$COLLECTD")
# collectd's work is in plugins it dlopens: count the ones mapped into the process too.
cd_plugins=$(awk '$6 ~ /\/collectd\/.*\.so$/ { print $6 }' "/proc/$CD_PID/maps" | sort -u)
cd_plugins_size=0
for so in $cd_plugins; do cd_plugins_size=$((cd_plugins_size + $(stat -L -c %s "$so"))); done
agent_size=$(stat -c %s "$AGENT")

printf '\nAgent footprint: %s s run, %s (%s cores), %s\n' "$DURATION" \
    "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" "$(nproc)" "$(date -u +%Y-%m-%dT%H:%MZ)"
printf '%-15s %12s %9s %9s %9s %9s %7s %7s %7s %9s %12s\n' process "binary(B)" "RSS MiB" "peak MiB" "anon MiB" \
    "file MiB" "user s" "sys s" "CPU s" "CPU s/min" "steady s/min"
for row in "vigil-agent:$AGENT_PID:$agent_size" "node_exporter:$NE_PID:$ne_size" "collectd:$CD_PID:$cd_size"; do
    IFS=: read -r name pid size <<<"$row"
    alive "$pid" "$name"
    key="$name"; [[ "$name" == vigil-agent ]] && key=agent
    rss=$(status_kib "$pid" VmRSS); hwm=$(status_kib "$pid" VmHWM)
    anon=$(status_kib "$pid" RssAnon); file=$(status_kib "$pid" RssFile)
    read -r user sys <<<"$(cpu_parts "$pid")"
    python3 - "$name" "$size" "$rss" "$hwm" "$anon" "$file" "$user" "$sys" "${CPU0[$key]}" "$START" "$T0" "$END" <<'EOF'
import sys
name, size, rss, hwm, anon, file, user, sys_, cpu0, start, t0, end = sys.argv[1:]
cpu = float(user) + float(sys_)
mib = lambda kib: int(kib) / 1024
total_min = (float(end) - float(start)) / 60
steady_min = (float(end) - float(t0)) / 60
print(f"{name:<15} {int(size):>12} {mib(rss):>9.2f} {mib(hwm):>9.2f} {mib(anon):>9.2f} {mib(file):>9.2f} "
      f"{float(user):>7.2f} {float(sys_):>7.2f} {cpu:>7.2f} {cpu / total_min:>9.3f} {(cpu - float(cpu0)) / steady_min:>12.3f}")
EOF
done
echo "collectd plugins mapped: $(echo "$cd_plugins" | wc -w), $cd_plugins_size bytes (not in binary(B))"
# utime/stime tick at 1/CLK_TCK s; the scheduler's own run-time account is in ns (per thread: sum the threads).
agent_ns=$(cat /proc/"$AGENT_PID"/task/*/schedstat | awk '{ s += $1 } END { print s }')
python3 -c "import sys; ns, start, end = map(float, sys.argv[1:]); \
print(f'vigil-agent run time by schedstat (ns precision): {ns / 1e9:.3f} s, {ns / 1e9 / ((end - start) / 60):.3f} s/min')" \
    "$agent_ns" "$START" "$END"
echo "agent threads: $(status_kib "$AGENT_PID" Threads)"
echo
echo "agent /proc/PID/smaps_rollup:"
grep -E '^(Rss|Pss|Pss_Anon|Pss_File|Shared_Clean|Private_Clean|Private_Dirty|Anonymous)' \
    "/proc/$AGENT_PID/smaps_rollup" | sed 's/^/  /'
echo "agent largest mappings by Rss (KiB):"
awk '/^[0-9a-f]+-[0-9a-f]+ / { name = ($6 == "" ? "[anon]" : $6) } /^Rss:/ { rss[name] += $2 }
     END { for (n in rss) if (rss[n] > 0) printf "  %7d %s\n", rss[n], n }' "/proc/$AGENT_PID/smaps" |
    sort -rn | head -8

echo
total=$(sqlite3 "$TMP/data/vigil.db" 'SELECT count(*) FROM reports')
echo "reports stored by the server from the agent: $total"
sqlite3 -separator ' ' "$TMP/data/vigil.db" 'SELECT job, count(*) FROM reports GROUP BY job ORDER BY job' |
    sed 's/^/  /'
(( total > 0 )) || die "no reports arrived; see $TMP/agent.err and $TMP/serve.err (rerun with KEEP=1)"
