# The two commands: `make demo` and `make test`. Also `make bench` and `make fuzz`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: demo test bench fuzz build lint fmt clean

## Build, start a control plane, enroll and run an agent, apply examples/plan.yaml
## on the simulated cloud, verify the audit log, stop everything.
## CLOUD=aws-emulator: the same against moto, the AWS emulator, through the AWS provider.
CLOUD ?= sim
demo:
	CLOUD=$(CLOUD) ./scripts/demo.sh

## The whole test suite: formatting, lints, unit, integration and end-to-end tests.
test:
	./scripts/test.sh

## Benchmarks (release build): dispatch latency, throughput, idle memory.
bench:
	$(CARGO) build --release --workspace --bins
	$(CARGO) run --release -p byoc-tests --bin byoc-bench

## Fuzz smoke run: every target in fuzz/ for FUZZ_RUNS inputs (default 20000)
## each, no crash allowed. Not part of `make test`; see docs/fuzzing.md.
fuzz:
	./scripts/fuzz.sh

build:
	$(CARGO) build --workspace --bins

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf demo-data
