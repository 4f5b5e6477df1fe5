#!/usr/bin/env bash
# Builds vigil's agent set: the agent with the size-tuned `agent` profile (Cargo.toml) for every host kind bootstrap
# ships to, into dist/agents/<target>/ (`vigil` finds the set there; README "The agent set"):
#
#   dist/agents/x86_64-unknown-linux-musl/vigil-agent      static, any x86-64 Linux kernel >= 3.2 whatever its libc
#   dist/agents/aarch64-unknown-linux-musl/vigil-agent     static, ARM aarch64 Linux
#   dist/agents/x86_64-pc-windows-gnu/vigil-agent.exe      PE32+ x86-64, Windows
#
# Arguments name a subset of the targets (`scripts/dist.sh x86_64-unknown-linux-musl`); default all three, built by
# one cargo invocation so the build scripts and proc macros compile once. Installs the rustup targets and the Debian
# cross tools when missing (the agent's russh uses `ring`, which compiles C and assembly for each target), then
# checks every output with `file` and the 2.5 MB size limit. Honours CARGO_TARGET_DIR; DIST_CARGO_ARGS adds cargo
# arguments (e.g. --timings).
set -euo pipefail
cd "$(dirname "$0")/.."

all=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl x86_64-pc-windows-gnu)
if [ "$#" -gt 0 ]; then targets=("$@"); else targets=("${all[@]}"); fi
# Issue 14's limit for one stripped agent: 2.5 MB (BENCHMARKS.md "The agent set").
max_bytes=2500000

# The Debian packages a target's C toolchain comes from, and the command that shows it is there.
missing=()
command -v file >/dev/null || missing+=(file)
for t in "${targets[@]}"; do
    case "$t" in
        x86_64-unknown-linux-musl) command -v musl-gcc >/dev/null || missing+=(musl-tools) ;;
        aarch64-unknown-linux-musl) command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu) ;;
        x86_64-pc-windows-gnu) command -v x86_64-w64-mingw32-gcc >/dev/null || missing+=(gcc-mingw-w64-x86-64) ;;
        *)
            echo "scripts/dist.sh: unknown target $t (known: ${all[*]})" >&2
            exit 2
            ;;
    esac
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "scripts/dist.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
installed="$(rustup target list --installed)"
for t in "${targets[@]}"; do
    grep -qx "$t" <<<"$installed" || rustup target add "$t"
done

# x86_64 musl: Debian's musl-gcc wrapper (musl's own headers). aarch64 musl: Debian has no aarch64 musl compiler;
# the glibc cross compiler builds ring's few C files (no libc calls beyond memcpy/memset) and its assembly, and
# links with Rust's bundled musl (crt-static). Windows: MinGW; ring ships its Windows assembly pre-assembled (no
# nasm). relocation-model=static: plain static executables, not static-pie (smaller, and what `file` calls
# "statically linked").
export CC_x86_64_unknown_linux_musl=musl-gcc
export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
# x86-64: gold's identical code folding (--icf=all) merges the many identical generic instantiations (~30 kB), which
# keeps the build within 2.5 MB (BENCHMARKS.md "The agent set").
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C relocation-model=static -C link-arg=-fuse-ld=gold -C link-arg=-Wl,--icf=all"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C relocation-model=static"

target_dir="${CARGO_TARGET_DIR:-target}"
args=()
for t in "${targets[@]}"; do args+=(--target "$t"); done
start=$(date +%s)
cargo build --locked --profile agent -p vigil-agent "${args[@]}" ${DIST_CARGO_ARGS:-}
echo "scripts/dist.sh: cargo build took $(($(date +%s) - start)) s" >&2

fail=0
for t in "${targets[@]}"; do
    case "$t" in
        x86_64-unknown-linux-musl) exe=vigil-agent want='ELF 64-bit LSB executable, x86-64.*statically linked' ;;
        aarch64-unknown-linux-musl) exe=vigil-agent want='ELF 64-bit LSB executable, ARM aarch64.*statically linked' ;;
        x86_64-pc-windows-gnu) exe=vigil-agent.exe want='PE32\+ executable .*x86-64' ;;
    esac
    limit=$max_bytes
    mkdir -p "dist/agents/$t"
    out="dist/agents/$t/$exe"
    cp "$target_dir/$t/agent/$exe" "$out.tmp"
    mv "$out.tmp" "$out"
    kind="$(file -b "$out")"
    size=$(stat -c %s "$out")
    echo "$out: $size bytes: $kind"
    if ! grep -Eq "$want" <<<"$kind"; then
        echo "scripts/dist.sh: $out is not what $t needs ($want)" >&2
        fail=1
    fi
    if [ "$size" -gt "$limit" ]; then
        echo "scripts/dist.sh: $out is $size bytes, over the $limit limit (BENCHMARKS.md)" >&2
        fail=1
    fi
done
exit "$fail"
