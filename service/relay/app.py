"""The FastAPI applications: the player port and the admin port.

Player port: `/healthz`, `/readyz` and the demo page (static files, nothing from a CDN).
`/ws` upgrades never reach these apps: relay.transport hands them to the node. Admin
port (RELAY_ADMIN_PORT): `/metrics`, the server API under `/api/v1`, its OpenAPI schema
and `/api/docs` (relay.api.routes). FastAPI's own `/docs`, `/redoc` and `/openapi.json`
are off everywhere. With RELAY_ADMIN_PORT=0 the player app carries the admin routes too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from relay import __version__, contract
from relay.api.routes import add_admin_routes
from relay.config import Settings
from relay.node import RelayNode

STATIC = Path(__file__).parent / "static"
API_DESCRIPTION = (
    "Publish, history, presence and disconnect for game backends (docs/api.md). "
    "Every error answer has the ApiError body."
)


def create_app(settings: Settings) -> FastAPI:
    node = RelayNode(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await node.start()
        try:
            yield
        finally:
            await node.stop()

    one_port = settings.admin_port == 0
    app = FastAPI(
        title="GameCluster relay",
        version=__version__,
        description=API_DESCRIPTION,
        lifespan=lifespan,
        openapi_url=contract.OPENAPI_PATH if one_port else None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.node = node

    @app.get(contract.HEALTH_PATH, include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "node": settings.node_id}

    @app.get(contract.READY_PATH, include_in_schema=False)
    async def readyz() -> JSONResponse:
        # Shards down are named even while ready: only their rooms fail (operations.md).
        reason, down = node.readiness(), node.shards_down()
        body: dict[str, object] = {"node": settings.node_id}
        if down:
            body["shardsDown"] = down
        if reason is None:
            return JSONResponse({"status": "ready", **body})
        return JSONResponse({"status": "unready", "reason": reason, **body}, status_code=503)

    if one_port:
        add_admin_routes(app, node)
    # The demo page and the browser client (plain JavaScript), last: routes above win.
    app.mount("/", StaticFiles(directory=STATIC, html=True), name="demo")
    return app


def create_admin_app(node: RelayNode) -> FastAPI:
    """The admin port's app; it shares the player app's node (started by that app)."""
    app = FastAPI(
        title="GameCluster relay server API",
        version=__version__,
        description=API_DESCRIPTION,
        openapi_url=contract.OPENAPI_PATH,
        docs_url=None,
        redoc_url=None,
    )
    add_admin_routes(app, node)
    return app
