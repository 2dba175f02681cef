#!/usr/bin/env bash
# Builds every fuzz target once (coverage-instrumented, stable toolchain,
# no sanitizer) and runs each for a bounded time over its committed corpus.
# Exits non-zero if any target crashes, leaks a panic, times out or runs
# out of memory; the input that did it is left in fuzz/artifacts/<target>/.
#
#   fuzz/run.sh                      # every target, FUZZ_SECONDS each (12)
#   FUZZ_SECONDS=600 fuzz/run.sh ws_frames config
#
# New inputs a run finds go to a scratch directory, not the committed
# corpus; docs/fuzzing.md says how to merge them in.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-12}
# Pinned so CI does not change tools under us; installed when missing.
cargo_fuzz_version=0.13.2
# Release build with debug assertions and overflow checks (-a), 16
# codegen units (cargo-fuzz defaults to 1: slower to build, barely faster
# to run), and no sanitizer: AddressSanitizer needs a nightly compiler,
# and with `unsafe_code = "forbid"` in our crates it would only watch
# dependencies.
build_flags=(-s none -O -a --codegen-units 16)
bin_dir=target/x86_64-unknown-linux-gnu/release

log() { printf '\n== %s\n' "$*"; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz $cargo_fuzz_version"
  cargo install cargo-fuzz --locked --version "$cargo_fuzz_version"
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

log "cargo fuzz build (${targets[*]})"
start=$SECONDS
cargo fuzz build "${build_flags[@]}"
echo "built in $((SECONDS - start)) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
  log "fuzz $t for ${seconds} s"
  mkdir -p "corpus/$t" "artifacts/$t" "$scratch/$t"
  # Tokens of the input's language help the fuzzer past its keywords.
  dict=()
  case $t in
    config) dict=(-dict=dict/config.dict) ;;
    client_frame | api_bodies) dict=(-dict=dict/json.dict) ;;
    last_event_id) dict=(-dict=dict/last_event_id.dict) ;;
  esac
  # The first directory receives new inputs; the committed one is read.
  if ! "$bin_dir/$t" "$scratch/$t" "corpus/$t" "${dict[@]}" \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -max_len=8192 -print_final_stats=1 \
      -artifact_prefix="artifacts/$t/" 2>"$scratch/$t.log"; then
    tail -n 40 "$scratch/$t.log" >&2
    failed+=("$t")
  else
    grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)' "$scratch/$t.log" || true
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo >&2
  echo "fuzzing found crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo
echo "fuzzing: ${#targets[@]} targets, ${seconds} s each, no crash (step: $SECONDS s)"
