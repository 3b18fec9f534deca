#!/usr/bin/env bash
# Put pgtenancy into $POSTGRES_DB at first start (the postgres image's
# entrypoint runs this): CREATE EXTENSION when the extension is installed,
# else the plain install from $PGTENANCY_SQL_DIR, in one transaction, with
# the version placeholder stamped as the installer does ($PGTENANCY_VERSION,
# else the one version source next to that sql/ directory).
set -euo pipefail
db=(--username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}")
if [ -n "${PGTENANCY_SQL_DIR:-}" ]; then
    version="${PGTENANCY_VERSION:-$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' \
        "$PGTENANCY_SQL_DIR/../python/pgtenancy/_version.py" 2>/dev/null || true)}"
    if [ -z "$version" ]; then
        echo "pgtenancy: set PGTENANCY_VERSION (no python/pgtenancy/_version.py next to $PGTENANCY_SQL_DIR)" >&2
        exit 1
    fi
    cat "$PGTENANCY_SQL_DIR"/[0-9][0-9][0-9]_*.sql | sed "s/@PGTENANCY_VERSION@/$version/g" |
        psql -X -q -v ON_ERROR_STOP=1 --single-transaction "${db[@]}"
else
    psql -X -q -v ON_ERROR_STOP=1 "${db[@]}" -c 'CREATE EXTENSION IF NOT EXISTS pgtenancy'
fi
