"""The FastAPI application: `/ws`, `/healthz`, `/readyz`, `/metrics`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay import __version__, contract
from relay.config import Settings
from relay.node import RelayNode

STATIC = Path(__file__).parent / "static"


def create_app(settings: Settings) -> FastAPI:
    node = RelayNode(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await node.start()
        try:
            yield
        finally:
            await node.stop()

    app = FastAPI(title="GameCluster relay", version=__version__, lifespan=lifespan)
    app.state.node = node

    @app.websocket(contract.WS_PATH)
    async def websocket_endpoint(websocket: WebSocket) -> None:
        await node.serve(websocket)

    @app.get(contract.HEALTH_PATH)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "node": settings.node_id}

    @app.get(contract.READY_PATH)
    async def readyz() -> JSONResponse:
        reason = node.readiness()
        if reason is None:
            return JSONResponse({"status": "ready", "node": settings.node_id})
        return JSONResponse({"status": "unready", "reason": reason}, status_code=503)

    @app.get(contract.METRICS_PATH)
    async def metrics() -> Response:
        node.metrics.rooms.set(node.hub.room_count)
        return Response(generate_latest(node.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # The demo page and the browser client (plain JavaScript), last: routes above win.
    app.mount("/", StaticFiles(directory=STATIC, html=True), name="demo")
    return app
