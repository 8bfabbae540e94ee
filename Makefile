# Kelpie's build. `make test` is the one command that runs everything CI runs.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

GO      ?= go
BIN     := $(CURDIR)/bin
DST     := $(BIN)/kelpie-dst
SEED    ?= 1
# The sweep make test runs: 100 seeds of every simulation is about 10 of CI's
# 20 minutes on 2 cores; SEEDS=1-1000 sweeps more.
SEEDS   ?= 1-100
PKG     ?=
RUN     ?= ^TestSim

.PHONY: all build test unit lint fmt vet wasip1 sim sim-check bench clean $(BIN)/kelpie $(DST) $(BIN)/kelpie-lint $(BIN)/kelpie-scenarios.wasm

all: build

## build: the kelpie binary, the executor, the checker and the scenarios module, in bin/
build: $(BIN)/kelpie $(DST) $(BIN)/kelpie-lint $(BIN)/kelpie-scenarios.wasm

$(BIN)/kelpie:
	$(GO) build -o $@ ./cmd/kelpie

$(DST):
	$(GO) build -o $@ ./cmd/kelpie-dst

$(BIN)/kelpie-lint:
	$(GO) build -o $@ ./cmd/kelpie-lint

$(BIN)/kelpie-scenarios.wasm:
	GOOS=wasip1 GOARCH=wasm $(GO) build -o $@ ./cmd/kelpie-scenarios

## test: formatting, vet, the boundary checker, the wasip1 build check, every
## test natively, the simulations under the executor, and the determinism sweep
test: lint unit sim sim-check

lint: fmt vet wasip1 $(BIN)/kelpie-lint
	$(BIN)/kelpie-lint ./...

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

wasip1:
	scripts/check-wasip1.sh

## unit: every test natively, with the race detector; fails on unexpected skips
unit:
	scripts/gotest.sh

## sim: every simulation test under the executor with SEED (PKG=./dir RUN=regexp narrow it)
sim: $(DST)
	scripts/sim.sh run "$(SEED)" "$(PKG)" "$(RUN)"

## sim-check: SEED twice, traces compared byte for byte, then a sweep of SEEDS
sim-check: $(DST) $(BIN)/kelpie $(BIN)/kelpie-scenarios.wasm
	scripts/sim.sh check "$(SEED)" "$(PKG)" "$(RUN)" "$(SEEDS)"

## bench: the benchmarks (figures, not assertions)
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

clean:
	rm -rf $(BIN)
