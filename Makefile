# The front door: make deps | build | run | test | unit | demo | bench | soak (CMake does the work).
# Every target that builds first installs what is missing (.ci/deps.sh: as root it runs apt-get;
# otherwise it prints the apt-get command to run and stops), so each works on a fresh Debian.
BUILD_DIR ?= build
CMAKE_FLAGS ?=
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CONFIG ?=
# Written only once cmake has configured BUILD_DIR successfully. A configure that failed halfway
# leaves a CMakeCache.txt but no build files; keying on the cache would skip configure from then
# on, so the stamp is the target, and a failed configure removes the cache it half wrote.
CONFIGURED := $(BUILD_DIR)/.configured

.PHONY: all deps configure build run test unit demo bench soak clean

all: build

deps:
	@bash .ci/deps.sh

$(CONFIGURED):
	@cmake -S . -B $(BUILD_DIR) $(CMAKE_FLAGS) || \
	  { rc=$$?; rm -f $(BUILD_DIR)/CMakeCache.txt; \
	    echo "make: configure failed; the next make configures $(BUILD_DIR) again" >&2; exit $$rc; }
	@touch $@

# deps is a prerequisite of the stamp's maker, not of the stamp, so that it runs on every make
# (a package removed since is noticed) without forcing a reconfigure.
configure: deps
	@$(MAKE) --no-print-directory -s $(CONFIGURED)

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

# With no configuration at all (no CONFIG, no APPLE_AUTH_PROXY_CONFIG, no variable of any
# environment-only set, empty ones counting as unset) the proxy says what to set and exits 2;
# then the demo, which needs none, is pointed at too. A set given in part is a mistake to fix,
# not a reason to try the demo.
CONFIG_VARS := ^(APPLE_AUTH_PROXY_CONFIG|APP_STORE_CONNECT_API_KEY_|WEATHERKIT_|APNS_|APPLE_MAPS_|APPLE_BUSINESS_)[A-Z_]*=.
run: build
	@$(BUILD_DIR)/apple-auth-proxy serve $(if $(CONFIG),--config $(CONFIG)) || { rc=$$?; \
	  if [ $$rc = 2 ] && [ -z "$(CONFIG)" ] && ! env | grep -qE '$(CONFIG_VARS)'; then \
	    echo "make run: to try the proxy first, without an Apple account: make demo" >&2; fi; \
	  exit $$rc; }

test: build
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
