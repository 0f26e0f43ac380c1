# Build: docker build -t ferry .
# Run:   docker run -p 9092:9092 -p 5672:5672 -p 8080:8080 -v ferry-data:/var/lib/ferry ferry
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
RUN useradd --system --home /var/lib/ferry ferry \
    && mkdir -p /var/lib/ferry /etc/ferry \
    && chown ferry /var/lib/ferry
COPY --from=build /src/target/release/ferry /usr/local/bin/ferry
COPY config/ferry.toml /etc/ferry/ferry.toml
USER ferry
ENV FERRY_DATA_DIR=/var/lib/ferry
VOLUME /var/lib/ferry
EXPOSE 9092 5672 8080
# Kafka clients must reach the advertised address; set FERRY_KAFKA_ADVERTISED=host:port when
# the container's own address is not reachable by them (port mapping, NAT).
HEALTHCHECK --interval=10s --timeout=3s CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q '200 OK' <&3"]
ENTRYPOINT ["/usr/local/bin/ferry"]
CMD ["serve", "--config", "/etc/ferry/ferry.toml"]
