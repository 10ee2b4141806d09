#!/usr/bin/env bash
# The Python package's CI step (run by .ci/run; runs by itself too): builds the abi3 wheel with maturin in a fresh
# virtual environment, installs it, and runs the pytest suite, real-client tests included (sentence-transformers
# and transformers load original and rebuilt folders). Needs, from earlier CI steps, the release `ultradelta`
# binary and the generated testbed (target/testbed-generated); builds/writes them when missing.
#
# Offline except PyPI and Debian: PyTorch is Debian's python3-torch (1.13), seen from a venv made with
# --system-site-packages; the rest comes from PyPI, pinned to versions that work with that torch.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
target=${CARGO_TARGET_DIR:-$root/target}

if ! /usr/bin/python3 -c 'import torch, venv, ensurepip' 2>/dev/null; then
    echo "ci.sh: installing Debian's python3-torch, python3-venv and python3-pip"
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-torch python3-venv python3-pip
fi
if [ ! -x "$target/release/ultradelta" ]; then
    cargo build --release -p ultradelta-cli
fi
if [ ! -f "$target/testbed-generated/testbed.json" ] || [ ! -f "$target/testbed-generated/llama/testbed.json" ]; then
    cargo build --release -p ultradelta-eval
    "$target/release/ultradelta-eval" make-testbed --out "$target/testbed-generated" --force
fi

venv="$target/py-venv"
rm -rf "$venv"
/usr/bin/python3 -m venv --system-site-packages "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check \
    "maturin>=1.5,<2" pytest ml_dtypes "numpy<2" \
    "transformers==4.36.2" "sentence-transformers==3.0.1" "huggingface-hub<0.20" "tokenizers<0.19"
rm -rf "$target/wheels"
# The release profile and target folder the CLI was built with: the workspace crates are not built again.
"$venv/bin/maturin" build --release --quiet -i "$venv/bin/python" -m crates/ultradelta-py/Cargo.toml -o "$target/wheels"
wheels=("$target"/wheels/ultradelta-*-cp39-abi3-*.whl)
[ "${#wheels[@]}" = 1 ] && [ -f "${wheels[0]}" ] || { echo "ci.sh: expected one abi3 wheel, found: ${wheels[*]}"; exit 1; }
"$venv/bin/pip" install -q --disable-pip-version-check "${wheels[0]}"
# From outside the source folder, so that the installed wheel is what is tested.
cd "$target"
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ULTRADELTA_REQUIRE=1 \
    ULTRADELTA_CLI="$target/release/ultradelta" ULTRADELTA_TESTBED="$target/testbed-generated" \
    "$venv/bin/python" -m pytest -q -p no:cacheprovider -rs "$root/crates/ultradelta-py/tests" "$@"
