# syntax=docker/dockerfile:1
# Build: Go 1.26.4 on Alpine, pinned by digest. The binaries are static.
FROM docker.io/library/golang:1.26.4-alpine@sha256:3ad57304ad93bbec8548a0437ad9e06a455660655d9af011d58b993f6f615648 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd cmd
COPY pkg pkg
COPY internal internal
ARG VERSION=dev
ARG COMMIT=unknown
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" -o /out/ecs-localdisk-csi ./cmd/ecs-localdisk-csi \
 && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/ecs-localdisk-csi-controller ./cmd/ecs-localdisk-csi-controller

# Run: Debian 12 slim, pinned by digest, with every tool the driver runs
# (pkg/mounter Tools; a test checks this list against them).
FROM docker.io/library/debian:bookworm-slim@sha256:3783cc01769c7b2b1b83a5c5ad96c815348e28ed7da68e2e3687004faa906251
RUN apt-get update \
 && apt-get install -y --no-install-recommends util-linux mount e2fsprogs xfsprogs coreutils \
 && rm -rf /var/lib/apt/lists/*
# "ecs-localdisk-csi controller" runs the cluster component from beside it.
COPY --from=build /out/ecs-localdisk-csi /out/ecs-localdisk-csi-controller /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/ecs-localdisk-csi"]
