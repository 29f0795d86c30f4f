"""The verdicts of `writebus check` and its report (pure logic, no server)."""

from __future__ import annotations

import json

import pytest

from writebus.bus.checklist import (
    CHECK_NAMES,
    DESCRIPTION,
    Broadcast,
    Check,
    Config,
    DatabaseFacts,
    Facts,
    Limits,
    PingFacts,
    Status,
    failed,
    format_bytes,
    likely_typo,
    passed,
    skipped,
    split_reason,
)
from writebus.bus.checkreport import Report, marks_for
from writebus.bus.verdicts import (
    check_bus,
    check_database,
    check_nats,
    check_progress,
    check_regions,
    check_settings,
    evaluate,
    judge_lag,
    judge_role,
    regions_heard,
    replica_lag_bytes,
    settings_failed,
)

MiB = 1024 * 1024


def config(
    region: str = "lax", primary: str = "syd", *, env: dict[str, str] | None = None
) -> Config:
    """The Config that ``env`` (default: FLY_REGION and PRIMARY_REGION set) would give."""
    if env is None:
        env = {"FLY_REGION": region, "PRIMARY_REGION": primary}
    return Config.from_env(env, region=region, primary_region=primary, prefix="writebus")


STANDBY = DatabaseFacts(endpoint="db:5432/app", in_recovery=True, replay_age=0.5)
PRIMARY_DB = DatabaseFacts(endpoint="db:5432/app", in_recovery=False)


def bc(region: str, role: str, lsn: int, at: float, replica_id: str = "") -> Broadcast:
    """A broadcast heard at ``at``."""
    return Broadcast(region=region, replica_id=replica_id or f"{region}-1", role=role, lsn=lsn,
                     at=at)


HEALTHY = (
    bc("syd", "primary", 1000, 0.1),
    bc("lax", "replica", 1000, 0.2),
    bc("syd", "primary", 1000, 1.1),
    bc("lax", "replica", 1000, 1.2),
)


# -- helpers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "candidates", "guess"),
    [
        ("lxa", ["syd", "lax"], "lax"),
        ("sdy", ["syd", "lax"], "syd"),
        ("LAX", ["lax"], "lax"),  # subjects are case-sensitive: LAX is another region
        ("lax", ["syd", "lax"], None),  # an exact match is no typo
        ("iad", ["syd", "lax"], None),
        ("local", [], None),
    ],
)
def test_likely_typo(name: str, candidates: list[str], guess: str | None) -> None:
    """A close misspelling names the intended region; an exact or unrelated name does not."""
    assert likely_typo(name, candidates) == guess


def test_split_reason_separates_the_fix() -> None:
    """connect_nats' "...: check X" reasons split into what happened and what to check."""
    what, fix = split_reason(
        "it refused the credentials (Authorization Violation): "
        "check NATS_USER/NATS_PASSWORD or NATS_CREDS"
    )
    assert what == "it refused the credentials (Authorization Violation)"
    assert fix == "check NATS_USER/NATS_PASSWORD or NATS_CREDS"
    assert split_reason("connection refused") == ("connection refused", "")


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 bytes"), (1, "1 byte"), (1023, "1023 bytes"), (2048, "2.0 KiB"), (16 * MiB, "16.0 MiB")],
)
def test_format_bytes(n: int, text: str) -> None:
    """Byte counts read in human units."""
    assert format_bytes(n) == text


def test_regions_heard_lists_the_primary_first() -> None:
    """The primary's region comes first, then the others alphabetically, each once."""
    heard = [bc("lax", "replica", 1, 0), bc("ams", "replica", 1, 0), bc("syd", "primary", 1, 0)]
    assert regions_heard(heard) == ["syd", "ams", "lax"]


def test_config_records_which_variable_set_the_region() -> None:
    """FLY_REGION wins over MY_REGION; neither set means the default, said in words."""
    assert config(env={"FLY_REGION": "lax", "MY_REGION": "x"}).region_words == "FLY_REGION=lax"
    mine = Config.from_env({"MY_REGION": "lax"}, region="lax", primary_region="syd", prefix="p")
    assert mine.region_words == "MY_REGION=lax" and not mine.primary_set
    default = Config.from_env({}, region="local", primary_region="local", prefix="p")
    assert "unset" in default.region_words and default.is_primary
    assert default.primary_words == "PRIMARY_REGION is unset (default 'local')"


# -- settings, nats, database -----------------------------------------------------------------


