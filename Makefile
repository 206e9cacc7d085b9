# The front door: make deps | build | run | test | demo | bench | soak (CMake does the work).
BUILD_DIR ?= build
CMAKE_FLAGS ?=
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CONFIG ?=

.PHONY: all deps configure build run test unit demo bench soak clean

all: build

deps:
	@bash .ci/deps.sh

$(BUILD_DIR)/CMakeCache.txt:
	cmake -S . -B $(BUILD_DIR) $(CMAKE_FLAGS)

configure: $(BUILD_DIR)/CMakeCache.txt

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

run: build
	./$(BUILD_DIR)/apple-auth-proxy serve $(if $(CONFIG),--config $(CONFIG))

test: deps
	$(MAKE) build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)

unit: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) -L unit

demo: build
	/usr/bin/python3 tests/upstream/demo.py --binary $(BUILD_DIR)/apple-auth-proxy

# Side by side with nginx and HAProxy (docs/performance.md); installs its tools when root.
bench: build
	/usr/bin/python3 tests/bench/bench.py --binary $(BUILD_DIR)/apple-auth-proxy

# Minutes of mixed load while the upstream fails on a schedule (docs/testing.md); not in
# `make test`. SOAK_SECONDS=120 make soak for a shorter run.
soak: build
	/usr/bin/python3 tests/soak/soak.py --binary $(BUILD_DIR)/apple-auth-proxy

clean:
	rm -rf $(BUILD_DIR)
