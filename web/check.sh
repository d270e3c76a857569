#!/usr/bin/env bash
# The browser check (issue #14): builds the wasm page, serves it on localhost and drives the
# system's headless Chromium (WebGPU on SwiftShader, no GPU needed) through it:
#   1. every trace in tests/data replayed by the GPU optimizer: one PASS/FAIL line each;
#   2. the quick benchmark (fused step vs a copy of the same bytes);
#   3. the learning-curve demo page for WEB_DEMO_STEPS steps (default 300) per schedule,
#      its screenshot (web/dist/demo.png) and its losses against the native demo's.
# Exits non-zero on any failure.
#
# The page builds in $WGPU_ADAMW_WEB_TARGET (default web/target).
#
# Needs: the wasm32-unknown-unknown target, wasm-bindgen-cli at the version web/Cargo.lock
# pins (looked for on PATH and in $WGPU_ADAMW_TOOLS/bin; `cargo install wasm-bindgen-cli
# --version V --root DIR` installs it), node + npm (playwright-core is installed into
# web/driver/node_modules from its lock file), chromium at /usr/bin/chromium (or $CHROMIUM),
# and a Vulkan driver (lavapipe) for the native demo run. .ci/run installs all of them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
dist="$here/dist"
steps="${WEB_DEMO_STEPS:-300}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

want="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print }' "$here/Cargo.lock")"
bindgen=""
for cand in "${WGPU_ADAMW_TOOLS:-/var/tmp/wgpu-adamw-tools}/bin/wasm-bindgen" "$(command -v wasm-bindgen || true)"; do
    if [ -x "$cand" ] && [ "$("$cand" --version | awk '{print $2}')" = "$want" ]; then
        bindgen="$cand"
        break
    fi
done
if [ -z "$bindgen" ]; then
    echo "web/check.sh: wasm-bindgen $want not found; install it with" >&2
    echo "  cargo install wasm-bindgen-cli --version $want --root \${WGPU_ADAMW_TOOLS:-/var/tmp/wgpu-adamw-tools}" >&2
    exit 2
fi
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    echo "web/check.sh: the wasm32-unknown-unknown target is missing: rustup target add wasm32-unknown-unknown" >&2
    exit 2
fi

echo "== building the page (wasm32, release)"
# Its own target directory (the native build below keeps the caller's).
target="${WGPU_ADAMW_WEB_TARGET:-$here/target}"
CARGO_TARGET_DIR="$target" cargo build --manifest-path "$here/Cargo.toml" --release \
    --target wasm32-unknown-unknown --locked
rm -rf "$dist"
mkdir -p "$dist/traces"
"$bindgen" --target web --no-typescript --out-dir "$dist/pkg" \
    "$target/wasm32-unknown-unknown/release/wgpu_adamw_web.wasm"
cp "$here"/www/*.html "$here"/www/*.js "$dist/"
cp "$root"/tests/data/*.safetensors "$dist/traces/"
(cd "$dist/traces" && ls *.safetensors | python3 -c 'import json,sys; print(json.dumps([l.strip() for l in sys.stdin]))' > index.json)

echo "== the native demo, the page's reference ($steps steps, seed 0, every default schedule)"
# The test profile: what `cargo test --workspace` (.ci/run) has already built.
cargo run --manifest-path "$root/Cargo.toml" --profile test -q -p wgpu-adamw-cli -- \
    demo --steps "$steps" --seeds 1 --out "$dist/native-demo" > "$dist/native-demo.txt" 2>&1

echo "== headless Chromium"
if [ ! -d "$here/driver/node_modules/playwright-core" ]; then
    (cd "$here/driver" && npm ci --no-audit --no-fund --silent)
fi
node "$here/driver/check.mjs" --dist "$dist" --demo-steps "$steps" \
    --native-csv "$dist/native-demo/learning_curve.csv" --screenshot "$dist/demo.png" \
    --json "$dist/report.json" "$@"
