#!/usr/bin/env bash
# Reverse-channel benchmark (issue 13): serve's memory per held tunnel with N real OpenSSH sshd hosts, and report
# delivery latency through a tunnel beside a direct connection in the same run.
#
# 1. N sshd instances on 127.0.0.1 (each its own host key, root login with one bench key), a clients.xml naming them
#    (key_file, host_key pinned), `vigil enroll` for each (registers an agent), and a tunnel port recorded for each in
#    the `tunnels` table (what bootstrap records).
# 2. serve with `[server] channel = "direct"` (no tunnel held): VmRSS after SETTLE s = the baseline.
# 3. serve with the default channel (tunnel): waits until all N - 1 tunnels are `up`, then VmRSS after SETTLE s.
#    Per held tunnel = (RssAnon - baseline RssAnon) / (N - 1): heap and stacks, what each tunnel adds. VmRSS also
#    holds RssFile, the binary's pages read in, which grows once when the tunnel code path first runs, not per
#    tunnel; both are printed. Projected to 10,000 tunnels = baseline VmRSS + that code + 10,000 x per tunnel.
# 4. In the tunnel run, two real agents at a 1 s interval: host 0 dials its tunnel port (through sshd), host 1 is
#    `channel="direct"` and dials serve's listen port. Ack round trip = from the agent's send of a report to its ack
#    (sent after serve's commit), as each agent logs it at debug level (`acked seq=N rtt_us=...`); median, p90, p99
#    of each. Delivery latency = received_at_ms - collected_at_ms of their reports (same clock), for reference.
#
# Usage: bench/tunnel_memory.sh [N]     (default 50)
# Env:   VIGIL, AGENT (default target/release/vigil, target/release/vigil-agent: what BENCHMARKS.md quotes), SETTLE (default 10), LAT_S (default 30),
#        KEEP=1 keeps the temp dir.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${1:-50}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
VIGIL="${VIGIL:-$TARGET/release/vigil}"
AGENT="${AGENT:-$TARGET/release/vigil-agent}"
SETTLE="${SETTLE:-10}"
LAT_S="${LAT_S:-30}"
SSHD=/usr/sbin/sshd

die() { echo "tunnel_memory: $*" >&2; exit 1; }
[[ "$N" =~ ^[0-9]+$ ]] && (( N >= 2 )) || die "N must be an integer >= 2"
[[ -x "$VIGIL" && -x "$AGENT" ]] || die "build first: cargo build --release -p vigil-server -p vigil-agent"
for tool in sqlite3 python3 ssh-keygen; do command -v "$tool" >/dev/null || die "$tool is needed"; done
mkdir -p /run/sshd

TMP="$(mktemp -d /tmp/vigil-tunnel-bench.XXXXXX)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ "${KEEP:-0}" == 1 ]]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

free_ports() {
    python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}
# rss_kib PID FIELD: VmRSS (all resident memory), RssAnon (heap, stacks: what each tunnel adds) or RssFile (the
# binary's pages read in: the tunnel code path is paged in once, whatever the number of tunnels).
rss_kib() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
# per_kib DELTA COUNT: DELTA / COUNT with one decimal.
per_kib() { awk -v d="$1" -v n="$2" 'BEGIN {printf "%.1f", d / n}'; }

# --- N sshd hosts ---------------------------------------------------------------------------------------------------
ssh-keygen -q -t ed25519 -N '' -C bench -f "$TMP/id_bench"
# All ports from one call: ports from separate calls may coincide (each call's sockets close before the next).
read -r -a PORTS <<<"$(free_ports $((2 * N + 1)))"
SSH_PORTS=("${PORTS[@]:0:N}")
TUNNEL_PORTS=("${PORTS[@]:N:N}")
VIGIL_PORT="${PORTS[2 * N]}"
{
    echo '<?xml version="1.0" encoding="UTF-8"?>'
    echo '<clients>'
} >"$TMP/clients.xml"
for i in $(seq 0 $((N - 1))); do
    d="$TMP/h$i"
    mkdir -p "$d/keys"
    ssh-keygen -q -t ed25519 -N '' -C "h$i" -f "$d/host_ed25519"
    cp "$TMP/id_bench.pub" "$d/keys/root"
    cat >"$d/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port ${SSH_PORTS[$i]}
HostKey $d/host_ed25519
PidFile $d/sshd.pid
AuthorizedKeysFile $d/keys/%u
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
AllowTcpForwarding yes
MaxStartups 100:30:200
EOF
    "$SSHD" -D -e -f "$d/sshd_config" 2>"$d/sshd.log" &
    PIDS+=($!)
    fp="$(ssh-keygen -lf "$d/host_ed25519.pub" | awk '{print $2}')"
    # repair="off": the enrolled hosts without a running agent would otherwise fall silent and be repaired (an
    # upload of the agent binary each) while the memory is measured.
    extra=" repair=\"off\""
    [[ "$i" == 1 ]] && extra="$extra channel=\"direct\""
    echo "  <client name=\"h$i\" ip=\"127.0.0.1\" port=\"${SSH_PORTS[$i]}\" username=\"root\" key_file=\"$TMP/id_bench\" host_key=\"$fp\"$extra/>" \
        >>"$TMP/clients.xml"
