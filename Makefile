# Meridian's build and test entry points. `make test` is what CI runs.
GO ?= go
PKGS := ./...

.PHONY: run test unit check fmt vet staticcheck build bench clean

## run: build, start a whole installation (meridian dev: global, 3 regions,
## 12 machines, a local registry) and deploy the bundled example, then the
## same app from its container image; Ctrl-C stops everything.
run: build
	./bin/meridian dev --deploy examples/hello/meridian.yaml --deploy examples/hello-image/meridian.yaml

## test: every check, then every test with the race detector. Packages run
## one at a time (-p 1): many start real servers, etcd members and
## processes on loopback ports, and in parallel they would race for the
## ports they pick and for the 2 cores their timings assume.
test: check
	$(GO) test -race -count=1 -p 1 -timeout 30m $(PKGS)

## unit: the fast tier while working: pure and in-process tests, without
## the race detector (make test adds it); tests that start processes,
## etcd or installations call testutil.Slow (or their package's TestMain
## testutil.SlowPackage) and are skipped by -short. make test runs all.
unit:
	$(GO) test -short -count=1 $(PKGS)

## check: formatting, go vet and staticcheck.
check: fmt vet staticcheck

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go') 2>/dev/null); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

staticcheck:
	$(GO) tool staticcheck $(PKGS)

## build: the meridian binary and the demo app into bin/ (the demo app
## static: meridian dev puts it alone in an image).
build:
	$(GO) build -o bin/meridian ./cmd/meridian
	CGO_ENABLED=0 $(GO) build -o bin/hello ./examples/hello

## bench: the benchmarks whose figures the issues ask for.
bench:
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS)

clean:
	rm -rf bin