def test_settings_pass_and_name_an_ignored_variable() -> None:
    """The settings read are shown; an unknown WRITEBUS_* variable fails with its likely name."""
    ok = check_settings(config())
    assert ok.ok and "FLY_REGION=lax" in ok.detail and "PRIMARY_REGION=syd" in ok.detail
    bad = check_settings(config(), [("WRITEBUS_PREFX", "WRITEBUS_PREFIX"), ("WRITEBUS_X", None)])
    assert bad.status is Status.FAIL and "WRITEBUS_PREFX" in bad.detail
    assert bad.fix == "rename WRITEBUS_PREFX to WRITEBUS_PREFIX; remove WRITEBUS_X"


def test_nats_failure_carries_the_typed_reason_and_fix() -> None:
    """A refused login fails with the server's reason; the fix names the credentials."""
    assert check_nats("n:4222", None) == passed("nats", "connected to n:4222")
    c = check_nats("n:4222", "it refused the credentials (Authorization Violation): check "
                              "NATS_USER/NATS_PASSWORD or NATS_CREDS")
    assert c.status is Status.FAIL and "Authorization Violation" in c.detail
    assert c.fix.startswith("check NATS_USER")
    down = check_nats("n:1", "connection refused: is nats-server running there?")
    assert "NATS_URL" in down.fix


@pytest.mark.parametrize(
    ("error", "fix_word"),
    [
        ("Connection refused", "port"),
        ('password authentication failed for user "app"', "password"),
        ('database "nope" does not exist', "database name"),
        ("no answer within 3s (WRITEBUS_CONNECT_TIMEOUT)", "host"),
    ],
)
def test_database_failure_has_the_servers_reason(error: str, fix_word: str) -> None:
    """An unreachable database fails with libpq's words and a fix for that kind of failure."""
    c = check_database(DatabaseFacts(endpoint="db:5432/app", error=error))
    assert c.status is Status.FAIL and error in c.detail and "db:5432/app" in c.detail
    assert fix_word in c.fix


def test_database_unset_and_answering() -> None:
    """No DATABASE_URL fails with the fix; an answering one says what it is."""
    unset = check_database(DatabaseFacts(endpoint=""))
    assert unset.status is Status.FAIL and "DATABASE_URL" in unset.fix
    assert "a standby" in check_database(STANDBY).detail
    assert "a primary" in check_database(PRIMARY_DB).detail


# -- role -------------------------------------------------------------------------------------


def test_role_consistent_either_way() -> None:
    """A standby outside the primary region, the primary inside it: both pass."""
    assert judge_role(config("lax"), STANDBY).ok
    assert judge_role(config("syd"), PRIMARY_DB).ok


def test_role_primary_region_unset_in_the_primary_region() -> None:
    """In syd without PRIMARY_REGION, the database is a primary: fail, fix PRIMARY_REGION=syd."""
    cfg = config("syd", "local", env={"FLY_REGION": "syd"})
    c = judge_role(cfg, PRIMARY_DB, HEALTHY)
    assert c.status is Status.FAIL
    assert "PRIMARY_REGION is unset" in c.detail and "pg_is_in_recovery() is false" in c.detail
    assert c.fix.startswith("set PRIMARY_REGION=syd (the primary is announced from here)")
    # Without broadcasts the fix is the same guess: this region holds what looks like a primary.
    assert judge_role(cfg, PRIMARY_DB, None).fix.startswith("set PRIMARY_REGION=syd")


def test_role_misspelled_primary_region() -> None:
    """PRIMARY_REGION=sdy in syd: the fix names the misspelling."""
    c = judge_role(config("syd", "sdy"), PRIMARY_DB, HEALTHY)
    assert c.status is Status.FAIL
    assert c.fix == "PRIMARY_REGION=sdy looks misspelled: set PRIMARY_REGION=syd"


def test_role_replica_region_pointing_at_the_primary() -> None:
    """In lax, DATABASE_URL naming the primary fails; the fix says to use lax's replica."""
    c = judge_role(config("lax", "syd"), PRIMARY_DB, HEALTHY)
    assert c.status is Status.FAIL
    assert "announced from syd" in c.fix and "lax's replica" in c.fix


