"""Wire the FastAPI app: settings, model worker, metrics, routers, error handlers, lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pancreas import __version__
from pancreas.errors import PancreasError
from service.api import api_router
from service.deps import Services
from service.errors import CLOSE_CONNECTION, STATUS_BY_CODE, ServiceError, detail, status_of
from service.settings import Settings
from service.worker import ModelWorker

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service app. The model loads in the background: /healthz answers at once, /readyz once warm."""
    settings = settings or Settings()
    services = Services(settings=settings, worker=ModelWorker(settings))
    services.metrics.bind_queue(lambda: services.worker.waiting, lambda: services.worker.running)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(services.worker.start())
        yield
        await loading  # shutdown during load: let the load finish, then stop the thread cleanly
        await services.worker.close()  # in-flight requests were already drained by uvicorn

    app = FastAPI(title="pancreas-mtl", version=__version__, lifespan=lifespan,
                  description="Pancreas and lesion segmentation plus lesion subtype for abdominal CT. "
                              "Errors: {'detail': {'code': <stable code>, 'message': <text>}}.")
    app.state.services = services
    app.include_router(api_router)
    _add_error_handlers(app, services)
    app.add_middleware(InternalErrors, on_error=lambda: services.metrics.error("internal_error"))
    return app


#: Stable codes of the HTTP errors the framework raises itself (unknown route, wrong method, ...).
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def _add_error_handlers(app: FastAPI, services: Services) -> None:
    def respond(code: str, status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        services.metrics.error(code)
        headers = dict(headers or {})
        if code in CLOSE_CONNECTION:
            headers["Connection"] = "close"
        return JSONResponse({"detail": detail(code, message)}, status_code=status, headers=headers)

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return respond(exc.code, exc.status, exc.message, exc.headers)

    @app.exception_handler(PancreasError)
    async def _input_error(_request: Request, exc: PancreasError) -> JSONResponse:
        return respond(exc.code, status_of(exc), str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = {404: f"no route {request.url.path!r}; see /docs for the API",
                   405: f"{request.method} is not allowed on {request.url.path!r}"}.get(exc.status_code,
                                                                                      str(exc.detail))
        return respond(code, exc.status_code, message, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        return respond("invalid_request", 422, errs)



class InternalErrors:
    """Answer an unexpected exception with the documented 500 body and keep the connection.

    Starlette's own handler for ``Exception`` re-raises after answering, so uvicorn logs a second
    traceback and drops the connection; this middleware logs once and returns normally.
    """

    def __init__(self, app: ASGIApp, on_error: Callable[[], None]) -> None:
        self.app, self.on_error = app, on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            logger.exception("unexpected error in %s %s", scope.get("method"), scope.get("path"))
            if started:  # the answer is already on its way: nothing better than ending it
                return
            self.on_error()
            body = {"detail": detail("internal_error", f"internal error ({type(exc).__name__}); see the server log")}
            await JSONResponse(body, status_code=STATUS_BY_CODE["internal_error"])(scope, receive, send)


class DrainingServer(uvicorn.Server):
    """uvicorn, telling the worker at the shutdown signal, so uploads still arriving are cut off at once."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)


def serve(settings: Settings) -> int:
    """Run uvicorn with one model instance (one process); returns when the server has shut down."""
    from pancreas.bundle import Bundle

    Bundle.load(settings.bundle_path())  # fail fast on a bad bundle, before binding the port
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, workers=1,
                            log_level=settings.log_level,
                            timeout_graceful_shutdown=int(settings.graceful_shutdown_s))
    DrainingServer(config, app.state.services.worker.begin_drain).run()
    return 0
