"""The keeper's side of several workers' answers (proxy.upgrade.keeper_admin.ask_workers): who is
asked, and what a worker that does not answer or does not take a command makes of the answer.
Workers here are stand-ins that answer over no channel; the real ones: test_admin_workers.py."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from proxy.admin.server import TextBody
from proxy.upgrade.keeper_admin import _BadWorker, ask_workers
from proxy.upgrade.migration import b64e


class _Worker:
    def __init__(self, index: int, answer: Any, status: int = 200) -> None:
        self.index = index
        self.pid = 100 + index
        self.gone = trio.Event()
        self.answer = answer  # None: the worker does not answer
        self.status = status
        self.asked: list[str] = []

    async def admin(self, method: str, target: str, body: bytes) -> dict[str, Any] | None:
        self.asked.append(f"{method} {target}")
        if self.answer is None:
            return None
        return {"status": self.status, "content_type": "application/json", "body": b64e(json.dumps(self.answer).encode())}


def _keeper(*workers: _Worker) -> Any:
    return SimpleNamespace(current=list(workers), host_overrides={}, logging={"level": "info"})


def _body(payload: Any) -> Any:
    return json.loads(payload.body) if isinstance(payload, TextBody) else payload


DISABLE = "/clusters/api/hosts/h:1/disable"
DONE = {"cluster": "api", "host": "h:1", "enabled": False}


async def test_a_command_every_worker_took_is_remembered_for_later_generations():
    keeper = _keeper(_Worker(0, DONE), _Worker(1, DONE))
    status, payload, _ = await ask_workers(keeper, "POST", DISABLE, b"")
    assert (status, payload) == (200, DONE)
    assert keeper.host_overrides == {("api", "h:1"): False}
    assert [w.asked for w in keeper.current] == [[f"POST {DISABLE}"]] * 2


async def test_a_command_one_worker_did_not_take_is_a_502_that_says_who_did():
    keeper = _keeper(_Worker(0, DONE), _Worker(1, None), _Worker(2, {"error": "cluster 'api' has no host 'h:1'"}, status=404))
    status, payload, _ = await ask_workers(keeper, "POST", DISABLE, b"")
    assert status == 502
    assert payload["error"] == "applied by worker #0; not by #1: no answer; #2: cluster 'api' has no host 'h:1'"
    assert payload["per_worker"] == {"0": DONE, "1": None, "2": {"error": "cluster 'api' has no host 'h:1'"}}
    assert keeper.host_overrides == {("api", "h:1"): False}  # what the operator asked for, in later generations


async def test_a_command_every_worker_refuses_is_their_answer():
    keeper = _keeper(*(_Worker(i, {"error": "unknown cluster 'api'"}, status=404) for i in (0, 1)))
    status, payload, _ = await ask_workers(keeper, "POST", DISABLE, b"")
    assert (status, _body(payload)) == (404, {"error": "unknown cluster 'api'"})
    assert keeper.host_overrides == {}


async def test_a_read_is_not_a_partial_sum():
    """A worker that does not answer makes /stats a 503, not a sum without its share."""
    keeper = _keeper(_Worker(0, {"listener.web.downstream_cx_total": 3}), _Worker(1, None))
    status, payload, _ = await ask_workers(keeper, "GET", "/stats", b"")
    assert status == 503 and payload["error"] == "worker #1 (pid 101) did not answer; ?worker=I reads one worker"
    status, payload, _ = await ask_workers(keeper, "GET", "/stats?worker=0", b"")
    assert (status, _body(payload)) == (200, {"listener.web.downstream_cx_total": 3})


async def test_worker_selects_one_worker_and_asks_no_other():
    keeper = _keeper(_Worker(0, DONE), _Worker(1, DONE))
    status, payload, _ = await ask_workers(keeper, "POST", f"{DISABLE}?worker=1", b"")
    assert (status, _body(payload)) == (200, DONE)
    assert [w.asked for w in keeper.current] == [[], [f"POST {DISABLE}?worker=1"]]
    assert keeper.host_overrides == {}  # one worker's change is not replayed into new generations
    with pytest.raises(_BadWorker, match=r"no worker with index 2 \(workers: 0, 1\)"):
        await ask_workers(keeper, "GET", "/clusters?worker=2", b"")
