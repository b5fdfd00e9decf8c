# Wick's container image: `wick serve` on CPU (default) or CUDA (`--build-arg VARIANT=cuda`).
#
#   docker build -t wick:cpu .
#   docker build -t wick:cuda --build-arg VARIANT=cuda .
#   docker run -p 8080:8080 -v wick-models:/models wick:cpu
#
# Stages: `chef` (cargo-chef on the Rust image) -> `planner` (the dependency recipe) ->
# `builder-<variant>` (dependencies cooked in their own layer, then Wick) -> the runtime image:
# slim Debian (CPU) or the CUDA runtime (GPU), a non-root user, configuration from WICK_* env
# vars, the model under /models (mounted, or fetched there with `wick-fetch-model`).
# Every base image is a build argument, so an offline build can point them at local images
# (scripts/build-image.sh does).

ARG VARIANT=cpu
ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG CUDA_DEVEL_IMAGE=docker.io/nvidia/cuda:13.0.1-devel-ubuntu24.04
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim
ARG CUDA_RUNTIME_IMAGE=docker.io/nvidia/cuda:13.0.1-runtime-ubuntu24.04

FROM ${RUST_IMAGE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder-cpu
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: this layer is reused until Cargo.toml or Cargo.lock change.
RUN cargo chef cook --release --recipe-path recipe.json -p wick-router
COPY . .
RUN cargo build --release -p wick-router --bin wick \
    && install -m 0755 target/release/wick /usr/local/bin/wick

FROM ${CUDA_DEVEL_IMAGE} AS builder-cuda
# The CUDA devel image has nvcc and the headers but no Rust: take the toolchain from the Rust
# image. DL3008: Ubuntu's point releases are fixed by the image tag.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
COPY --from=chef /usr/local/cargo /usr/local/cargo
COPY --from=chef /usr/local/rustup /usr/local/rustup
# candle compiles its kernels for this compute capability (no GPU to ask at build time);
# 90 is the H100/H200.
ARG CUDA_COMPUTE_CAP=90
ENV CARGO_HOME=/usr/local/cargo RUSTUP_HOME=/usr/local/rustup PATH=/usr/local/cargo/bin:$PATH \
    CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
WORKDIR /src
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json -p wick-router --features cuda
COPY . .
RUN cargo build --release -p wick-router --bin wick --features cuda \
    && install -m 0755 target/release/wick /usr/local/bin/wick

# DL3006: `builder-cpu`/`builder-cuda` and `runtime-cpu`/`runtime-cuda` are stages, not images.
# hadolint ignore=DL3006
FROM builder-${VARIANT} AS builder

FROM ${RUNTIME_IMAGE} AS runtime-cpu
FROM ${CUDA_RUNTIME_IMAGE} AS runtime-cuda

# DL3006: `runtime-${VARIANT}` is one of the two stages above, not an image.
# hadolint ignore=DL3006
FROM runtime-${VARIANT}
# curl for the health check; python3 and pip for wick-fetch-model (an init container that fills
# /models). DL3008: versions come from the base image's release, which the tag pins.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl passwd python3 python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/wick wick \
    && mkdir -p /models && chown wick:wick /models
COPY --from=builder /usr/local/bin/wick /usr/local/bin/wick
COPY scripts/fetch-model.sh /usr/local/bin/wick-fetch-model
COPY scripts/catalogue.txt /usr/local/bin/catalogue.txt
ENV WICK_HOST=0.0.0.0 \
    WICK_PORT=8080 \
    WICK_MODEL=/models/SmolLM2-135M-Instruct.Q4_1.gguf \
    WICK_MODELS_DIR=/models \
    WICK_LOG_FORMAT=json
USER 10001:10001
WORKDIR /home/wick
VOLUME ["/models"]
EXPOSE 8080
# DL3025: the shell form is on purpose, to follow WICK_PORT when it is overridden.
# hadolint ignore=DL3025
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${WICK_PORT}/health" || exit 1
ENTRYPOINT ["wick", "serve"]
