# ecs-localdisk-csi
BINARY   := ecs-localdisk-csi
# The version is the committed VERSION file (make release VERSION=vX.Y.Z
# writes it); the commit is git's, with -dirty for uncommitted changes
# ("unknown" outside a git checkout).
VERSION  := $(shell cat VERSION)
COMMIT   := $(or $(shell git rev-parse --short=12 HEAD 2>/dev/null),unknown)$(shell git rev-parse --git-dir >/dev/null 2>&1 && { git diff --quiet HEAD -- || echo -dirty; })
LDFLAGS  := -X main.version=$(VERSION) -X main.commit=$(COMMIT)
IMAGE    ?= ecs-localdisk-csi:$(VERSION)
GO       ?= go
GOFLAGS  ?=
TESTFLAGS ?= -race -count=1 -timeout 20m

.DEFAULT_GOAL := help
# Sub-makes (make release) print no "Entering directory" lines.
MAKEFLAGS += --no-print-directory
KUBECTL ?= kubectl

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## Build bin/ecs-localdisk-csi (the node driver) and bin/ecs-localdisk-csi-controller (the cluster component) with the version and commit stamped in
	$(GO) build $(GOFLAGS) -ldflags "$(LDFLAGS)" -o bin/$(BINARY) ./cmd/$(BINARY)
	$(GO) build $(GOFLAGS) -ldflags "$(LDFLAGS)" -o bin/$(BINARY)-controller ./cmd/$(BINARY)-controller
	@bin/$(BINARY) --version

demo: build ## Run the driver on three loop-device disks and walk volumes through their life (root)
	$(GO) run ./tests/demo --driver bin/$(BINARY)

demo-ecs: build ## The demo with --disk-source=ecs, against a fake ECS on loopback (root)
	$(GO) run ./tests/demo --driver bin/$(BINARY) --disk-source=ecs

test: vet ## Everything CI runs: unit, loop-device integration, csi-sanity and manifest tests (root)
	$(GO) test $(TESTFLAGS) ./...
	cd tests/deploy && $(GO) test -count=1 ./...

unit: ## Unit tests only (no root needed)
	$(GO) test -count=1 ./pkg/... ./cmd/...

KILLS    ?= 1000
FUZZTIME ?= 1m

fault: ## Crash injection: the driver binary SIGKILLed KILLS times (default 1000; make test runs 200) on loop devices, invariants checked after each restart (root)
	$(GO) test -count=1 -v -timeout 0 -run TestCrashInjection ./tests/fault/ -args -fault.kills=$(KILLS) -fault.time=0

