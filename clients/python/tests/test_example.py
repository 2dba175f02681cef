"""The FastAPI example in examples/ runs and emits a whole agent run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import httpx
import pytest

from conftest import ADMIN_KEY, PUBLISH_KEY, Node, wait_until

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402


def test_fastapi_agent_example_emits_the_lifecycle(node: Node) -> None:
    path = Path(__file__).resolve().parents[1] / "examples" / "fastapi_agent.py"
    spec = importlib.util.spec_from_file_location("fastapi_agent", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fastapi_agent"] = module
    spec.loader.exec_module(module)
    app = module.create_app(node.url, PUBLISH_KEY)
    with TestClient(app) as client:
        r = client.post("/users/4242/runs", json={"prompt": "weather"})
        assert r.status_code == 202
        run_id = r.json()["run_id"]

    def history() -> list:
        resp = httpx.get(
            f"{node.url}/api/v1/rooms/user:4242/history",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        return [e for e in resp.json()["events"] if e["data"].get("run_id") == run_id]

    wait_until(lambda: len(history()) == 5, "the five lifecycle events")
    assert [e["event"] for e in history()] == [
        "agent.started",
        "agent.thinking",
        "agent.tool_executing",
        "agent.tool_completed",
        "agent.completed",
    ]
