"""The verdicts of ``writebus check``: facts in, one ✓/✗ :class:`Check` per item out.

Pure functions, no I/O (:mod:`writebus.bus.check` gathers the facts); the check model, the
facts and the limits are in :mod:`writebus.bus.checklist`.
"""

from __future__ import annotations

from collections.abc import Sequence

from writebus.bus.checklist import (
    CHECK_NAMES,
    Broadcast,
    Check,
    Config,
    DatabaseFacts,
    Facts,
    Limits,
    PingFacts,
    failed,
    format_bytes,
    likely_typo,
    passed,
    skipped,
    split_reason,
)


def regions_heard(heard: Sequence[Broadcast]) -> list[str]:
    """Regions heard, those announcing a primary first, each group in alphabetical order."""
    primaries = sorted({b.region for b in heard if b.role == "primary"})
    others = sorted({b.region for b in heard} - set(primaries))
    return primaries + others


def primary_announcers(heard: Sequence[Broadcast]) -> list[str]:
    """Regions heard announcing a primary."""
    return sorted({b.region for b in heard if b.role == "primary"})


def _announced_hint(heard: Sequence[Broadcast] | None) -> str:
    announcers = primary_announcers(heard or ())
    if len(announcers) == 1:
        return f" (the primary is announced from {announcers[0]})"
    return ""


# -- verdicts ---------------------------------------------------------------------------------


def check_settings(config: Config, unknown_vars: Sequence[tuple[str, str | None]] = ()) -> Check:
    """The settings read, and any ``WRITEBUS_*`` variable nothing reads (a silent typo)."""
    summary = f"{config.region_words}, {config.primary_words}, prefix {config.prefix}"
    if unknown_vars:
        names = ", ".join(name for name, _ in unknown_vars)
        fixes = [
            f"rename {name} to {guess}" if guess else f"remove {name}"
            for name, guess in unknown_vars
        ]
        return failed(
            "settings",
            f"{summary}; ignored (not writebus settings): {names}",
            "; ".join(fixes),
        )
    return passed("settings", summary)


def check_nats(endpoint: str, error: str | None) -> Check:
    """NATS reachable and the credentials accepted."""
    if error is None:
        return passed("nats", f"connected to {endpoint}")
    what, fix = split_reason(error)
    return failed(
        "nats",
        f"cannot connect to {endpoint}: {what}",
        fix or "check NATS_URL and that nats-server runs there and is reachable from here",
    )


def check_database(db: DatabaseFacts) -> Check:
    """The local database reachable."""
    if not db.configured:
        return failed(
            "database",
            "no database configured: DATABASE_URL is unset, and so are PGHOST, PGDATABASE...",
            "set DATABASE_URL to this region's database "
            "(its replica, or the primary in the primary region)",
        )
    if db.error is not None:
        reason = db.error.lower()
        if "password" in reason or "role" in reason or "authentication" in reason:
            fix = "check the user and password in DATABASE_URL"
        elif "does not exist" in reason:
            fix = "check the database name in DATABASE_URL"
        elif "refused" in reason or "no answer" in reason or "timeout" in reason:
            fix = "check the host and port in DATABASE_URL, and that Postgres runs there"
        else:
            fix = "check DATABASE_URL (or the PG* variables)"
        return failed("database", f"cannot connect to postgres at {db.endpoint}: {db.error}", fix)
    kind = "a standby (in recovery)" if db.in_recovery else "a primary (not in recovery)"
    version = f", PostgreSQL {db.server_version}" if db.server_version else ""
    return passed("database", f"{db.endpoint} answers: {kind}{version}")


