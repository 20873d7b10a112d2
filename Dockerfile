# syntax=docker/dockerfile:1
#
# docker-flow-proxy as a container image: one statically linked binary on an empty base.
#
#   docker build -t docker-flow-proxy .
#
# The builder links glibc into the binary (crt-static), so the runtime stage needs no libc,
# no shell and no package manager: it holds the binary, CA certificates (for Consul over
# https), a non-root user and a writable working directory for the standalone state file.
# Needs BuildKit (the default builder since Docker 23). README.md, section "Docker", has the
# walk-through and the port-80 notes.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder

# A failing command anywhere in a pipe fails the build.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# setcap (libcap2-bin) gives the binary the right to bind port 80; `file` checks it is static.
# Unpinned: within a Debian release these only change by security and point updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libcap2-bin file \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# Built for the builder's own architecture; .ci/run builds and checks the same way.
# Debug info is stripped, symbols stay, so a backtrace still names its functions.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-gnu" \
 && RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    cargo build --release --locked -p docker-flow-proxy --target "$target" \
 && install -m 0755 "target/$target/release/docker-flow-proxy" /usr/local/bin/docker-flow-proxy

# The binary must not need a loader or a shared library: the runtime stage has neither.
RUN file /usr/local/bin/docker-flow-proxy \
 && file /usr/local/bin/docker-flow-proxy | grep -Eq 'statically linked|static-pie linked' \
 && docker-flow-proxy --version

# Port 80 as a non-root user: the file capability cap_net_bind_service, kept in the file's
# security.capability attribute. BuildKit's COPY --from carries it over; a chown clears it,
# so the binary is copied as it is (owned by root) and never with --chown.
RUN setcap cap_net_bind_service=+ep /usr/local/bin/docker-flow-proxy \
 && getcap /usr/local/bin/docker-flow-proxy | grep -q cap_net_bind_service

# The rest of the runtime file system: CA certificates, names for the two users (for tools
# that print them), and the state directory (also the working directory), owned by the
# runtime user: scratch has no mkdir, so it is made here and copied with --chown.
RUN mkdir -p /rootfs/etc/ssl/certs /state \
 && cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ca-certificates.crt \
 && printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/var/lib/docker-flow-proxy:/sbin/nologin\n' \
    > /rootfs/etc/passwd \
 && printf 'root:x:0:\nnonroot:x:65532:\n' > /rootfs/etc/group \
 && chown 65532:65532 /state


FROM scratch AS runtime

COPY --from=builder /rootfs/ /
COPY --from=builder /usr/local/bin/docker-flow-proxy /usr/local/bin/docker-flow-proxy
COPY --from=builder --chown=65532:65532 /state/ /var/lib/docker-flow-proxy/

# DFP_STATE_FILE: the standalone state file (--state-file), in the directory above that
# belongs to the runtime user; uploaded certificates go to certs/ beside it. (Outside the
# image the default is the XDG state directory, which here would be the user's $HOME.)
ENV PATH=/usr/local/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    DFP_STATE_FILE=/var/lib/docker-flow-proxy/state.json

WORKDIR /var/lib/docker-flow-proxy
USER 65532:65532

# 80: the proxy (--listen); 443: HTTPS (--tls-listen); 8080: the admin API (--admin-listen).
EXPOSE 80 443 8080

# `ping` asks the admin API at DFP_ADMIN (default http://127.0.0.1:8080): set DFP_ADMIN too
# when --admin-listen moves.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["docker-flow-proxy", "ping"]

ENTRYPOINT ["docker-flow-proxy"]
CMD ["server"]

LABEL org.opencontainers.image.title="docker-flow-proxy" \
      org.opencontainers.image.description="A reverse proxy for services registered in Consul, reconfigured live without reloads." \
      org.opencontainers.image.licenses="MIT"