def test_role_primary_region_on_a_standby() -> None:
    """PRIMARY_REGION names this region but the database is a standby: fail, and when the
    primary is announced elsewhere the fix names that region."""
    c = judge_role(config("lax", "lax"), STANDBY, HEALTHY)
    assert c.status is Status.FAIL and "read-only" in c.detail
    assert "PRIMARY_REGION=syd" in c.fix
    unset = judge_role(config("local", "local", env={}), STANDBY, ())
    assert "are unset" in unset.detail and "FLY_REGION" in unset.fix


def test_role_skipped_without_the_database() -> None:
    """Without the database's answer the role cannot be judged."""
    down = DatabaseFacts(endpoint="db:5432/app", error="Connection refused")
    assert judge_role(config(), down).status is Status.SKIP


# -- bus --------------------------------------------------------------------------------------


PING_OK = {"region": "syd", "role": "primary", "replica_id": "syd-1", "version": "1.0",
           "database": "ok", "in_recovery": False}


def test_bus_answers_as_primary() -> None:
    """The primary region's bus says role primary: pass, with its version."""
    c = check_bus(config(), PingFacts(subject="writebus.rpc.syd", info=PING_OK, rtt_ms=12),
                  version="1.0")
    assert c.ok and "role primary" in c.detail and "version 1.0" in c.detail
    assert "this node runs" not in c.detail
    other = check_bus(config(), PingFacts(subject="s", info=PING_OK), version="2.0")
    assert other.ok and "this node runs 2.0" in other.detail


def test_bus_answering_as_replica_fails() -> None:
    """A bus in the 'primary' region that says replica: PRIMARY_REGION names the wrong region."""
    info = {**PING_OK, "role": "replica", "in_recovery": True}
    c = check_bus(config(), PingFacts(subject="writebus.rpc.syd", info=info), HEALTHY)
    assert c.status is Status.FAIL and "role replica" in c.detail
    assert "PRIMARY_REGION" in c.fix


def test_bus_without_database_fails() -> None:
    """A primary bus whose database is unreachable fails."""
    info = {**PING_OK, "database": "unreachable: PoolTimeout"}
    c = check_bus(config(), PingFacts(subject="s", info=info))
    assert c.status is Status.FAIL and "unreachable" in c.detail


def test_bus_not_answering() -> None:
    """No responder: start a bus there, or -- when the primary is announced elsewhere -- fix
    PRIMARY_REGION."""
    ping = PingFacts(subject="writebus.rpc.sdy", error="no bus node subscribed (no responders)")
    c = check_bus(config("lax", "sdy"), ping, HEALTHY)
    assert c.status is Status.FAIL and "writebus.rpc.sdy" in c.detail
    assert c.fix.startswith("set PRIMARY_REGION=syd")
    alone = check_bus(config(), PingFacts(subject="writebus.rpc.syd", error="no reply"), ())
    assert "writebus serve" in alone.fix
    assert check_bus(config(), None).status is Status.SKIP


# -- progress and regions ---------------------------------------------------------------------


def test_progress_heard_and_not_heard() -> None:
    """This region's broadcasts pass; none fails, naming the likely intended region."""
    assert check_progress(config(), HEALTHY, listen=2.5).ok
    c = check_progress(config("lxa"), HEALTHY, listen=2.5)
    assert c.status is Status.FAIL and "writebus.lsn.lxa" in c.detail and "polling" in c.detail
    assert "did you mean lax?" in c.fix
    assert check_progress(config(), None, listen=2.5).status is Status.SKIP


def test_progress_in_the_primary_region_counts_the_primarys_announcements() -> None:
    """In syd the primary's announcements are this region's broadcasts."""
    c = check_progress(config("syd"), HEALTHY, listen=2.5)
    assert c.ok and "(primary)" in c.detail


def test_regions_names_the_typo() -> None:
    """FLY_REGION=lxa: the regions broadcasting are listed and lax is named."""
    c = check_regions(config("lxa"), HEALTHY, listen=2.5)
    assert c.status is Status.FAIL
    assert c.detail == "FLY_REGION=lxa, but the regions broadcasting are syd, lax"
    assert c.fix == "did you mean FLY_REGION=lax?"
    assert check_regions(config(), HEALTHY, listen=2.5) == passed("regions", "heard syd, lax")


def test_regions_primary_announced_elsewhere() -> None:
    """PRIMARY_REGION unset while syd announces the primary: set PRIMARY_REGION=syd."""
    c = check_regions(config("syd", "local", env={"FLY_REGION": "syd"}), HEALTHY, listen=2.5)
    assert c.status is Status.FAIL and "announced from syd" in c.detail
    assert c.fix == "set PRIMARY_REGION=syd"


