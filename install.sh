#!/usr/bin/env sh
# Builds relay from this checkout and installs the `relay` binary into ~/.cargo/bin.
# Usage: ./install.sh            (needs a Rust toolchain: https://rustup.rs)
set -eu
cd "$(dirname "$0")"
if ! command -v cargo >/dev/null 2>&1; then
  echo "install.sh: cargo not found; install Rust from https://rustup.rs and retry" >&2
  exit 1
fi
cargo install --path . --locked --force
echo "installed: $(command -v relay || echo "$HOME/.cargo/bin/relay")"
echo "run it:    relay serve --config configs/relay.yaml"
