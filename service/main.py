"""Wire the FastAPI app: settings, model worker, metrics, routers, error handlers, lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from pancreas import __version__
from pancreas.errors import PancreasError
from service.api import api_router
from service.deps import Services
from service.errors import STATUS_BY_CODE, ServiceError, detail, status_of
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
    return app


def _add_error_handlers(app: FastAPI, services: Services) -> None:
    def respond(code: str, status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        services.metrics.error(code)
        return JSONResponse({"detail": detail(code, message)}, status_code=status, headers=headers)

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return respond(exc.code, exc.status, exc.message, exc.headers)

    @app.exception_handler(PancreasError)
    async def _input_error(_request: Request, exc: PancreasError) -> JSONResponse:
        return respond(exc.code, status_of(exc), str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        return respond("invalid_request", 422, errs)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        return respond("internal_error", STATUS_BY_CODE["internal_error"],
                       f"internal error ({type(exc).__name__}); see the server log")


def serve(settings: Settings) -> int:
    """Run uvicorn with one model instance (one process); returns when the server has shut down."""
    import uvicorn

    from pancreas.bundle import Bundle

    Bundle.load(settings.bundle_path())  # fail fast on a bad bundle, before binding the port
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, workers=1,
                            log_level=settings.log_level,
                            timeout_graceful_shutdown=int(settings.graceful_shutdown_s))
    uvicorn.Server(config).run()
    return 0
