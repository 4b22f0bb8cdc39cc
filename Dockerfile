# A static binary on an empty base image, running as an unprivileged user.
#   docker build -t system-upgrade-controller:0.1.0 .
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 -t <registry>/system-upgrade-controller:0.1.0 .
# (each platform builds natively, under emulation when needed).

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
RUN cargo build --release --locked --bin system-upgrade-controller --target "$(uname -m)-unknown-linux-musl" \
    && cp "target/$(uname -m)-unknown-linux-musl/release/system-upgrade-controller" /system-upgrade-controller

FROM scratch
# Root CAs for channel URLs; time zones are compiled into the binary.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /system-upgrade-controller /system-upgrade-controller
USER 65534:65534
EXPOSE 8443
ENTRYPOINT ["/system-upgrade-controller"]
CMD ["run"]
