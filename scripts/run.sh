#!/usr/bin/env bash
# Runs vigil on the shipped clients.xml and jobs.toml (placeholder: the lead fills in the main job, `vigil serve`).
# Extra arguments replace the default command, e.g. `scripts/run.sh check -v`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p vigil-server -p vigil-agent
if [ "$#" -eq 0 ]; then
    set -- serve
fi
exec target/release/vigil "$@" --clients clients.xml --jobs jobs.toml
