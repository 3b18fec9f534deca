#!/usr/bin/env bash
# Install the pgtenancy SQL into $POSTGRES_DB in one transaction, stopping at
# the first error (run by the postgres image's entrypoint at first start).
set -euo pipefail
sql_dir="${PGTENANCY_SQL_DIR:-/usr/share/pgtenancy/sql}"
cat "$sql_dir"/[0-9][0-9][0-9]_*.sql |
    psql -X -q -v ON_ERROR_STOP=1 --single-transaction \
        --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}"