def judge_role(
    config: Config, db: DatabaseFacts, heard: Sequence[Broadcast] | None = None
) -> Check:
    """``pg_is_in_recovery()`` must be true exactly when this is not the primary region.

    ``heard`` (the broadcasts, when any were heard) names the region that announces the primary,
    to make the fix concrete.
    """
    if not db.answered:
        return skipped("role", "needs the database's answer")
    announcers = primary_announcers(heard or ())
    announced = announcers[0] if len(announcers) == 1 else None
    if config.is_primary and not db.in_recovery:
        return passed(
            "role", f"{config.region} is the primary region and its database is the primary"
        )
    if not config.is_primary and db.in_recovery:
        return passed(
            "role", f"{config.region} is a replica region and its database is a standby"
        )
    if config.is_primary:
        if not config.primary_set and config.region_var is None:
            why = (
                "FLY_REGION, MY_REGION and PRIMARY_REGION are unset, so this node is its own "
                f"primary region ({config.region!r})"
            )
        else:
            why = f"{config.primary_words} and {config.region_words} make this the primary region"
        detail = (
            f"{why}, but the database at {db.endpoint} is a standby (pg_is_in_recovery() is "
            "true): writes would run on a read-only database"
        )
        if not config.primary_set and config.region_var is None:
            fix = (
                "set PRIMARY_REGION to the region holding the Postgres primary"
                + (f" ({announced})" if announced else "")
                + " and FLY_REGION (or MY_REGION) to this node's region"
            )
        elif announced and announced != config.region:
            fix = (
                f"set PRIMARY_REGION={announced} (the primary is announced from there), "
                "or point DATABASE_URL at the primary"
            )
        else:
            fix = (
                "point DATABASE_URL at the primary, or set PRIMARY_REGION to the region that "
                "holds it"
            )
        return failed("role", detail, fix)
    detail = (
        f"{config.primary_words}, so {config.region} counts as a replica region, but the "
        f"database at {db.endpoint} is a primary (pg_is_in_recovery() is false): writes would "
        "go over the bus instead of straight to it"
    )
    replica = f"{config.region}'s replica"
    if announced in (None, config.region) and not config.primary_set:
        fix = f"set PRIMARY_REGION={config.region}"
        if announced is not None:
            fix += " (the primary is announced from here)"
        fix += f"; or, if the primary is elsewhere, point DATABASE_URL at {replica}"
    elif config.primary_set and likely_typo(config.primary_region, {config.region}):
        fix = (
            f"PRIMARY_REGION={config.primary_region} looks misspelled: "
            f"set PRIMARY_REGION={config.region}"
        )
    elif announced is not None and announced != config.region:
        fix = f"DATABASE_URL names the primary, announced from {announced}: use {replica}"
        if config.primary_region != announced:
            fix += f", and set PRIMARY_REGION={announced}"
    else:
        fix = (
            f"if {config.region} holds the primary, set PRIMARY_REGION={config.region}; "
            f"otherwise DATABASE_URL points at the wrong server: use {replica}"
        )
    return failed("role", detail, fix)


def check_bus(
    config: Config, ping: PingFacts | None, heard: Sequence[Broadcast] | None = None,
    *, version: str = "",
) -> Check:
    """A bus node in the primary region answers ``writebus.ping`` and says it is the primary."""
    if ping is None:
        return skipped("bus", "needs NATS")
    where = config.primary_region
    if ping.info is None:
        fix = f"start `writebus serve` in {where} with WRITEBUS_PREFIX={config.prefix}"
        announcers = primary_announcers(heard or ())
        if len(announcers) == 1 and where not in announcers:
            fix = f"set PRIMARY_REGION={announcers[0]}: the primary is announced from there"
        return failed("bus", f"no answer on {ping.subject}: {ping.error or 'no reply'}", fix)
    info = ping.info
    role = info.get("role")
    their_version = str(info.get("version") or "?")
    rtt = f" in {ping.rtt_ms:.0f} ms" if ping.rtt_ms is not None else ""
    detail = (
        f"{info.get('region', where)} bus {info.get('replica_id') or '?'} answers{rtt}: "
        f"role {role or '?'}, version {their_version}"
    )
    if version and their_version not in (version, "?"):
        detail += f" (this node runs {version})"
    if role != "primary":
        return failed(
            "bus",
            f"{detail}, but the bus in the primary region must say role primary",
            "PRIMARY_REGION must name the region whose database is the primary"
            + _announced_hint(heard),
        )
    database = str(info.get("database") or "?")
    if database != "ok":
        return failed(
            "bus",
            f"{detail}, but its database is {database}",
            f"check the DATABASE_URL of the bus node in {where}",
        )
    return passed("bus", detail)


