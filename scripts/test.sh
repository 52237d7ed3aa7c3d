#!/usr/bin/env bash
# Runs every test relay has, on a fresh machine too: installs what the tests need when it is
# missing, then `cargo test --all-features`. README's test command; .ci/run calls it.
#
#   redis-server, redis-cli  the redis feature's tests spawn their own servers (Debian: redis-server)
#   promtool                 the metrics test checks /metrics with it (Debian: prometheus)
#   tmux                     the TUI's real-terminal test (Debian: tmux)
#   faketime                 time-shifted runs of the binary (Debian: faketime)
#   claude, codex            the agent tests' real clients (npm: @anthropic-ai/claude-code, @openai/codex)
#   kubectl                  renders the Kubernetes overlays (`kubectl kustomize`; Debian: kubernetes-client)
#   kubernetes-validate      checks them against the Kubernetes schema (PyPI: kubernetes-validate)
#
# Extra arguments go to cargo test (e.g. `scripts/test.sh --test security`).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  source "$HOME/.cargo/env"
fi

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
apt_missing=()
command -v redis-server >/dev/null 2>&1 || apt_missing+=(redis-server)
command -v promtool >/dev/null 2>&1 || apt_missing+=(prometheus)
command -v tmux >/dev/null 2>&1 || apt_missing+=(tmux)
command -v faketime >/dev/null 2>&1 || apt_missing+=(faketime)
command -v kubectl >/dev/null 2>&1 || apt_missing+=(kubernetes-client)
if [ ${#apt_missing[@]} -gt 0 ]; then
  echo "installing ${apt_missing[*]}"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}"
fi

npm_missing=()
command -v claude >/dev/null 2>&1 || npm_missing+=(@anthropic-ai/claude-code)
command -v codex >/dev/null 2>&1 || npm_missing+=(@openai/codex)
if [ ${#npm_missing[@]} -gt 0 ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "installing npm"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm
  fi
  echo "installing ${npm_missing[*]}"
  $SUDO npm install -g --no-fund --no-audit "${npm_missing[@]}"
fi

if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "installing kubernetes-validate"
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
fi

cargo test --all-features "$@"
