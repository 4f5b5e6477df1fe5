#!/usr/bin/env bash
# Runs all of vigil's tests against the real components (OpenSSH sshd, aiosmtpd, SQLite files).
#
# Installs what the tests need when it is missing (Debian packages openssh-server, openssh-client, python3-aiosmtpd;
# the rustfmt and clippy components), builds every binary the end-to-end tests drive, then runs `cargo test` on the
# whole workspace. Extra arguments go to `cargo test`, e.g. `scripts/test.sh -p vigil-tests harness -- --nocapture`.
# Needs root: the tests start sshd and create throwaway local users.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: run as root (the tests start sshd and create local users)" >&2
    exit 1
fi

missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
{ [ -x /usr/bin/ssh ] && [ -x /usr/bin/ssh-keygen ]; } || missing+=(openssh-client)
{ [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null; } || missing+=(python3-aiosmtpd)
command -v useradd >/dev/null || missing+=(passwd)
# git: tests/tests/architecture.rs checks the vendored russh with `git apply --check` (third_party/README.md)
command -v git >/dev/null || missing+=(git)
# --- web (begin): headless Chromium for the dashboard tests, promtool for /metrics
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
[ -x /usr/bin/promtool ] || missing+=(prometheus)
# --- web (end)
# --- windows (begin): the Windows agent under Wine (tests/tests/windows_agent.rs): Wine, and MinGW + nasm to build it
[ -x /usr/lib/wine/wine64 ] || missing+=(wine64)
command -v x86_64-w64-mingw32-gcc >/dev/null || missing+=(gcc-mingw-w64-x86-64)
command -v nasm >/dev/null || missing+=(nasm)
# --- windows (end)
# --- minimal (begin): busybox-only login shells and a dropbear host in the bootstrap tests
[ -x /usr/bin/busybox ] || missing+=(busybox)
{ [ -x /usr/sbin/dropbear ] && [ -x /usr/bin/dropbearkey ]; } || missing+=(dropbear-bin)
# --- minimal (end)
# --- dist (begin): the agent set's cross tools (scripts/dist.sh), `file` and qemu-user for the agent set tests
command -v musl-gcc >/dev/null || missing+=(musl-tools)
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
command -v x86_64-w64-mingw32-gcc >/dev/null || missing+=(gcc-mingw-w64-x86-64)
command -v file >/dev/null || missing+=(file)
[ -x /usr/bin/qemu-aarch64-static ] || missing+=(qemu-user-static)
# --- dist (end)
# --- pg (begin): PostgreSQL's initdb and postgres for vigil-testkit's clusters (tests/tests/pg_schema.rs, testkit/tests)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
command -v openssl >/dev/null || missing+=(openssl)
# --- pg (end)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "scripts/test.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi

# sshd's privilege separation directory; a fresh container does not have it.
mkdir -p /run/sshd

cargo build --workspace --bins
# --- dist (begin): the agent set the end-to-end tests ship (dist/agents; tests/tests/agent_set.rs checks it; the
# Wine tests run its Windows build)
scripts/dist.sh
# --- dist (end)
cargo test --workspace --no-fail-fast "$@"
