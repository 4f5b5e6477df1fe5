#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ briefly (about 30 s in all, split evenly) so none can rot: each starts from
# its committed seed corpus (fuzz/corpus/<target>/, read only) and must neither crash nor fail an assertion.
# New inputs and any crash go to a temporary directory; a crash is copied to fuzz/artifacts/<target>/ and fails the
# script. See FUZZING.md.
#
# Reports into SQLite are checked by server/tests/report_store_corpus.rs (fuzz/ builds without SQLite).
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`); runs on the stable toolchain through RUSTC_BOOTSTRAP=1.
# Environment: FUZZ_BUDGET_S (total seconds, default 30), FUZZ_TARGETS (space-separated subset).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "scripts/fuzz-smoke.sh: cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 1
fi

# The same build flags as the long runs in FUZZING.md, so one build serves both.
export RUSTC_BOOTSTRAP=1
flags=(--sanitizer none)

read -r -a targets <<<"${FUZZ_TARGETS:-$(cargo fuzz list | tr '\n' ' ')}"
budget="${FUZZ_BUDGET_S:-30}"
each=$((budget / ${#targets[@]}))
[ "$each" -ge 1 ] || each=1

echo "== cargo fuzz build (${targets[*]})"
cargo fuzz build "${flags[@]}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
    mkdir -p "$work/$t/new" "$work/$t/artifacts"
    echo "== fuzz $t (${each}s)"
    if ! cargo fuzz run "${flags[@]}" "$t" "$work/$t/new" "corpus/$t" -- \
        -max_total_time="$each" -artifact_prefix="$work/$t/artifacts/" -print_final_stats=1 \
        >"$work/$t/log" 2>&1; then
        failed+=("$t")
        mkdir -p "artifacts/$t"
        cp "$work/$t/artifacts/"* "artifacts/$t/" 2>/dev/null || true
        tail -n 40 "$work/$t/log" >&2
    fi
    grep -E '^stat::number_of_executed_units|^stat::average_exec_per_sec' "$work/$t/log" | tr '\n' ' ' || true
    echo
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "scripts/fuzz-smoke.sh: failing targets: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "scripts/fuzz-smoke.sh: ${#targets[@]} targets ran clean"
