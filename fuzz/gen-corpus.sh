#!/usr/bin/env bash
# Regenerates the committed seed corpora in fuzz/corpus/ from real material: one `vigil-agent --once --print` report
# per collector (and one with all of them) collected on this machine, sealed and framed the way the agent sends them,
# plus the server's replies and the repository's example and fixture config files (examples/gen_corpus.rs).
set -euo pipefail
cd "$(dirname "$0")"

cargo build --manifest-path ../Cargo.toml -p vigil-agent --bin vigil-agent
agent="../target/debug/vigil-agent"
reports="$(mktemp -d)"
trap 'rm -rf "$reports"' EXIT
for c in system users cpu memory swap partitions disk_usage network security_events; do
    "$agent" --once --print --collectors "$c" >"$reports/report-$c.json"
done
"$agent" --once --print >"$reports/report-all.json"

# The example builds against the main workspace's target directory, where its dependencies are already built.
rm -rf corpus
CARGO_TARGET_DIR=../target cargo run --quiet --example gen_corpus -- corpus "$reports"/*.json
for d in corpus/*/; do
    echo "$d: $(find "$d" -type f | wc -l) seeds"
done
