# syntax=docker/dockerfile:1
# evalstream's container image: `evalstream run` on the configuration at
# /etc/evalstream/config/evalstream.yaml (the image carries deploy/docker/evalstream.yaml there:
# OTLP in on 0.0.0.0:4317 and :4318, the default evaluators, scores on standard output, metrics on
# 0.0.0.0:9464; the Helm chart mounts its own ConfigMap over that folder).
#
#   docker build -t evalstream .
#   docker run --rm -p 4317:4317 -p 4318:4318 -p 9464:9464 evalstream
#
# Built with the Rust release the project is developed and tested with (rust-version in
# Cargo.toml is the oldest it builds with), on Debian 12; run on distroless/cc-debian12, which
# has what the binary links and nothing else: glibc, libgcc, OpenSSL 3 (librdkafka's TLS and
# SASL SCRAM/OAUTHBEARER) and the CA certificates TLS to a managed Kafka or a judge API needs, no
# shell, as user nonroot (65532). scripts/lint-dockerfile.sh checks this file with hadolint.

ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-slim-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# What librdkafka's build needs beside Rust, as scripts/install-build-deps.sh installs on a
# developer's machine: a C toolchain and make (librdkafka is built from source), the OpenSSL
# headers and pkg-config, which finds them. Debian's versions follow the pinned base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# zlib is compiled in (the runtime image has no libz: the build fails if it was linked
# dynamically); debug info is left out of the image.
# The cache mounts keep the registry and the build between image builds (BuildKit).
ENV LIBZ_SYS_STATIC=1 \
    CARGO_PROFILE_RELEASE_DEBUG=0
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p evalstream \
    && install -D -m 0755 target/release/evalstream /out/evalstream \
    && if ldd /out/evalstream | grep -q 'libz\.so'; then echo "zlib is linked dynamically" >&2; exit 1; fi

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/evalstream /usr/local/bin/evalstream
COPY deploy/docker/evalstream.yaml /etc/evalstream/config/evalstream.yaml
# Relative script paths in the configuration (`script: scripts/x.rhai`) are read from here.
WORKDIR /etc/evalstream
USER 65532:65532
# 9464: /metrics, /healthz, /readyz; 4317: OTLP/gRPC; 4318: OTLP/HTTP.
EXPOSE 9464 4317 4318
ENTRYPOINT ["/usr/local/bin/evalstream", "run"]
CMD ["--config", "/etc/evalstream/config/evalstream.yaml"]
