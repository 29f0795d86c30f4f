#!/bin/sh
# Entrypoint of a Postgres streaming replica built on the official postgres image.
#
# On first start (empty data directory) it clones the primary with pg_basebackup; -R writes
# standby.signal and primary_conninfo, so the server then starts as a hot standby that streams
# WAL from the primary. Later starts find the data directory populated and go straight on.
# Either way it ends by handing over to the image's own entrypoint, which drops to the postgres
# user and runs the command ("postgres").
#
#   PRIMARY_HOST / PRIMARY_PORT        where the primary listens (port default 5432)
#   REPLICATION_USER / _PASSWORD       the role created by deploy/primary-init.sh
set -eu

: "${PGDATA:=/var/lib/postgresql/data}"
: "${PRIMARY_HOST:?set PRIMARY_HOST to the primary's host name}"
: "${PRIMARY_PORT:=5432}"
: "${REPLICATION_USER:=replicator}"
: "${REPLICATION_PASSWORD:?set REPLICATION_PASSWORD for the replication role}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    # The image starts us as root; the cluster files must belong to postgres.
    as_postgres=""
    if [ "$(id -u)" = 0 ]; then
        mkdir -p "$PGDATA"
        chown postgres:postgres "$PGDATA"
        as_postgres="gosu postgres"
    fi
    chmod 700 "$PGDATA"

    # docker-compose waits for the primary's health check, but a primary restarted meanwhile
    # (or one started by hand) may not accept connections yet.
    tries=0
    until pg_isready --quiet --host "$PRIMARY_HOST" --port "$PRIMARY_PORT"; do
        tries=$((tries + 1))
        if [ "$tries" -ge 60 ]; then
            echo "replica-entrypoint: primary $PRIMARY_HOST:$PRIMARY_PORT not ready after 60 s" >&2
            exit 1
        fi
        sleep 1
    done

    echo "replica-entrypoint: cloning $PRIMARY_HOST:$PRIMARY_PORT into $PGDATA"
    PGPASSWORD="$REPLICATION_PASSWORD" $as_postgres pg_basebackup \
        --host "$PRIMARY_HOST" --port "$PRIMARY_PORT" --username "$REPLICATION_USER" \
        --pgdata "$PGDATA" --wal-method stream --write-recovery-conf --checkpoint fast \
        --no-password
fi

exec docker-entrypoint.sh "$@"
