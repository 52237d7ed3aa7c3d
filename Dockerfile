# relay container image: multi-stage build, stripped binary, slim non-root runtime.
#
#   docker build -t relay .
#   docker run -p 127.0.0.1:8080:8080 -e RELAY_SERVER_ALLOW_UNAUTHENTICATED=true \
#     -e OPENAI_API_KEY -e ANTHROPIC_API_KEY relay
#
# (the container listens on all interfaces: with a provider key and auth off relay starts only when
# told that the port is published on the host's loopback alone; for a team, turn auth on.)
#
# The build stage runs scripts/build-release.sh, the same script CI runs, so the image's build command
# and features (redis) are tested on every CI run even though no Docker engine runs there.

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN} AS build
WORKDIR /src
# Dependency layer: built from Cargo.toml and Cargo.lock alone with placeholder sources, so it stays
# cached until the dependencies change.
COPY Cargo.toml Cargo.lock ./
COPY scripts/build-release.sh scripts/build-release.sh
RUN mkdir -p src examples \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > examples/loadtest.rs \
 && scripts/build-release.sh \
 && rm -rf src examples target/release/relay target/release/deps/relay-* target/release/deps/librelay-* \
      target/release/.fingerprint/relay-*
# The real build.
COPY . .
RUN scripts/build-release.sh && cp target/release/relay /usr/local/bin/relay

FROM debian:${DEBIAN}-slim AS runtime
# rustls carries its own root certificates; the system bundle is only for `relay ca path`.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /data --create-home relay
COPY --from=build /usr/local/bin/relay /usr/local/bin/relay
# Names OPENAI_API_KEY and ANTHROPIC_API_KEY, so `docker run -e OPENAI_API_KEY=...` works.
COPY deploy/docker/image.yaml /etc/relay/relay.yaml
# Listen on all interfaces inside the container; the cache file and the local CA go to /data.
ENV RELAY_SERVER_LISTEN=0.0.0.0:8080 \
    XDG_DATA_HOME=/data
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
  CMD ["relay", "health", "--config", "/etc/relay/relay.yaml"]
ENTRYPOINT ["relay"]
CMD ["serve", "--config", "/etc/relay/relay.yaml", "--log-format", "json"]
