#!/usr/bin/env bash
# vigil's main job on the shipped clients.xml and jobs.toml: builds the binaries, then runs `vigil serve`, which
# installs and starts the local agent for this machine (transport="local") and stores its reports in
# vigil-data/vigil.db. In another shell, `scripts/run.sh status` shows this machine with live numbers.
# Extra arguments replace the command: `scripts/run.sh status`, `scripts/run.sh check -v`.
# The agents it installs (here and on SSH hosts) come from the agent set scripts/dist.sh builds into dist/agents.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -eq 0 ]; then
    scripts/dist.sh
fi
cargo build --release -p vigil-server
if [ "$#" -eq 0 ]; then
    set -- serve
fi
export VIGIL_AGENTS_DIR="${VIGIL_AGENTS_DIR:-$PWD/dist/agents}"
exec "${CARGO_TARGET_DIR:-target}/release/vigil" --clients clients.xml --jobs jobs.toml "$@"
