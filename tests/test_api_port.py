"""The API port: the real client and every fake the tests use are ``Api``s as they are.

mypy checks this module (``make lint``): a fake that drifts from the port fails there. At run
time each is checked to have every call the engine makes.
"""

from __future__ import annotations

from runner.api.client import KreaClient
from runner.api.port import Api
from runner.api.server_clock import ServerClock
from runner.emulator.core import EmulatorCore
from tests.api_stub import ApiStub
from tests.fake_api import FakeApi
from tests.in_process import InProcessApi
from tests.virtual_time import VirtualClock

CALLS = ("submit", "get_job", "list_jobs", "cancel", "download", "upload_asset")


def apis() -> list[Api]:
    clock = VirtualClock()
    return [
        KreaClient("http://127.0.0.1:9", "t"),
        FakeApi(clock),
        ApiStub(),
        InProcessApi(EmulatorCore(), "t", clock, ServerClock()),
    ]


def test_the_client_and_the_fakes_answer_every_call_of_the_port() -> None:
    for api in apis():
        assert isinstance(api.account, str)
        for call in CALLS:
            assert callable(getattr(api, call)), f"{type(api).__name__} lacks {call}"
