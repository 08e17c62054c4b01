#!/usr/bin/env bash
# Builds the reference llama.cpp that `cocoon-bench engine` compares the embedded engine with.
#
# Source: the full llama.cpp tree vendored in the `llama-cpp-python==0.3.36` sdist
# (`vendor/llama.cpp`, build 0c1e570, ggml 0.25.3), as in the team's inference notes (not in the repo):
# the `llama-cpp-sys-2` crate ships no `tools/` sources, so llama-bench cannot be built from it.
# Everything goes to target/bench-engine/ (ignored by git; nothing here is committed).
#
# Flags: GGML_NATIVE=OFF, so ggml gets the same instruction sets as the crate's default build
# (llama-cpp-sys-2 passes GGML_NATIVE=OFF without RUSTFLAGS: SSE4.2, AVX, AVX2, FMA, F16C,
# BMI2), OpenMP on (like the workspace's `llama-cpp-2` `openmp` feature), no curl/OpenSSL/UI.
#
# Usage: bench/engine/build-reference.sh      (JOBS=N to change the default -j2)
# Result: target/bench-engine/build/bin/llama-bench (and llama-batched-bench).
set -euo pipefail

VERSION=0.3.36
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT="$ROOT/target/bench-engine"
SRC="$OUT/llama_cpp_python-$VERSION/vendor/llama.cpp"
BUILD="$OUT/build"
JOBS=${JOBS:-2}

mkdir -p "$OUT"
if [ ! -f "$OUT/llama_cpp_python-$VERSION.tar.gz" ]; then
    pip download --no-binary :all: --no-deps -d "$OUT" "llama-cpp-python==$VERSION"
fi
if [ ! -f "$SRC/CMakeLists.txt" ]; then
    tar -xzf "$OUT/llama_cpp_python-$VERSION.tar.gz" -C "$OUT"
fi

cmake -S "$SRC" -B "$BUILD" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF \
    -DGGML_OPENMP=ON \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF

targets=(llama-bench)
if grep -q 'batched-bench' "$SRC/tools/CMakeLists.txt" 2>/dev/null; then
    targets+=(llama-batched-bench)
fi
cmake --build "$BUILD" -j"$JOBS" --target "${targets[@]}"

echo "ggml CPU flags:"
grep -ho -- '-m[a-z0-9.-]*' "$BUILD"/ggml/src/CMakeFiles/ggml-cpu.dir/flags.make 2>/dev/null | sort -u | tr '\n' ' ' || true
echo
ls -l "$BUILD"/bin/
