"""Choosing the event loop: uvloop when installed, asyncio on request, clear errors."""

from __future__ import annotations

import asyncio
import threading

import pytest

from writebus.bus.settings import BusSettings
from writebus.client import loops
from writebus.client.errors import ConfigError, Outcome, WriteBusError
from writebus.client.loopthread import LoopThread


def test_auto_means_uvloop_when_installed() -> None:
    """The dev install has the speed extra: auto picks uvloop; asyncio stays available."""
    assert loops.uvloop_installed()  # `make install` installs writebus[speed]
    assert loops.resolve("auto") == "uvloop"
    assert loops.resolve(" Asyncio ") == "asyncio"
    assert BusSettings.from_env({}).event_loop == "uvloop"
    assert BusSettings.from_env({"WRITEBUS_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"


def test_auto_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the extra, auto is the standard loop and an explicit uvloop is a config error."""
    monkeypatch.setattr(loops, "uvloop_installed", lambda: False)
    assert loops.resolve("auto") == "asyncio"
    with pytest.raises(ConfigError, match=r"writebus\[speed\]") as info:
        loops.resolve("uvloop")
    assert info.value.variable == "WRITEBUS_EVENT_LOOP"


def test_a_misspelled_choice_names_the_variable_and_the_choices() -> None:
    with pytest.raises(ConfigError) as info:
        BusSettings.from_env({"WRITEBUS_EVENT_LOOP": "uv"})
    assert info.value.variable == "WRITEBUS_EVENT_LOOP"
    assert "auto, uvloop, asyncio" in str(info.value)


@pytest.mark.parametrize(("choice", "module"), [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_run_uses_the_chosen_loop(choice: str, module: str) -> None:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    assert loops.run(which(), choice) == module


def test_the_sync_apis_loop_thread_runs_uvloop() -> None:
    thread = LoopThread()
    try:
        assert type(thread.loop).__module__.startswith("uvloop")
    finally:
        thread.stop()


@pytest.mark.parametrize(("env", "module"), [(None, "uvloop"), ("asyncio", "asyncio")])
def test_the_sync_apis_loop_thread_follows_writebus_event_loop(
    monkeypatch: pytest.MonkeyPatch, env: str | None, module: str
) -> None:
    """``WRITEBUS_EVENT_LOOP`` picks the sync API's loop too, as the docs say (it was always
    uvloop when installed)."""
    if env is None:
        monkeypatch.delenv("WRITEBUS_EVENT_LOOP", raising=False)
    else:
        monkeypatch.setenv("WRITEBUS_EVENT_LOOP", env)
    thread = LoopThread()
    try:
        assert type(thread.loop).__module__.split(".")[0] == module
    finally:
        thread.stop()


def test_a_misspelled_loop_for_the_sync_api_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WRITEBUS_EVENT_LOOP", "uv")
    with pytest.raises(ConfigError) as info:
        LoopThread()
    assert info.value.variable == "WRITEBUS_EVENT_LOOP"


def test_a_call_after_the_loop_stopped_at_exit_is_not_made() -> None:
    """Once the loop thread stopped (the process exits), a call says so, typed: a write was
    not applied. (It raised asyncio's untyped RuntimeError: the loop was closed.)"""
    thread = LoopThread()
    thread.stop()
    ran: list[bool] = []

    async def write() -> None:
        ran.append(True)

    with pytest.raises(WriteBusError, match="process is exiting") as info:
        thread.run(write(), write=True)
    assert info.value.outcome is Outcome.NOT_APPLIED and ran == []
    with pytest.raises(WriteBusError) as read:
        thread.run(write())
    assert read.value.outcome is None


def test_a_call_cut_short_as_the_loop_stops_has_an_unknown_outcome() -> None:
    """A write under way when the loop stops at exit is cancelled: the caller's thread gets a
    WriteBusError with an unknown outcome, not asyncio's CancelledError."""
    thread = LoopThread()
    started = threading.Event()
    caught: list[BaseException] = []

    async def slow_write() -> None:
        started.set()
        await asyncio.sleep(30)

    def call() -> None:
        try:
            thread.run(slow_write(), write=True)
        except BaseException as exc:  # noqa: BLE001 - inspected below
            caught.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert started.wait(5)
    thread.stop()
    caller.join(5)
    assert len(caught) == 1 and isinstance(caught[0], WriteBusError)
    assert caught[0].outcome is Outcome.UNKNOWN
