#!/bin/sh
# Runs once, when the postgres image initialises an empty primary (/docker-entrypoint-initdb.d).
# Creates the role the replicas stream WAL with and lets it connect for replication over the
# network: pg_hba's "all" database does not cover replication connections.
set -eu

: "${REPLICATION_USER:=replicator}"
: "${REPLICATION_PASSWORD:?set REPLICATION_PASSWORD for the replication role}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set=role="$REPLICATION_USER" --set=pw="$REPLICATION_PASSWORD" <<'SQL'
CREATE ROLE :"role" WITH REPLICATION LOGIN PASSWORD :'pw';
SQL

echo "host replication $REPLICATION_USER all scram-sha-256" >> "$PGDATA/pg_hba.conf"
