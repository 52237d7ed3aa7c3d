#!/usr/bin/env sh
# The release build of the container image: the Dockerfile runs exactly this script (twice: once on
# placeholder sources to cache the dependency layer, once on the real sources), and CI runs it too
# (.ci/run), so the image's build command is exercised on every CI run.
#
#   scripts/build-release.sh          -> target/release/relay (stripped, LTO; see [profile.release])
#
# Features: redis (shared cache across replicas). Extra cargo arguments are passed through.
set -eu
cd "$(dirname "$0")/.."
exec cargo build --release --locked --features redis "$@"
