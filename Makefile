# idemproxy - build, test, run.
#
#   make                 build build/idemproxy
#   make test            unit tests (Check) and end-to-end tests (real redis-server)
#   make test SANITIZE=1 the same, built with ASan + UBSan (into build/san/)
#   make run             a private redis-server, a demo upstream and idemproxy
#   make install         PREFIX=/usr/local DESTDIR= (BINDIR UNITDIR MANDIR)
#   make deb             a Debian package in build/deb/ (debhelper)
#   make deb-test        that package checked: lintian, man pages, installed
#                        into a scratch root and run against a real redis-server
#
# Every library comes from pkg-config; llhttp's C sources come from Debian's
# node-llhttp package and are compiled into the build.

CC ?= cc
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
UNITDIR ?= $(PREFIX)/lib/systemd/system
MANDIR ?= $(PREFIX)/share/man
SANITIZE ?= 0

PKGS := libevent libevent_openssl hiredis openssl
LLHTTP_SRC_DIR := /usr/share/llhttp
LLHTTP_INC_DIR := /usr/share/include/llhttp
DEB_PACKAGES := libevent-dev libhiredis-dev node-llhttp libssl-dev check pkg-config redis-server python3

# The version is written once, in the first line of debian/changelog: the
# binary (-v), the man pages and the package all take it from there.
VERSION := $(shell sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' debian/changelog)

# `make V=1` shows the full commands.
V ?= 0
ifeq ($(V),1)
Q :=
else
Q := @
endif

WARNINGS := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 -Werror
OPTFLAGS ?= -O2 -g
BUILD := build
ifeq ($(SANITIZE),1)
OPTFLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
BUILD := build/san
endif

PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CHECK_CFLAGS = $(shell pkg-config --cflags check 2>/dev/null)
CHECK_LIBS = $(shell pkg-config --libs check 2>/dev/null)

# llhttp's strict mode is a compile-time switch its Debian header turns off:
# it must be on for llhttp's own sources and for every file that includes it.
LLHTTP_FLAGS := -DLLHTTP_STRICT_MODE=1 -I$(LLHTTP_INC_DIR)
CPPFLAGS += -D_GNU_SOURCE -Isrc $(LLHTTP_FLAGS)
ALL_CFLAGS = -std=c11 $(OPTFLAGS) $(WARNINGS) $(PKG_CFLAGS) $(CPPFLAGS) $(CFLAGS)
LDFLAGS_ALL = $(OPTFLAGS) $(LDFLAGS)

SRCS := $(wildcard src/*.c)
OBJS := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(SRCS))
LIB_OBJS := $(filter-out $(BUILD)/obj/main.o,$(OBJS))
LLHTTP_OBJS := $(BUILD)/obj/llhttp/api.o $(BUILD)/obj/llhttp/http.o $(BUILD)/obj/llhttp/llhttp.o
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRCS))
UPSTREAM_BIN := $(BUILD)/test-upstream

.PHONY: all deps test unit e2e run bench bench-instructions fuzz install clean format format-check man deb deb-test

all: $(BUILD)/idemproxy

$(BUILD)/idemproxy: $(OBJS) $(LLHTTP_OBJS)
	@echo "  LD      $@"
	$(Q)$(CC) -o $@ $^ $(LDFLAGS_ALL) $(PKG_LIBS)

$(BUILD)/obj/%.o: src/%.c $(wildcard src/*.h) | $(BUILD)/obj
	@echo "  CC      $<"
	$(Q)$(CC) $(ALL_CFLAGS) -MMD -c -o $@ $<

$(BUILD)/obj/main.o: CPPFLAGS += -DIDEMPROXY_VERSION='"$(VERSION)"'
$(BUILD)/obj/main.o: debian/changelog

# llhttp is generated code: its own warnings are not ours to fix. CFLAGS and
# CPPFLAGS still apply (the Debian package's hardening flags, for one).
$(BUILD)/obj/llhttp/%.o: $(LLHTTP_SRC_DIR)/%.c | $(BUILD)/obj
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) -std=c11 $(OPTFLAGS) -w $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c tests/unit/unit.h $(LIB_OBJS) $(LLHTTP_OBJS) | $(BUILD)/obj
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(ALL_CFLAGS) $(CHECK_CFLAGS) -Itests/unit -o $@ $< $(LIB_OBJS) $(LLHTTP_OBJS) \
		$(LDFLAGS_ALL) $(PKG_LIBS) $(CHECK_LIBS)

$(UPSTREAM_BIN): tests/upstream/upstream.c | $(BUILD)/obj
	@echo "  CC      $<"
	$(Q)$(CC) $(ALL_CFLAGS) -o $@ $< $(LDFLAGS_ALL) $(PKG_LIBS)

$(BUILD)/obj:
	@mkdir -p $@

-include $(OBJS:.o=.d)

# $(call install_missing,PACKAGES[,APT_OPTIONS]): apt-get installs those not
# yet installed (needs root or sudo, as on a fresh CI machine); silent when
# all are there.
define install_missing
	@missing=""; \
	for p in $(1); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(2) $$missing; \
	fi
endef

# Installs whatever Debian package the build and tests need.
deps:
	$(call install_missing,$(DEB_PACKAGES))

# Man pages (scripts/manpage.py): idemproxy.conf(5) is made from
# docs/configuration.md, idemproxy(8) filled in from docs/idemproxy.8.in.
# Outside $(BUILD): test_docs checks build/man/idemproxy.conf.5 in every build.
MAN_DIR := build/man
MAN_PAGES := $(MAN_DIR)/idemproxy.conf.5 $(MAN_DIR)/idemproxy.8

man: $(MAN_PAGES)

$(MAN_DIR)/idemproxy.conf.5: docs/configuration.md scripts/manpage.py debian/changelog
	@mkdir -p $(dir $@)
	@echo "  MAN     $@"
	$(Q)python3 scripts/manpage.py conf $< > $@.tmp && mv $@.tmp $@

$(MAN_DIR)/idemproxy.8: docs/idemproxy.8.in scripts/manpage.py debian/changelog
	@mkdir -p $(dir $@)
	@echo "  MAN     $@"
	$(Q)python3 scripts/manpage.py page $< > $@.tmp && mv $@.tmp $@

unit: $(UNIT_BINS) $(MAN_DIR)/idemproxy.conf.5
	@set -e; for t in $(UNIT_BINS); do $$t; done

# Real client libraries some e2e tests drive (tests/e2e/sdk/package.json,
# versions pinned by its package-lock.json): Node.js and npm from Debian
# when the machine has none, the packages from the npm registry.
SDK_DIR := tests/e2e/sdk
%/node_modules/.installed: %/package.json %/package-lock.json
	@command -v node >/dev/null || $(MAKE) --no-print-directory deps DEB_PACKAGES=nodejs
	@command -v npm >/dev/null || $(MAKE) --no-print-directory deps DEB_PACKAGES=npm
	cd $* && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

e2e: $(BUILD)/idemproxy $(UPSTREAM_BIN) $(SDK_DIR)/node_modules/.installed
	IDEMPROXY_BIN=$(BUILD)/idemproxy UPSTREAM_BIN=$(UPSTREAM_BIN) SANITIZE=$(SANITIZE) \
		python3 tests/e2e/run.py

test: deps
	@$(MAKE) --no-print-directory all unit e2e

run: deps
	@$(MAKE) --no-print-directory all $(UPSTREAM_BIN)
	@IDEMPROXY_BIN=$(BUILD)/idemproxy UPSTREAM_BIN=$(UPSTREAM_BIN) sh scripts/demo.sh

# idemproxy against nginx with wrk, on this machine (tests/bench/bench.py,
# docs/performance.md). BENCH_DURATION, BENCH_WORKERS, BENCH_CONNECTIONS...
# The in-process peer of the benchmark (tests/bench/peer, installed by the
# rule above): its rows are marked not run when the npm registry cannot be
# reached.
PEER_DIR := tests/bench/peer

bench: deps
	$(call install_missing,wrk nginx)
	@$(MAKE) --no-print-directory $(PEER_DIR)/node_modules/.installed || \
		echo "bench: the in-process peer's packages are missing; its rows will not run"
	@$(MAKE) --no-print-directory all $(UPSTREAM_BIN)
	@IDEMPROXY_BIN=$(BUILD)/idemproxy BENCH_OUT=$${BENCH_OUT:-$(BUILD)/bench-results.md} python3 tests/bench/bench.py

# Instructions per request under callgrind (tests/bench/instructions.py):
# repeatable where requests/s are not. BINS: the binaries to compare.
bench-instructions: deps
	$(call install_missing,valgrind)
	@$(MAKE) --no-print-directory all $(UPSTREAM_BIN)
	@UPSTREAM_BIN=$(UPSTREAM_BIN) python3 tests/bench/instructions.py $(or $(BINS),$(BUILD)/idemproxy)

# libFuzzer targets (clang, libclang-rt-14-dev): each runs FUZZ_SECONDS on a
# copy of its seed corpus in build/fuzz/, so the repo's corpus stays small.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := $(patsubst tests/fuzz/%.c,build/fuzz/%,$(wildcard tests/fuzz/fuzz_*.c))
# The sources are compiled once, instrumented for coverage (fuzzer-no-link),
# and linked into every target: compiled per target they took ~4 minutes.
FUZZ_COMMON_FLAGS := -std=c11 -g -O1 -D_GNU_SOURCE -Isrc $(LLHTTP_FLAGS) $(PKG_CFLAGS)
FUZZ_FLAGS := $(FUZZ_COMMON_FLAGS) -fsanitize=fuzzer,address,undefined
FUZZ_OBJ_FLAGS := $(FUZZ_COMMON_FLAGS) -fsanitize=fuzzer-no-link,address,undefined
FUZZ_OBJS := $(patsubst src/%.c,build/fuzz/obj/%.o,$(filter-out src/main.c,$(SRCS))) \
	$(patsubst $(BUILD)/obj/%,build/fuzz/obj/%,$(LLHTTP_OBJS))

build/fuzz/obj/%.o: src/%.c $(wildcard src/*.h)
	@mkdir -p $(dir $@)
	@echo "  CC      $< (fuzz)"
	$(Q)clang $(FUZZ_OBJ_FLAGS) -c -o $@ $<

build/fuzz/obj/llhttp/%.o: $(LLHTTP_SRC_DIR)/%.c
	@mkdir -p $(dir $@)
	@echo "  CC      $< (fuzz)"
	$(Q)clang $(FUZZ_OBJ_FLAGS) -w -c -o $@ $<

build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_OBJS)
	@mkdir -p $(dir $@)
	@echo "  FUZZ    $<"
	$(Q)clang $(FUZZ_FLAGS) -o $@ $< $(FUZZ_OBJS) $(PKG_LIBS)

fuzz: deps $(FUZZ_TARGETS)
	@set -e; for t in $(FUZZ_TARGETS); do \
		name=$$(basename $$t); corpus=build/fuzz/corpus-$${name#fuzz_}; \
		rm -rf $$corpus; cp -r tests/fuzz/$${name#fuzz_} $$corpus; \
		echo "== $$name for $(FUZZ_SECONDS)s"; \
		if ! $$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $$corpus \
			> build/fuzz/$$name.log 2>&1; then \
			tail -n 60 build/fuzz/$$name.log; echo "$$name: FAILED"; exit 1; \
		fi; \
		grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)' build/fuzz/$$name.log; \
	done

install: $(BUILD)/idemproxy $(MAN_PAGES)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)/etc/idemproxy $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8
	install -m 755 $(BUILD)/idemproxy $(DESTDIR)$(BINDIR)/idemproxy
	install -m 644 conf/idemproxy.conf $(DESTDIR)/etc/idemproxy/idemproxy.conf
	sed 's|/usr/local/bin/idemproxy|$(BINDIR)/idemproxy|g' systemd/idemproxy.service \
		> $(DESTDIR)$(UNITDIR)/idemproxy.service
	chmod 644 $(DESTDIR)$(UNITDIR)/idemproxy.service
	install -m 644 $(MAN_DIR)/idemproxy.conf.5 $(DESTDIR)$(MANDIR)/man5/idemproxy.conf.5
	install -m 644 $(MAN_DIR)/idemproxy.8 $(DESTDIR)$(MANDIR)/man8/idemproxy.8

# The Debian package, built by dpkg-buildpackage (debian/rules) from a copy
# of the tree in build/deb/src/, so that nothing is written beside the
# repository; the .deb (and its -dbgsym) end up in build/deb/. The tools
# come from Debian, installed when missing.
DEB_TOOLS := build-essential debhelper dpkg-dev lintian
DEB_ARCH = $(shell dpkg --print-architecture)
DEB_FILE = build/deb/idemproxy_$(VERSION)_$(DEB_ARCH).deb
DEB_INPUTS := Makefile README.md $(wildcard conf/* debian/* debian/source/* docs/* scripts/* \
	src/* systemd/*)

deb: $(DEB_FILE)

$(DEB_FILE): $(DEB_INPUTS)
	$(call install_missing,$(DEB_PACKAGES) $(DEB_TOOLS),--no-install-recommends)
	@rm -rf build/deb && mkdir -p build/deb/src/idemproxy
	@cp -r Makefile README.md conf debian docs scripts src systemd build/deb/src/idemproxy/
	@echo "  DEB     $@ (log: build/deb/build.log)"
	@cd build/deb/src/idemproxy && dpkg-buildpackage -b -us -uc -J \
		> ../../build.log 2>&1 || { tail -n 40 ../../build.log; exit 1; }
	@mv build/deb/src/*.deb build/deb/src/*.buildinfo build/deb/src/*.changes build/deb/
	@rm -rf build/deb/src

# The package checked as an operator would meet it (tests/package/test_deb.py).
deb-test: $(DEB_FILE) $(UPSTREAM_BIN)
	$(call install_missing,lintian)
	python3 tests/package/test_deb.py $(DEB_FILE)

format:
	clang-format -i src/*.c src/*.h tests/unit/*.c tests/unit/*.h tests/upstream/*.c

format-check:
	clang-format --dry-run --Werror src/*.c src/*.h tests/unit/*.c tests/unit/*.h tests/upstream/*.c

clean:
	rm -rf build