def test_regions_split_brain_and_silence() -> None:
    """Two regions announcing a primary fail; so does hearing nothing at all."""
    two = (*HEALTHY, bc("lax", "primary", 5, 2.0))
    assert "more than one region" in check_regions(config(), two, listen=2.5).detail
    quiet = check_regions(config(), (), listen=2.5)
    assert quiet.status is Status.FAIL and "WRITEBUS_PREFIX" in quiet.fix
    assert check_regions(config(), None, listen=2.5).status is Status.SKIP


# -- lag --------------------------------------------------------------------------------------


def test_lag_bytes_against_the_announcement_before_the_report() -> None:
    """Each replica's latest report is compared with the primary's position announced before
    it; a later announcement the replica could not have seen yet does not count."""
    heard = [
        bc("syd", "primary", 1000, 1.0),
        bc("lax", "replica", 900, 1.1),
        bc("syd", "primary", 5000, 1.9),  # after the replica's last report
    ]
    assert replica_lag_bytes(heard, "lax") == 100
    # A report before any announcement is compared with the first one.
    assert replica_lag_bytes([bc("lax", "replica", 10, 0.0), bc("syd", "primary", 30, 1.0)],
                             "lax") == 20
    assert replica_lag_bytes(HEALTHY, "lax") == 0


def test_lag_bytes_worst_replica_and_replica_id() -> None:
    """With several replicas the worst counts, unless the node follows one replica."""
    heard = [
        bc("syd", "primary", 1000, 1.0),
        bc("lax", "replica", 1000, 1.1, "a"),
        bc("lax", "replica", 400, 1.2, "b"),
    ]
    assert replica_lag_bytes(heard, "lax") == 600
    assert replica_lag_bytes(heard, "lax", replica_id="a") == 0
    assert replica_lag_bytes(heard, "ams") is None
    assert replica_lag_bytes([bc("lax", "replica", 1, 0)], "lax") is None


def _standby(age: float | None) -> DatabaseFacts:
    return DatabaseFacts(endpoint="db", in_recovery=True, replay_age=age)


def test_lag_idle_primary_is_not_lag() -> None:
    """Caught up in bytes, an old replay timestamp only means an idle primary: pass, saying so."""
    c = judge_lag(config(), _standby(300.0), HEALTHY, Limits())
    assert c.ok and "0 bytes behind" in c.detail and "idle" in c.detail


def test_lag_over_the_byte_limit_fails() -> None:
    """More bytes behind than --max-lag-bytes fails, whatever the replay age."""
    heard = [bc("syd", "primary", 20 * MiB, 1.0), bc("lax", "replica", 0, 1.1)]
    c = judge_lag(config(), _standby(0.1), heard, Limits(max_lag_bytes=16 * MiB))
    assert c.status is Status.FAIL and "20.0 MiB behind" in c.detail
    assert "pg_stat_wal_receiver" in c.fix
    assert judge_lag(config(), _standby(0.1), heard, Limits(max_lag_bytes=32 * MiB)).ok


def test_lag_behind_and_old_fails() -> None:
    """A little behind in bytes and no transaction replayed for longer than --max-lag: fail."""
    heard = [bc("syd", "primary", 2000, 1.0), bc("lax", "replica", 1000, 1.1)]
    assert judge_lag(config(), _standby(9.0), heard, Limits(max_lag_seconds=5)).status is (
        Status.FAIL
    )
    assert judge_lag(config(), _standby(1.0), heard, Limits(max_lag_seconds=5)).ok


def test_lag_without_broadcasts_falls_back_to_seconds() -> None:
    """No broadcasts: the replay age decides, with the idle-primary caveat; nothing known at
    all skips."""
    old = judge_lag(config(), _standby(60.0), None, Limits(max_lag_seconds=5))
    assert old.status is Status.FAIL and "idle primary" in old.detail
    assert old.fix.startswith("fix the nats check")
    silent = judge_lag(config(), _standby(60.0), (), Limits(max_lag_seconds=5))
    assert silent.fix.startswith("fix the progress check")
    assert judge_lag(config(), _standby(1.0), (), Limits()).ok
    assert judge_lag(config(), _standby(None), None, Limits()).status is Status.SKIP


def test_lag_in_the_primary_region_passes() -> None:
    """The primary region reads the primary: there is no replica lag to judge."""
    assert judge_lag(config("syd"), PRIMARY_DB, HEALTHY, Limits()).ok


