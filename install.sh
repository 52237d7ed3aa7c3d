#!/usr/bin/env sh
# Builds relay from this checkout and installs it. Safe to run again: the binary is replaced, an
# existing config is kept.
#
# Usage: ./install.sh [--prefix DIR]
#   --prefix DIR   install DIR/bin/relay (default: ~/.local, i.e. ~/.local/bin/relay)
#
# Steps:
#   1. cargo build --release --locked   (needs a Rust toolchain: https://rustup.rs)
#   2. copies target/release/relay to <prefix>/bin/relay (atomically: a running relay is not disturbed)
#   3. copies configs/relay.example.yaml to ${XDG_CONFIG_HOME:-~/.config}/relay/relay.yaml if that
#      file does not exist yet (relay serve reads it when ./configs/relay.yaml does not exist)
#
# Environment:
#   CARGO                  the cargo to run (default: cargo on PATH)
#   RELAY_INSTALL_BINARY   install this already-built binary instead of building (used by the tests
#                          and by packaging that builds elsewhere); cargo is then not needed
set -eu

prefix="$HOME/.local"
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2; exit 2; }
              prefix="$2"; shift 2 ;;
    --prefix=*) prefix="${1#--prefix=}"; shift ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")"

binary="${RELAY_INSTALL_BINARY:-}"
if [ -z "$binary" ]; then
  cargo="${CARGO:-cargo}"
  if ! command -v "$cargo" >/dev/null 2>&1; then
    echo "install.sh: cargo not found ($cargo). Install Rust from https://rustup.rs (then open a new shell) and run ./install.sh again." >&2
    exit 1
  fi
  echo "building relay (cargo build --release --locked) ..."
  "$cargo" build --release --locked
  binary="target/release/relay"
fi
if [ ! -x "$binary" ]; then
  echo "install.sh: no executable at $binary" >&2
  exit 1
fi

bindir="$prefix/bin"
mkdir -p "$bindir"
# Copy beside the target, then rename over it: atomic, and works while the old binary runs.
tmp="$bindir/.relay.install.$$"
trap 'rm -f "$tmp"' EXIT
cp "$binary" "$tmp"
chmod 0755 "$tmp"
mv -f "$tmp" "$bindir/relay"
trap - EXIT
echo "installed: $bindir/relay ($("$bindir/relay" --version))"

config_dir="${XDG_CONFIG_HOME:-$HOME/.config}/relay"
config="$config_dir/relay.yaml"
if [ -e "$config" ]; then
  echo "config:    $config (kept)"
else
  mkdir -p "$config_dir"
  cp configs/relay.example.yaml "$config"
  echo "config:    $config (new, from configs/relay.example.yaml)"
fi

echo
echo "next steps:"
case ":$PATH:" in
  *":$bindir:"*) ;;
  *) echo "  export PATH=\"$bindir:\$PATH\"   # $bindir is not on your PATH yet" ;;
esac
echo "  relay config check   # validate $config"
echo "  relay serve          # listen on 127.0.0.1:8080 with $config"
echo "  export OPENAI_BASE_URL=http://127.0.0.1:8080/v1 ANTHROPIC_BASE_URL=http://127.0.0.1:8080"
echo "  relay ca path        # only for HTTPS (server.tls: auto) or HTTPS_PROXY interception"