def check_progress(
    config: Config, heard: Sequence[Broadcast] | None, *, listen: float
) -> Check:
    """This region's progress broadcasts are heard (in the primary region, the primary's
    announcements count)."""
    if heard is None:
        return skipped("progress", "needs NATS")
    subject = f"{config.prefix}.lsn.{config.region}"
    mine = [b for b in heard if b.region == config.region]
    if not mine:
        typo = likely_typo(config.region, {b.region for b in heard})
        if typo is not None:
            fix = f"{config.region_words} looks misspelled: did you mean {typo}?"
        else:
            fix = (
                f"start `writebus serve` in {config.region} "
                f"({config.region_setting}={config.region}, WRITEBUS_PREFIX={config.prefix})"
            )
        consequence = (
            "replicas cannot learn how far the primary is"
            if config.is_primary
            else "every write will wait for the replica by polling the database"
        )
        return failed(
            "progress", f"nothing heard on {subject} in {listen:g}s: {consequence}", fix
        )
    senders = sorted({f"{b.replica_id} ({b.role})" for b in mine})
    return passed(
        "progress",
        f"{len(mine)} broadcasts on {subject} in {listen:g}s from {', '.join(senders)}",
    )


def check_regions(config: Config, heard: Sequence[Broadcast] | None, *, listen: float) -> Check:
    """The regions heard on ``<prefix>.lsn.>`` include this one and the primary region; a
    likely typo is named."""
    if heard is None:
        return skipped("regions", "needs NATS")
    regions = regions_heard(heard)
    if not regions:
        return failed(
            "regions",
            f"no region broadcasts on {config.prefix}.lsn.> (listened {listen:g}s)",
            f"start the bus nodes (`writebus serve`) with WRITEBUS_PREFIX={config.prefix}, "
            "or check that this node's WRITEBUS_PREFIX matches theirs",
        )
    listed = ", ".join(regions)
    problems: list[str] = []
    fixes: list[str] = []
    if config.region not in regions:
        problems.append(f"{config.region_words}, but the regions broadcasting are {listed}")
        typo = likely_typo(config.region, regions)
        if typo is not None:
            fixes.append(f"did you mean {config.region_setting}={typo}?")
        else:
            fixes.append(
                f"set {config.region_setting} to this node's region, or start "
                f"`writebus serve` in {config.region}"
            )
    announcers = primary_announcers(heard)
    if len(announcers) > 1:
        problems.append(f"more than one region announces a primary: {', '.join(announcers)}")
        fixes.append("only one database may be the primary: check for a split brain")
    elif not announcers:
        problems.append(f"no region announces a primary ({config.primary_words})")
        fixes.append(f"start `writebus serve` in {config.primary_region}")
    elif config.primary_region not in announcers:
        problems.append(f"{config.primary_words}, but the primary is announced from {announcers[0]}")
        fixes.append(f"set PRIMARY_REGION={announcers[0]}")
    if problems:
        return failed("regions", "; ".join(problems), "; ".join(fixes))
    return passed("regions", f"heard {listed}")


def replica_lag_bytes(
    heard: Sequence[Broadcast], region: str, *, replica_id: str = ""
) -> int | None:
    """How far ``region``'s replica is behind the primary, in bytes, from the broadcasts.

    For each replica, its latest report is compared with the primary's position as announced
    just before that report (or the first announcement, when the report came earlier): a
    heartbeat apart, never ahead of what the replica could have seen. The worst replica counts.
    None when the primary or the replica was not heard.
    """
    primary = sorted((b for b in heard if b.role == "primary"), key=lambda b: b.at)
    if not primary:
        return None
    latest: dict[str, Broadcast] = {}
    for b in heard:
        if b.region != region or b.role != "replica":
            continue
        if replica_id and b.replica_id != replica_id:
            continue
        prev = latest.get(b.replica_id)
        if prev is None or b.at >= prev.at:
            latest[b.replica_id] = b
    if not latest:
        return None
    worst = 0
    for report in latest.values():
        before = [p for p in primary if p.at <= report.at]
        target = before[-1] if before else primary[0]
        worst = max(worst, target.lsn - report.lsn)
    return worst


