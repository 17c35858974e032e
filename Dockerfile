# syntax=docker/dockerfile:1.7
#
# Images of the heartbeat mesh, one target per binary (build context: the
# repository root):
#
#   docker build --target svc-ingest -t registry.example.com/heartbeat-mesh/svc-ingest:0.1.0 .
#   docker build --target svc-stream -t registry.example.com/heartbeat-mesh/svc-stream:0.1.0 .
#   docker build --target svc-query  -t registry.example.com/heartbeat-mesh/svc-query:0.1.0 .
#   docker build --target hbmesh     -t registry.example.com/heartbeat-mesh/hbmesh:0.1.0 .
#
# One builder stage compiles the four release binaries in a single cargo run
# (shared dependencies build once; BuildKit reuses the stage for every
# target). Runtime images are distroless (glibc + libssl, no shell, no package
# manager) and run as the distroless `nonroot` user, uid 65532.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
# cmake: librdkafka's build (rdkafka-sys); protoc comes vendored with the proto crate.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
        -p svc-ingest --bin svc-ingest \
        -p svc-stream --bin svc-stream \
        -p svc-query --bin svc-query \
        -p hbmesh --bin hbmesh \
 && mkdir -p /out/bin /out/lib /out/data \
 && cp target/release/svc-ingest target/release/svc-stream target/release/svc-query target/release/hbmesh /out/bin/ \
 # Shared libraries the binaries need beyond what distroless/cc ships
 # (glibc, libgcc, libstdc++, libssl/libcrypto): e.g. libz for librdkafka.
 && for lib in $(ldd /out/bin/* | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u); do \
      case "$(basename "$lib")" in \
        libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libgcc_s.so*|libstdc++.so*|libssl.so*|libcrypto.so*) ;; \
        *) cp -L "$lib" /out/lib/ ;; \
      esac; \
    done

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/lib/ /usr/local/lib/hbmesh/
ENV LD_LIBRARY_PATH=/usr/local/lib/hbmesh \
    HB_LOG_FORMAT=json
USER 65532:65532

FROM runtime AS svc-ingest
COPY --from=build /out/bin/svc-ingest /usr/local/bin/svc-ingest
ENV HB_INGEST_ADDR=0.0.0.0:50051 \
    HB_INGEST_METRICS_ADDR=0.0.0.0:9101
EXPOSE 50051 9101
ENTRYPOINT ["/usr/local/bin/svc-ingest"]

FROM runtime AS svc-stream
COPY --from=build /out/bin/svc-stream /usr/local/bin/svc-stream
ENV HB_STREAM_METRICS_ADDR=0.0.0.0:9102
EXPOSE 9102
ENTRYPOINT ["/usr/local/bin/svc-stream"]

FROM runtime AS svc-query
COPY --from=build /out/bin/svc-query /usr/local/bin/svc-query
ENV HB_QUERY_HTTP_ADDR=0.0.0.0:8080 \
    HB_QUERY_GRPC_ADDR=0.0.0.0:50052 \
    HB_QUERY_METRICS_ADDR=0.0.0.0:9103
EXPOSE 8080 50052 9103
ENTRYPOINT ["/usr/local/bin/svc-query"]

# The operator CLI (`hbmesh up`, `hbmesh token`, `hbmesh simulate`, ...).
# `hbmesh up` keeps its embedded store in HB_DATA_DIR: mount a volume there.
FROM runtime AS hbmesh
COPY --from=build /out/bin/hbmesh /usr/local/bin/hbmesh
COPY --from=build --chown=65532:65532 /out/data /var/lib/hbmesh
ENV HB_DATA_DIR=/var/lib/hbmesh
WORKDIR /var/lib/hbmesh
ENTRYPOINT ["/usr/local/bin/hbmesh"]
