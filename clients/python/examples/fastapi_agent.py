"""An AI agent service that streams its lifecycle to the user's browser.

Each step of a run is one line: ``await herald.publish(f"user:{user_id}",
...)``. Browsers connected with @herald/client are auto-joined to
``user:{their sub}`` and see the events live, in order, and resume after a
reconnect. Run it against a node started with herald.example.toml:

    pip install ./clients/python fastapi uvicorn
    uvicorn fastapi_agent:app --app-dir clients/python/examples
    curl -X POST http://127.0.0.1:8000/users/42/runs -d '{"prompt":"hi"}' -H 'content-type: application/json'

Configuration comes from APP_HERALD_URL and APP_HERALD_API_KEY. (Not
HERALD_*: a herald node started from the same shell reads every HERALD_*
variable as its own config and refuses unknown ones.)
"""

from __future__ import annotations

import asyncio
import os
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Dict

from fastapi import BackgroundTasks, FastAPI
from pydantic import BaseModel

from herald_sdk import AsyncHerald


class RunRequest(BaseModel):
    """What the user asked the agent to do."""

    prompt: str


def create_app(herald_url: str, api_key: str) -> FastAPI:
    """The service, publishing through one shared AsyncHerald."""
    herald: Dict[str, AsyncHerald] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        herald["client"] = AsyncHerald(herald_url, api_key)
        yield
        await herald["client"].aclose()

    app = FastAPI(lifespan=lifespan)

    async def run_agent(user_id: str, run_id: str, prompt: str) -> None:
        h, room = herald["client"], f"user:{user_id}"
        # Keys derived from the run make a re-run of this job publish nothing twice.
        await h.publish(room, "agent.started", {"run_id": run_id, "prompt": prompt}, idempotency_key=f"{run_id}:started")
        await h.publish(room, "agent.thinking", {"run_id": run_id, "thought": "Looking that up"}, idempotency_key=f"{run_id}:thinking")
        await h.publish(room, "agent.tool_executing", {"run_id": run_id, "tool": "search", "args": {"q": prompt}}, idempotency_key=f"{run_id}:tool:0")
        result = await fake_search(prompt)
        await h.publish(room, "agent.tool_completed", {"run_id": run_id, "tool": "search", "result": result}, idempotency_key=f"{run_id}:tool:0:done")
        await h.publish(room, "agent.completed", {"run_id": run_id, "answer": f"Found {len(result)} results"}, idempotency_key=f"{run_id}:completed")

    @app.post("/users/{user_id}/runs", status_code=202)
    async def start_run(user_id: str, body: RunRequest, tasks: BackgroundTasks) -> Dict[str, Any]:
        run_id = uuid.uuid4().hex
        tasks.add_task(run_agent, user_id, run_id, body.prompt)
        return {"run_id": run_id}

    return app


async def fake_search(query: str) -> list[str]:
    """Stands in for a real tool call."""
    await asyncio.sleep(0.01)
    return [f"{query} result {i}" for i in range(3)]


app = create_app(
    os.environ.get("APP_HERALD_URL", "http://127.0.0.1:8080"),
    os.environ.get("APP_HERALD_API_KEY", "example-publish-key-change-me"),
)