fuzz: ## Every fuzz target for FUZZTIME each (default 1m; CI runs 10s)
	@for pkg in $$(grep -l '^func Fuzz' $$(find pkg -name '*_test.go') | xargs -n1 dirname | sort -u); do \
	  for fz in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$pkg/*_test.go | cut -c6-); do \
	    echo "== $$pkg $$fz"; \
	    $(GO) test -run '^$$' -fuzz "^$$fz\$$" -fuzztime $(FUZZTIME) ./$$pkg || exit 1; \
	  done; \
	done

sanity: ## csi-sanity against the real server on loop devices, mount and block (root)
	$(GO) test -count=1 -v ./tests/sanity/... 2>&1 | tail -40

E2E_BIN  ?= $(HOME)/.cache/ecs-localdisk-csi/e2e/bin
K8S_VERSION := v1.36.1
K8S_LDFLAGS := -X k8s.io/component-base/version.gitVersion=$(K8S_VERSION) -X k8s.io/client-go/pkg/version.gitVersion=$(K8S_VERSION) -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=36

# agnhost with its version stamped, from the VERSION file test/utils/image
# expects. Upstream's image build links it statically (CGO_ENABLED=0); here
# it is built with cgo like the Kubernetes binaries, so that it reuses their
# build cache (minutes on a fresh machine), and its image carries its glibc.
AGNHOST_VERSION := 2.63.0

# One build of E2E_BIN at a time: a second make e2e-bins (.ci/run starts one
# early, in the background) waits for the first, then finds it all built.
e2e-bins: ## Build the pinned etcd, Kubernetes, csi-provisioner, e2e.test, ginkgo and agnhost binaries of the e2e suite into E2E_BIN
	@mkdir -p $(E2E_BIN)
	flock $(E2E_BIN)/.build-lock $(MAKE) e2e-bins-locked

e2e-bins-locked:
	cd tests/e2e && $(GO) build -o $(E2E_BIN)/ -ldflags "$(K8S_LDFLAGS)" \
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl
	cd tests/e2e && $(GO) build -o $(E2E_BIN)/csi-provisioner -ldflags "-X main.version=v6.4.0" \
		github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner
	cd tests/e2e && $(GO) build -o $(E2E_BIN)/etcd go.etcd.io/etcd/server/v3
	cd tests/e2e && $(GO) test -c -o $(E2E_BIN)/e2e.test -ldflags "$(K8S_LDFLAGS)" k8s.io/kubernetes/test/e2e
	cd tests/e2e && $(GO) build -o $(E2E_BIN)/ginkgo github.com/onsi/ginkgo/v2/ginkgo
	cd tests/e2e && $(GO) build -o $(E2E_BIN)/agnhost -ldflags "-w -X main.Version=$(AGNHOST_VERSION)" \
		k8s.io/kubernetes/test/images/agnhost
	@ls -la $(E2E_BIN)

e2e: e2e-bins ## The end-to-end suite: control plane, a real kubelet, kubelet-less nodes, the examples (root)
	cd tests/e2e && E2E_BIN=$(E2E_BIN) $(GO) test -count=1 -v -timeout 40m ./...

CONFORMANCE_PROCS ?= 4
conformance: e2e-bins ## Kubernetes' own external storage e2e suite (e2e.test v1.36.1) against the driver on two real kubelets; prints the suite's counts, report in bin/conformance (root)
	cd tests/e2e && E2E_BIN=$(E2E_BIN) $(GO) test -count=1 -v -timeout 90m -run '^TestConformance$$' . \
		-args -conformance -conformance.procs=$(CONFORMANCE_PROCS) -conformance.report=$(CURDIR)/bin/conformance

bench-e2e: e2e-bins ## StatefulSet binding without volumes, on static local PVs and with the driver (10x5, then 20x10 nodes x disks); a pod on a real kubelet (root)
	cd tests/e2e && E2E_BIN=$(E2E_BIN) $(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 40m .
	cd tests/e2e && E2E_BIN=$(E2E_BIN) $(GO) test -count=1 -run '^$$' -bench BenchmarkStatefulSetBinding -benchtime 1x -timeout 60m . -bench-nodes 20 -bench-disks 10

bench: ## Benchmarks, printing their figures (the loop-device ones need root)
	$(GO) test -run '^$$' -bench . -benchmem ./pkg/...
	$(GO) test -run '^$$' -bench . -benchtime 3x ./tests/integration/

vet: ## go vet and gofmt
	$(GO) vet ./...
	cd tests/deploy && $(GO) vet ./...
	cd tests/image && $(GO) vet ./...
	@out=$$(gofmt -l cmd pkg internal tests); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

lint: vet ## Static checks (vet, gofmt)

image: ## Build the container image IMAGE (needs a Docker engine; the README says how to push it)
	docker build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) -t $(IMAGE) .

# Only the manifests reach stdout, so make deploy | kubectl apply -f - works:
# kubectl's own kustomize when kubectl is installed, else kustomize built
# from the Go module proxy.
deploy: ## Print the manifests of OVERLAY (ecs, the default, or static) for kubectl apply -f -
	@overlay=deploy/kubernetes/overlays/$(or $(OVERLAY),ecs); \
	if command -v $(KUBECTL) >/dev/null 2>&1; then $(KUBECTL) kustomize $$overlay; \
	else cd tests/deploy && $(GO) run sigs.k8s.io/kustomize/kustomize/v5@v5.8.1 build ../../$$overlay; fi

image-check: ## Build the image from the Dockerfile with buildah on stand-in bases made from Debian's packages, check its version and tools, write bin/$(BINARY)-image.oci.tar (root; about 5 minutes, 8 cold)
	cd tests/image && $(GO) test -count=1 -v -timeout 40m . -args -version=$(VERSION) -commit=$(COMMIT) -oci=$(CURDIR)/bin/$(BINARY)-image.oci.tar

manifests: ## Render deploy/kubernetes/base from the Helm chart (edit the chart, never the base)
	cd tests/deploy && $(GO) run ./cmd/genbase

HELM ?= helm
chart: ## Print the Helm chart rendered as helm template does, with SET (e.g. SET='diskSource=static,static.devices={/dev/vdb}')
	@if command -v $(HELM) >/dev/null 2>&1; then h=$(HELM); else h="$(GO) run helm.sh/helm/v3/cmd/helm@v3.22.0"; fi; \
	cd tests/deploy && $$h template ecs-localdisk-csi ../../deploy/helm/ecs-localdisk-csi --namespace ecs-localdisk-csi $(if $(SET),--set '$(SET)')

release: ## Stamp VERSION=vX.Y.Z into VERSION, CHANGELOG.md, the overlays and the chart, render the base, build the binary
	@test -n "$(filter command line,$(origin VERSION))" || { echo "usage: make release VERSION=vX.Y.Z" >&2; exit 2; }
	$(GO) run ./internal/release -version $(VERSION)
	$(MAKE) manifests
	$(MAKE) build VERSION=$(VERSION)

clean: ## Remove build output
	rm -rf bin

.PHONY: e2e-bins-locked conformance image-check manifests chart release help build demo demo-ecs e2e-bins e2e bench-e2e test unit fault fuzz sanity bench vet lint image deploy clean
