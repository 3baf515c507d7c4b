# ecs-localdisk-csi
BINARY   := ecs-localdisk-csi
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
IMAGE    ?= ecs-localdisk-csi:$(VERSION)
GO       ?= go
GOFLAGS  ?=
TESTFLAGS ?= -race -count=1 -timeout 20m

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## Build bin/ecs-localdisk-csi with the version stamped in
	$(GO) build $(GOFLAGS) -ldflags "$(LDFLAGS)" -o bin/$(BINARY) ./cmd/$(BINARY)

demo: build ## Run the driver on three loop-device disks and walk volumes through their life (root)
	$(GO) run ./tests/demo --driver bin/$(BINARY)

demo-ecs: build ## The demo with --disk-source=ecs, against a fake ECS on loopback (root)
	$(GO) run ./tests/demo --driver bin/$(BINARY) --disk-source=ecs

test: vet ## Everything CI runs: unit, loop-device integration, csi-sanity and manifest tests (root)
	$(GO) test $(TESTFLAGS) ./...
	cd tests/deploy && $(GO) test -count=1 ./...

unit: ## Unit tests only (no root needed)
	$(GO) test -count=1 ./pkg/... ./cmd/...

sanity: ## csi-sanity against the real server on loop devices, mount and block (root)
	$(GO) test -count=1 -v ./tests/sanity/... 2>&1 | tail -40

bench: ## Benchmarks, printing their figures (the loop-device ones need root)
	$(GO) test -run '^$$' -bench . -benchmem ./pkg/...
	$(GO) test -run '^$$' -bench . -benchtime 3x ./tests/integration/

vet: ## go vet and gofmt
	$(GO) vet ./...
	cd tests/deploy && $(GO) vet ./...
	@out=$$(gofmt -l cmd pkg internal tests); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

lint: vet ## Static checks (vet, gofmt)

image: ## Build the container image (needs a Docker engine)
	docker build --build-arg VERSION=$(VERSION) -t $(IMAGE) .

deploy: ## Render the manifests of OVERLAY (static or ecs), as kubectl kustomize does
	cd tests/deploy && $(GO) run sigs.k8s.io/kustomize/kustomize/v5@v5.8.1 build ../../deploy/kubernetes/overlays/$(or $(OVERLAY),static)

clean: ## Remove build output
	rm -rf bin

.PHONY: help build demo demo-ecs test unit sanity bench vet lint image deploy clean