# -- the whole checklist and its report -------------------------------------------------------


def _facts(**changes: object) -> Facts:
    values: dict[str, object] = dict(
        config=config(),
        nats_endpoint="n:4222",
        nats_error=None,
        database=STANDBY,
        ping=PingFacts(subject="writebus.rpc.syd", info=PING_OK),
        heard=HEALTHY,
        listen=2.5,
        version="1.0",
    )
    values.update(changes)
    return Facts(**values)  # type: ignore[arg-type]


def test_evaluate_healthy_and_nats_down() -> None:
    """Every check in order; with NATS down the NATS checks are skipped, the rest still judged."""
    healthy = evaluate(_facts())
    assert [c.name for c in healthy] == list(CHECK_NAMES) and all(c.ok for c in healthy)
    down = {c.name: c for c in evaluate(_facts(nats_error="connection refused", ping=None,
                                               heard=None))}
    assert down["nats"].status is Status.FAIL
    assert {n for n, c in down.items() if c.status is Status.SKIP} == {"bus", "progress",
                                                                       "regions"}
    assert down["database"].ok and down["role"].ok and down["lag"].ok


def test_settings_failed_lists_every_check() -> None:
    """Unreadable settings: that fails and every other check is skipped, so JSON keeps its
    shape."""
    checks = settings_failed("WRITEBUS_RPC_TIMEOUT='x' is not a duration", "fix it")
    assert [c.name for c in checks] == list(CHECK_NAMES)
    assert checks[0].status is Status.FAIL and all(c.status is Status.SKIP for c in checks[1:])


def _report(*checks: Check) -> Report:
    return Report(checks=checks, region="lax", primary_region="syd", prefix="writebus")


def test_report_text_fits_80_columns() -> None:
    """Long details and fixes wrap under the name column, within 80 columns."""
    long = "word " * 60
    report = _report(passed("settings", "fine"), failed("regions", long, long),
                     skipped("lag", "needs NATS"))
    text = report.render(width=80)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert lines[1] == "✓ settings  fine"
    assert lines[2].startswith("✗ regions   word")
    assert any(line.startswith("            fix: word") for line in lines)
    assert "- lag       skipped: needs NATS" in lines
    assert lines[-1] == "1 failed, 1 skipped of 3 checks"
    assert report.exit_code == 1


def test_report_marks_fall_back_to_ascii() -> None:
    """An output that cannot encode ✓/✗ gets ASCII marks instead of a UnicodeEncodeError."""
    assert marks_for("utf-8")[Status.PASS] == "✓"
    assert marks_for("ascii")[Status.FAIL] == "x"
    assert marks_for(None)[Status.PASS] == "+"
    text = _report(passed("nats", "ok")).render(encoding="latin-1")
    text.encode("latin-1")
    assert text.splitlines()[-1] == "all 1 checks passed"


def test_report_json_shape() -> None:
    """One object: overall ok and each check's name, ok, status, detail and fix."""
    report = _report(passed("nats", "connected"), failed("lag", "behind", "check replication"))
    data = json.loads(report.to_json())
    assert data["ok"] is False and data["region"] == "lax"
    assert data["checks"] == [
        {"name": "nats", "ok": True, "status": "pass", "detail": "connected", "fix": None},
        {"name": "lag", "ok": False, "status": "fail", "detail": "behind",
         "fix": "check replication"},
    ]
    assert _report(passed("nats", "connected")).exit_code == 0


def test_help_description_fits_80_columns() -> None:
    """`writebus check --help` is printed as written: every line fits 80 columns."""
    assert max(len(line) for line in DESCRIPTION.splitlines()) <= 80
    assert "--max-lag-bytes" in DESCRIPTION and "idle" in DESCRIPTION


def test_command_line_values() -> None:
    """--listen/--timeout/--max-lag take positive seconds, --max-lag-bytes a byte count; bad
    values are argparse errors (a one-line usage message, exit 2)."""
    import argparse

    from writebus.bus.checklist import byte_count, positive_seconds

    assert positive_seconds("2.5") == 2.5 and byte_count("0") == 0
    for bad in ("0", "-1", "nan", "inf", "soon"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_seconds(bad)
    for bad in ("-1", "1.5", "lots"):
        with pytest.raises(argparse.ArgumentTypeError):
            byte_count(bad)
