# syntax=docker/dockerfile:1
# The same image as image/build.sh, for docker buildx users: every platform is cross-compiled on
# the build machine's own platform (no emulation), by the same image/rootfs.sh.
#   docker buildx build --platform linux/amd64,linux/arm64,linux/arm/v7 \
#     --build-arg SUC_GIT_COMMIT=$(git rev-parse --short=12 HEAD) -t REGISTRY/system-upgrade-controller:0.1.0 --push .
# Without a daemon, use image/build.sh, which writes OCI archives.

FROM --platform=$BUILDPLATFORM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv ca-certificates binutils debian-archive-keyring \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The cross toolchain (zig, cargo-zigbuild, the Rust targets, the armhf C library), in its own layer.
COPY image/toolchain.sh image/
RUN bash -c 'source image/toolchain.sh'
# Dependencies only, in a layer of their own that source edits do not invalidate.
ARG TARGETPLATFORM
COPY Cargo.toml Cargo.lock build.rs ./
COPY image/rootfs.sh image/
RUN mkdir -p src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && SUC_GIT_COMMIT=deps bash image/rootfs.sh "$TARGETPLATFORM" /tmp/deps-only \
    && rm -rf src /tmp/deps-only
COPY src src
# The source tree has no .git: the commit comes in as a build argument.
ARG SUC_GIT_COMMIT=unknown
RUN touch src/main.rs src/lib.rs && bash image/rootfs.sh "$TARGETPLATFORM" /rootfs

FROM scratch
COPY --from=build /rootfs/ /
USER 65534:65534
EXPOSE 8443
ENTRYPOINT ["/system-upgrade-controller"]
CMD ["run"]