def judge_lag(
    config: Config,
    db: DatabaseFacts,
    heard: Sequence[Broadcast] | None,
    limits: Limits,
) -> Check:
    """Replica lag in bytes (from the broadcasts) and seconds (from the database).

    Bytes decide when known: an idle primary commits nothing, so the age of the last replayed
    transaction grows without any real lag. Seconds count only when the replica is also behind
    in bytes, or when no broadcast was heard to measure bytes.
    """
    if config.is_primary:
        return passed("lag", "none: the primary region reads the primary")
    lag = None if heard is None else replica_lag_bytes(
        heard, config.region, replica_id=config.replica_id
    )
    age = db.replay_age if db.answered and db.in_recovery else None
    age_words = None if age is None else f"last replayed transaction {age:.1f}s ago"
    if lag is None and age is None:
        if heard is None:
            why_bytes = "no broadcasts without NATS"
        else:
            why_bytes = f"no broadcasts from {config.region}'s replica and the primary"
        if not db.answered:
            why_age = "the database did not answer"
        elif db.in_recovery:
            why_age = "no transaction replayed since the standby started"
        else:
            why_age = "the database is not a standby"
        return skipped("lag", f"{why_bytes}, and {why_age}")
    max_s, max_b = limits.max_lag_seconds, limits.max_lag_bytes
    limit_words = f"limits {max_s:g}s, {format_bytes(max_b)}"
    if lag is None:
        assert age is not None and age_words is not None
        note = (
            "without broadcasts this cannot tell real lag from an idle primary, "
            "which makes the age grow without any lag"
        )
        if age > max_s:
            blocker = "nats" if heard is None else "progress"
            return failed(
                "lag",
                f"{age_words} ({limit_words}); {note}",
                f"fix the {blocker} check and run again to measure bytes; or write on the "
                "primary and re-check",
            )
        return passed("lag", f"{age_words} ({limit_words}); no broadcasts to measure bytes")
    detail = f"{format_bytes(lag)} behind the primary"
    if age_words is not None:
        detail += f", {age_words}"
    detail += f" ({limit_words})"
    fix = (
        "check replication: pg_stat_wal_receiver on the replica, pg_stat_replication on the "
        "primary (network, replay conflicts, a paused replay)"
    )
    if lag > max_b:
        return failed("lag", detail, fix)
    if lag > 0 and age is not None and age > max_s:
        return failed("lag", detail, fix)
    if lag == 0 and age is not None and age > max_s:
        detail += (
            "; the age is only the primary being idle: no commit to replay, so it grows "
            "without real lag"
        )
    return passed("lag", detail)


def evaluate(facts: Facts, limits: Limits | None = None) -> list[Check]:
    """Every check, in :data:`CHECK_NAMES` order."""
    limits = limits or Limits()
    c = facts.config
    return [
        check_settings(c, facts.unknown_vars),
        check_nats(facts.nats_endpoint, facts.nats_error),
        check_database(facts.database),
        judge_role(c, facts.database, facts.heard),
        check_bus(c, facts.ping, facts.heard, version=facts.version),
        check_progress(c, facts.heard, listen=facts.listen),
        check_regions(c, facts.heard, listen=facts.listen),
        judge_lag(c, facts.database, facts.heard, limits),
    ]


def settings_failed(message: str, fix: str) -> list[Check]:
    """The checklist when the settings cannot even be read: that, and every other check
    skipped."""
    rest = [skipped(name, "needs valid settings") for name in CHECK_NAMES[1:]]
    return [failed("settings", message, fix), *rest]

