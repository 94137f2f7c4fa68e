# Flotilla. `make run` starts a node with a service on it; `make test` runs
# every test. Both install what they need first (idempotently).
export GOTOOLCHAIN := local
GO ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
BIN := bin
# Packages whose tests run under the race detector too (they are concurrent).
RACE_PKGS := ./raft/... ./manager/... ./node/... ./agent/... ./ca/... ./clock/...

.PHONY: all build deps generate check-generated vet test test-unit test-race bench run clean

all: build

deps:
	@bash scripts/deps.sh

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/swarmd ./swarmd
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/swarmctl ./swarmctl
	$(GO) build -o $(BIN)/busybox-image ./scripts/busybox-image

generate: deps
	bash protobuf/generate.sh

check-generated: deps
	bash protobuf/check-generated.sh

vet:
	@test -z "$$(gofmt -l $$(find . -name '*.go' -not -path './bin/*'))" || { echo "gofmt needed on:"; gofmt -l $$(find . -name '*.go' -not -path './bin/*'); exit 1; }
	$(GO) vet ./...

test: deps check-generated vet build
	$(GO) test -count=1 -timeout 20m ./...
	$(GO) test -count=1 -race -timeout 20m $(RACE_PKGS)

bench: build
	$(GO) test -run '^$$' -bench . -benchtime 2s -timeout 30m ./raft/ ./manager/

run: deps build
	bash scripts/run.sh

clean:
	rm -rf $(BIN)
