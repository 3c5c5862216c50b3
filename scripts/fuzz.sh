#!/usr/bin/env bash
# Long fuzz runs of pvrun's guest- and file-facing surface (not part of CI;
# `cargo test` runs a short pass on stable, crates/pvrun/tests/fuzz_smoke.rs).
#
#   scripts/fuzz.sh                 every target, 1,000,000 executions each
#   scripts/fuzz.sh loader 5000000  one target, that many executions
#   scripts/fuzz.sh --list          the targets
#
# Installs what it needs: the nightly toolchain (rustup) and cargo-fuzz. Each
# run starts from the seed corpus in crates/pvrun/fuzz/corpus/<target>/ and
# keeps what it finds in target/fuzz-corpus/<target>/ (the seeds stay as
# they are); a crash lands in crates/pvrun/fuzz/artifacts/<target>/. The
# summary, one line per target (executions, crashes, coverage), goes to
# stdout and target/fuzz-report.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=(exit_handler loader boot_info bench_marker vmi_calls lguest_calls)
if [[ "${1:-}" == "--list" ]]; then
    printf '%s\n' "${TARGETS[@]}"
    exit 0
fi
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
targets=("${TARGETS[@]}")
if [[ $# -ge 1 ]]; then
    if ! printf '%s\n' "${TARGETS[@]}" | grep -qx -- "$1"; then
        echo "fuzz: unknown target '$1' (scripts/fuzz.sh --list)" >&2
        exit 2
    fi
    targets=("$1")
fi
runs="${2:-1000000}"
if ! [[ "$runs" =~ ^[0-9]+$ ]]; then
    echo "fuzz: the number of executions must be a number, got '$runs'" >&2
    exit 2
fi

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz: installing the nightly toolchain" >&2
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

mkdir -p target
report=target/fuzz-report.txt
: > "$report"
for t in "${targets[@]}"; do
    work="target/fuzz-corpus/$t"
    mkdir -p "$work"
    log="target/fuzz-$t.log"
    echo "fuzz: $t: $runs executions (log: $log)" >&2
    status=0
    (cd crates/pvrun/fuzz && cargo +nightly fuzz run "$t" "../../../$work" corpus/"$t" -- \
        -runs="$runs" -print_final_stats=1) > "$log" 2>&1 || status=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || true)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || true)
    crashes=$(ls "crates/pvrun/fuzz/artifacts/$t" 2>/dev/null | wc -l)
    line="$t: executions=${execs:-?} crashes=$crashes coverage(edges)=${cov:-?} features=${ft:-?} exit=$status"
    echo "$line" | tee -a "$report"
done
