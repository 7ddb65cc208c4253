# Switchyard's container image, multi-stage.
#
#   docker build -t switchyard .                  # the proxy (last stage)
#   docker build --target blog -t switchyard-blog .
#   docker compose up                             # the blog example: compose.yaml
#
# The bundled balancers are inside the binary; /etc/switchyard/plugins is for your own
# .wasm files (mount them, then `switchyard ctl reload`). No container engine runs on
# the machines this is developed on: `.ci/check-image` builds the final stage's
# filesystem in a Debian bookworm chroot, by these same instructions, and starts the
# entry point in it (see deploy/docker/README.md for what is and is not checked).

# --- build: the proxy and the blog example, release profile -------------------------
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p switchyard -p switchyard-example-blog

# --- blog: one instance of the example application ----------------------------------
FROM debian:bookworm-slim AS blog
RUN useradd --system --uid 10002 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin blog \
 && mkdir -p /var/lib/blog \
 && chown blog:blog /var/lib/blog
COPY --from=build /src/target/release/blog /usr/local/bin/blog
USER blog
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/blog", "serve"]
CMD ["a", "0.0.0.0:8000", "/var/lib/blog/blog.db"]

# --- switchyard: the proxy (default target) -----------------------------------------
FROM debian:bookworm-slim AS switchyard
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin switchyard \
 && mkdir -p /etc/switchyard/plugins /run/switchyard /var/cache/switchyard /var/lib/switchyard \
 && chown switchyard:switchyard /run/switchyard /var/cache/switchyard /var/lib/switchyard
COPY --from=build /src/target/release/switchyard /usr/local/bin/switchyard
COPY deploy/docker/switchyard.toml /etc/switchyard/switchyard.toml
USER switchyard
# 8080: traffic; 9090: /metrics, /healthz, /ready.
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/switchyard", "run"]
CMD ["--config", "/etc/switchyard/switchyard.toml"]
