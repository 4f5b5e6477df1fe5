#!/usr/bin/env bash
# vigil's main job on the shipped clients.xml and jobs.toml: builds the binaries, then runs `vigil serve`, which
# installs and starts the local agent for this machine (transport="local") and stores its reports in
# vigil-data/vigil.db. In another shell, `scripts/run.sh status` shows this machine with live numbers.
# Extra arguments replace the command: `scripts/run.sh status`, `scripts/run.sh check -v`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p vigil-server -p vigil-agent
if [ "$#" -eq 0 ]; then
    set -- serve
fi
exec "${CARGO_TARGET_DIR:-target}/release/vigil" --clients clients.xml --jobs jobs.toml "$@"
