#!/bin/sh
# Runs every fuzz target (tests/fuzz.rs and the patch parser's) for MINUTES minutes each
# (default 10) and prints the cases run and crashes per target. A crash fails its test with
# proptest's smallest input; the script exits non-zero if any target crashed.
#   bench/fuzz.sh [MINUTES]
set -u
minutes=${1:-10}
seconds=$((minutes * 60))
cd "$(dirname "$0")/.." || exit 2
export BUILDBOT_FUZZ_SECONDS=$seconds
# Fuzzing wants the parsers fast and the build quick, not the small binary the release profile
# makes for the daemons.
export CARGO_PROFILE_RELEASE_OPT_LEVEL=3 CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
status=0
run() {
    # --release: several times more cases per minute; one thread, one target at a time.
    out=$(cargo test --release --locked "$@" -- --exact --nocapture --test-threads=1 2>&1)
    code=$?
    printf '%s\n' "$out" | grep -E '^fuzz .*(cases|crash)' || printf '%s\n' "$out" | tail -20
    [ $code -eq 0 ] || status=1
}
echo "fuzzing each target for $minutes minute(s)"
for target in fuzz_try_job_decode fuzz_rpc_frame_decoder fuzz_authorized_keys_parse \
              fuzz_exec_command_parse fuzz_change_decode; do
    run --test fuzz "$target"
done
run --lib slave::checkout::patch_apply::fuzz_tests::fuzz_patch_parser
[ $status -eq 0 ] && echo "crashes: 0" || echo "crashes: see above"
exit $status
