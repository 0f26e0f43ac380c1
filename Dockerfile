# Build: docker build -t ferry .            (or: podman build -t ferry .)
# Run:   docker run -p 9092:9092 -p 5672:5672 -p 8080:8080 -v ferry-data:/var/lib/ferry \
#          -e FERRY_KAFKA_ADVERTISED=localhost:9092 ferry
#
# FERRY_KAFKA_ADVERTISED: Kafka clients connect to the address the broker advertises in its
# Metadata answers, not to the one they bootstrapped from. Inside a container the broker sees
# its own address; set FERRY_KAFKA_ADVERTISED to the HOST:PORT clients can reach (the published
# port on the host, or the service name in compose/Kubernetes).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# The patched kafka-protocol (see vendor/README.md) is a build input.
COPY vendor ./vendor
COPY src ./src
COPY benches ./benches
COPY config ./config
COPY proto ./proto
RUN cargo build --release --locked --bin ferry

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/ferry --shell /usr/sbin/nologin ferry \
    && mkdir -p /var/lib/ferry /etc/ferry \
    && chown ferry:ferry /var/lib/ferry
COPY --from=build /src/target/release/ferry /usr/local/bin/ferry
COPY config/ferry.toml /etc/ferry/ferry.toml
USER ferry
ENV FERRY_DATA_DIR=/var/lib/ferry
VOLUME /var/lib/ferry
EXPOSE 9092 5672 8080 7447/udp
# Ready means recovered and every listener accepting (not only "the process is up").
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/readyz"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ferry"]
CMD ["serve", "--config", "/etc/ferry/ferry.toml"]
