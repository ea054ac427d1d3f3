#!/usr/bin/env bash
# CI for the fuzz targets (.ci/run calls it): builds every target, then runs
# each for FUZZ_SECONDS (default 20) on a fresh corpus plus its seeds.
# A crash, a hang, a timeout or any other non-zero exit fails the script.
#
#   bash fuzz/ci.sh                  # from anywhere
#   FUZZ_SECONDS=5 bash fuzz/ci.sh   # shorter runs
#   FUZZ_TARGETS="smtp_data pop3_client" bash fuzz/ci.sh   # some targets only
set -euo pipefail
cd "$(dirname "$0")"

FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
case $FUZZ_SECONDS in
  '' | *[!0-9]*) echo "FUZZ_SECONDS must be a whole number of seconds, not '$FUZZ_SECONDS'"; exit 2 ;;
esac
# cargo-fuzz needs nightly features (-Z sanitizer); this lets stable build them.
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  timeout 900 cargo install cargo-fuzz --locked
fi

echo "== cargo fuzz build (all targets)"
build_start=$(date +%s)
cargo fuzz build
echo "built in $(($(date +%s) - build_start))s"

if [ -n "${FUZZ_TARGETS:-}" ]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  list=$(cargo fuzz list)
  mapfile -t targets <<<"$list"
fi
[ "${#targets[@]}" -gt 0 ] && [ -n "${targets[0]}" ] || { echo "no fuzz targets found"; exit 1; }

mkdir -p corpus
run_dir=$(mktemp -d corpus/ci.XXXXXX)
trap 'rm -rf "$run_dir"' EXIT

summary=()
failed=()
for target in "${targets[@]}"; do
  corpus="$run_dir/$target"
  log="$run_dir/$target.log"
  mkdir -p "$corpus"
  # New inputs go to the first directory; the seeds stay as they are.
  dirs=("$corpus")
  [ -d "seeds/$target" ] && dirs+=("seeds/$target")
  args=(-max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -timeout=10)
  case $target in
    smtp_*) args+=(-dict=smtp.dict) ;;
  esac
  echo "== fuzz $target (${FUZZ_SECONDS}s, ${dirs[*]})"
  start=$(date +%s)
  status=0
  # libFuzzer stops at max_total_time; the timeout is a guard against a run
  # that does not.
  timeout --kill-after=10 $((FUZZ_SECONDS + 60)) \
    cargo fuzz run "$target" "${dirs[@]}" -- "${args[@]}" >"$log" 2>&1 || status=$?
  seconds=$(($(date +%s) - start))
  execs=$(grep -Eo '^Done [0-9]+ runs' "$log" | tail -n 1 | grep -Eo '[0-9]+' || true)
  # Coverage after loading the corpus (the seeds) and at the end.
  cov_start=$(grep -Eo 'INITED +cov: [0-9]+' "$log" | tail -n 1 | grep -Eo '[0-9]+$' || true)
  cov_end=$(grep -Eo 'DONE +cov: [0-9]+' "$log" | tail -n 1 | grep -Eo '[0-9]+$' || true)
  if [ "$status" -eq 0 ] && [ -n "$execs" ]; then
    result=ok
  else
    case $status in
      0) result="FAILED (no final 'Done N runs' line)" ;;
      124 | 137) result="FAILED (killed after $((FUZZ_SECONDS + 60))s)" ;;
      *) result="FAILED (exit $status)" ;;
    esac
    failed+=("$target")
    echo "---- last lines of the $target run"
    tail -n 60 "$log"
    echo "---- what failed (first report in the $target run)"
    grep -E -m 1 -A 4 "panicked at|ERROR: (libFuzzer|AddressSanitizer)|^error" "$log" || true
    echo "----"
    artifacts=$(grep -Eo 'Test unit written to [^ ]+' "$log" | sed 's/^Test unit written to //' || true)
    if [ -n "$artifacts" ]; then
      echo "$target: failing input written to:"
      printf '  %s\n' $artifacts
      echo "replay: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $target <file>"
    fi
  fi
  summary+=("$(printf '%-16s %4ss %10s execs  cov %5s -> %-5s  %s' \
    "$target" "$seconds" "${execs:-?}" "${cov_start:-?}" "${cov_end:-?}" "$result")")
done

echo "== fuzz summary (FUZZ_SECONDS=$FUZZ_SECONDS; cov: edges after loading the seeds -> at the end)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzzing failed: ${failed[*]}"
  exit 1
fi
