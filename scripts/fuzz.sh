#!/usr/bin/env bash
# fuzz.sh - coverage-guided fuzzing of every parser an untrusted side feeds
# (see fuzz/src/lib.rs), with libFuzzer on stable Rust: libfuzzer-sys plus
# the SanitizerCoverage flags cargo-fuzz would pass (no -Z flags needed).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]    default: 60 s, all
#
# Each target starts from its committed seeds (fuzz/corpus/<target>) and a
# working corpus in fuzz/work/<target> (not committed; kept between runs).
# A crash or a failed check stops that target and leaves the input in
# fuzz/artifacts/<target>/; the script then exits non-zero. The summary
# line per target: executions, seconds, corpus size, crashes.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export PATH="$HOME/.cargo/bin:$PATH"
SECS="${1:-60}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(pipeline nat dns_query api tunnel)
HOST="$(rustc -vV | sed -n 's/^host: //p')"
# --target keeps the flags off build scripts and proc macros
RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
	cargo build --release --features libfuzzer --target "$HOST" --bins -q
python3 seeds.py
status=0
# crashes found by this run only (artifacts of earlier runs are kept)
stamp=$(mktemp)
trap 'rm -f "$stamp"' EXIT
printf '%-10s %12s %8s %8s %8s\n' target execs seconds corpus crashes
for t in "${TARGETS[@]}"; do
	mkdir -p "work/$t" "artifacts/$t"
	log="work/$t.log"
	set +e
	"target/$HOST/release/$t" "work/$t" "corpus/$t" \
		-max_total_time="$SECS" -rss_limit_mb=2048 -max_len=4096 -timeout=10 \
		-artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1
	rc=$?
	set -e
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
	crashes=$(find "artifacts/$t" -type f -newer "$stamp" | wc -l)
	printf '%-10s %12s %8s %8s %8s\n' "$t" "${execs:-?}" "${secs:-$SECS}" "$(ls "work/$t" | wc -l)" "$crashes"
	if [ $rc -ne 0 ] || [ "$crashes" -gt 0 ]; then
		status=1
		grep -m5 -E "panicked|ERROR|SUMMARY" "$log" >&2 || tail -n 20 "$log" >&2
	fi
done
exit $status
