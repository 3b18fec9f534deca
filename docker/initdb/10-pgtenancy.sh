#!/usr/bin/env bash
# Put pgtenancy into $POSTGRES_DB at first start (the postgres image's
# entrypoint runs this): CREATE EXTENSION when the extension is installed,
# else the plain install from $PGTENANCY_SQL_DIR, in one transaction.
set -euo pipefail
db=(--username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}")
if [ -n "${PGTENANCY_SQL_DIR:-}" ]; then
    cat "$PGTENANCY_SQL_DIR"/[0-9][0-9][0-9]_*.sql |
        psql -X -q -v ON_ERROR_STOP=1 --single-transaction "${db[@]}"
else
    psql -X -q -v ON_ERROR_STOP=1 "${db[@]}" -c 'CREATE EXTENSION IF NOT EXISTS pgtenancy'
fi
