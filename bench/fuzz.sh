#!/usr/bin/env bash
# Runs each fuzz target for a bounded time and records what it ran in bench/RESULTS.md (`## fuzz`).
#
#   bench/fuzz.sh                      # 60 s per target, the `fuzz` profile (release with overflow
#                                      # checks and debug assertions)
#   FUZZ_SECONDS=600 bench/fuzz.sh     # longer
#   FUZZ_SEED=123 bench/fuzz.sh        # repeat the random inputs of an earlier run (its seed is printed)
#   FUZZ_PROFILE=dev bench/fuzz.sh     # a debug build (slower cases, no new build if tests ran)
#
# The targets are ordinary tests beside the code they reach (see tests/fuzzkit): under plain `cargo test`
# they run a few hundred seeded cases; with FUZZ_SECONDS set they run random cases until the time is up
# and print one `FUZZ-RESULT` line. A crash fails the test with the seed and the shrunk input.
set -euo pipefail

cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
profile="${FUZZ_PROFILE:-fuzz}"
profile_flag=(--profile "$profile")

# package, test binary selector, test path
targets=(
  "gofer-domain --lib fuzz::fuzz_pipeline_json"
  "gofer-domain --lib fuzz::fuzz_command_decoder"
  "gofer-domain --lib fuzz::fuzz_schedule_settings"
  "gofer-extension-host --lib webhook::fuzz::fuzz_webhook_delivery"
)

cargo test "${profile_flag[@]}" -p gofer-domain -p gofer-extension-host --lib --no-run --quiet

results=()
failed=0
for target in "${targets[@]}"; do
  read -r package selector test <<<"$target"
  echo "== $test ($package, ${seconds} s)" >&2
  log="$(mktemp)"
  if FUZZ_SECONDS="$seconds" cargo test "${profile_flag[@]}" --quiet -p "$package" "$selector" "$test" \
      -- --exact --nocapture >"$log" 2>&1; then
    :
  else
    failed=1
  fi
  line="$(grep -m1 '^FUZZ-RESULT' "$log" || true)"
  if [ -z "$line" ] || [[ "$line" == *"crashes=1"* ]]; then
    failed=1
    cat "$log" >&2
    line="${line:-FUZZ-RESULT target=$test crashes=? (see the output above)}"
  fi
  echo "$line" >&2
  results+=("$line")
  rm -f "$log"
done

field() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<"$2"; }

section="$(mktemp)"
{
  echo "## fuzz"
  echo
  echo "Each fuzz target (tests/fuzzkit drives them; the targets sit beside the code they reach) ran random cases for a bounded time: \`FUZZ_SECONDS=$seconds bench/fuzz.sh\`, the \`$profile\` profile. A case is one generated input, shrunk and reported with its seed if it fails; *accepted* counts the inputs that got past the parser into the checks after it (re-reading, applying, scheduling, picking parameters)."
  echo
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- Machine: $(nproc) CPUs, commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo ' (with local changes)')"
  echo
  echo "| target | seconds | cases | accepted | crashes | seed |"
  echo "|---|---:|---:|---:|---:|---:|"
  for line in "${results[@]}"; do
    echo "| $(field target "$line") | $(field seconds "$line") | $(field cases "$line") | $(field accepted "$line") | $(field crashes "$line") | $(field seed "$line") |"
  done
  echo
  if [ "$failed" = 0 ]; then
    echo "No target crashed or failed a check in this run."
  else
    echo "A target crashed or failed a check: its seed and shrunk input are in the run's output."
  fi
  echo
} >"$section"

# Replace the `## fuzz` section (up to the next `## `), or append it.
awk -v section="$section" '
  BEGIN { while ((getline line < section) > 0) text = text line "\n" }
  /^## / { if (skipping) skipping = 0; if ($0 == "## fuzz") { printf "%s", text; skipping = 1; done = 1; next } }
  !skipping { print }
  END { if (!done) printf "\n%s", text }
' bench/RESULTS.md >bench/RESULTS.md.new
mv bench/RESULTS.md.new bench/RESULTS.md
rm -f "$section"
cat bench/RESULTS.md | sed -n '/^## fuzz$/,/^## [^f]/p' >&2
exit "$failed"