done
echo '</clients>' >>"$TMP/clients.xml"
write_jobs() {
    cat >"$TMP/jobs.toml" <<EOF
[server]
listen = "127.0.0.1:$VIGIL_PORT"
data_dir = "$TMP/data"
channel = "$1"

[[job]]
name = "vitals"
collectors = ["cpu", "memory"]
interval = "1s"
EOF
}
write_jobs direct
VARGS=(--clients "$TMP/clients.xml" --jobs "$TMP/jobs.toml")
for i in $(seq 0 $((N - 1))); do
    "$VIGIL" enroll "h$i" --dir "$TMP/agent$i" "${VARGS[@]}" >/dev/null
done
DB="$TMP/data/vigil.db"
for i in $(seq 0 $((N - 1))); do
    [[ "$i" == 1 ]] && continue
    sqlite3 "$DB" "INSERT INTO tunnels (host, port, state) VALUES ('h$i', ${TUNNEL_PORTS[$i]}, 'pending')"
done
sed -i "s|^server = .*|server = \"127.0.0.1:${TUNNEL_PORTS[0]}\"|" "$TMP/agent0/agent.toml"
HELD=$((N - 1))

serve() {
    "$VIGIL" serve "${VARGS[@]}" >"$TMP/serve-$1.out" 2>"$TMP/serve-$1.err" &
    SERVE=$!
    PIDS+=("$SERVE")
    for _ in $(seq 1 100); do
        grep -q "listening on" "$TMP/serve-$1.out" 2>/dev/null && return 0
        sleep 0.2
    done
    die "serve did not start: $(cat "$TMP/serve-$1.err")"
}

# --- baseline: no tunnel held ------------------------------------------------------------------------------------
serve direct
sleep "$SETTLE"
BASE="$(rss_kib "$SERVE" VmRSS)"; BASE_ANON="$(rss_kib "$SERVE" RssAnon)"; BASE_FILE="$(rss_kib "$SERVE" RssFile)"
kill -TERM "$SERVE"; wait "$SERVE" || true

# --- N - 1 tunnels held ------------------------------------------------------------------------------------------
write_jobs tunnel
serve tunnel
UP=0
for _ in $(seq 1 300); do
    UP="$(sqlite3 "$DB" "SELECT count(*) FROM tunnels WHERE state = 'up'")"
    (( UP >= HELD )) && break
    sleep 0.2
done
(( UP >= HELD )) || die "only $UP of $HELD tunnels came up: $(tail -5 "$TMP/serve-tunnel.err")"
sleep "$SETTLE"
HELD_RSS="$(rss_kib "$SERVE" VmRSS)"; HELD_ANON="$(rss_kib "$SERVE" RssAnon)"; HELD_FILE="$(rss_kib "$SERVE" RssFile)"
PER="$(per_kib $((HELD_RSS - BASE)) "$HELD")"
PER_ANON="$(per_kib $((HELD_ANON - BASE_ANON)) "$HELD")"
CODE=$((HELD_FILE - BASE_FILE))

# --- latency: one agent through its tunnel, one direct, same run --------------------------------------------------
START_MS="$(($(date +%s%N) / 1000000))"
for i in 0 1; do
    VIGIL_LOG=debug "$AGENT" --config "$TMP/agent$i/agent.toml" 2>"$TMP/agent$i.log" &
    PIDS+=($!)
done
sleep "$LAT_S"
latency() {
    sqlite3 "$DB" "SELECT received_at_ms - collected_at_ms FROM reports r JOIN hosts h ON h.id = r.host_id
                   WHERE h.name = '$1' AND r.received_at_ms > $START_MS + 3000 ORDER BY 1" |
        awk '{v[NR] = $1} END {if (NR == 0) {print "no reports"; exit}
             printf "%d reports, median %d ms, p90 %d ms\n", NR, v[int((NR + 1) / 2)], v[int(NR * 0.9 + 0.5)]}'
}

# The agents' ack round trips after the first 3 s (connection set-up and the first sends excluded).
ack_rtt() {
    grep -o 'acked seq=[0-9]* rtt_us=[0-9]*' "$TMP/agent$1.log" | awk -F'[= ]' '$3 > 3 {print $5}' | sort -n |
        awk '{v[NR] = $1} END {if (NR == 0) {print "no acks"; exit}
             printf "%d acks, median %.2f ms, p90 %.2f ms, p99 %.2f ms\n", NR, v[int((NR + 1) / 2)] / 1000,
                    v[int(NR * 0.9 + 0.5)] / 1000, v[int(NR * 0.99 + 0.5)] / 1000}'
}

echo "hosts: $N real sshd; tunnels held: $HELD; binary: $VIGIL"
echo "serve VmRSS, no tunnel:        ${BASE} KiB (RssAnon ${BASE_ANON}, RssFile ${BASE_FILE})"
echo "serve VmRSS, $HELD tunnels up: ${HELD_RSS} KiB (RssAnon ${HELD_ANON}, RssFile ${HELD_FILE})"
echo "per held tunnel, VmRSS:        ${PER} KiB (includes the code paged in once: ${CODE} KiB / $HELD)"
echo "per held tunnel, RssAnon:      ${PER_ANON} KiB"
echo "projected to 10,000 tunnels:   $(awk -v b="$BASE" -v c="$CODE" -v p="$PER_ANON" \
    'BEGIN {printf "%d", (b + c + p * 10000) / 1024}') MiB (baseline + code + 10,000 x RssAnon per tunnel)"
echo "delivery latency, tunnel (h0): $(latency h0)"
echo "delivery latency, direct (h1): $(latency h1)"
echo "ack round trip, tunnel (h0):   $(ack_rtt 0)"
echo "ack round trip, direct (h1):   $(ack_rtt 1)"
