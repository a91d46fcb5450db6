"""Embedded model server speaking TensorFlow Serving's REST and gRPC APIs.

Serves SavedModels laid out as TF Serving expects (``<base_path>/<version>/saved_model.pb``),
hot-swaps new versions, and answers:

* ``GET  /v1/models/{name}[/versions/{v}|/labels/{l}]``            model status
* ``GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata``   signature defs
* ``POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict``    row or columnar format
* ``POST ...:classify`` / ``...:regress``                            tf.Example based APIs
* ``GET  /monitoring/prometheus/metrics`` (with a --monitoring_config_file enabling it)

and, on ``--port``, TF Serving's gRPC ``PredictionService`` and ``ModelService``
(``serving._grpc_api``).

Run ``python -m serving.model_server --model_name=fraud --model_base_path=/models/fraud``; see
docs/serving.md. aiohttp owns the sockets and HTTP parsing; model calls, JSON decoding and
encoding run in a thread pool so that slow requests never block the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import unquote

import orjson
from aiohttp import ClientPayloadError, web
from prometheus_client import CONTENT_TYPE_LATEST

from serving import _codec, _json_examples
from serving._errors import ServingError, invalid_argument
from serving._http_body import JSON_CONTENT_TYPE as _JSON
from serving._http_body import read_body, send_pieces
from serving._manager import ModelManager, VersionState
from serving.config import ConfigError, ServerOptions, parse_flags
from serving.metrics import UNKNOWN_MODEL, ServingMetrics

log = logging.getLogger("serving")

# tensorflow_serving/model_servers/http_rest_api_util.cc
_V1_PATH = re.compile(r"(?i)/v1/.*")
_PREDICTION_API = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)"
)
_MODEL_STATUS_API = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?"
)
_INT64_MAX = 2**63 - 1
GRPC_STOP_GRACE_S = 5.0  # in-flight gRPC calls get this long to finish at shutdown


class _ClientGone(Exception):
    """The client disconnected before its request was read."""


@dataclass
class _Outcome:
    """What a request produced, for the response and for metrics."""

    body: bytes | list[bytes] = b""  # a list: pieces sent in turn (_codec.predict_response)
    http_status: int = 200
    code: str = "OK"
    version: str = ""
    rows: int | None = None
    runtime_s: float | None = None

    def fail(self, exc: ServingError) -> _Outcome:
        self.body = _codec.error_body(exc.message)
        self.http_status = exc.http_status
        self.code = exc.code
        return self


@dataclass(frozen=True)
class _Route:
    api: str  # predict | classify | regress | status | metadata
    model_name: str
    version: int | None
    label: str | None


def _parse_route(method: str, raw_path: str) -> _Route:
    malformed = invalid_argument(f"Malformed request: {method} {raw_path}")
    if method == "POST":
        match = _PREDICTION_API.fullmatch(raw_path)
        if match is None:
            raise malformed
        name, version, label, api = match.groups()
        api = api.lower()
    elif method == "GET":
        match = _MODEL_STATUS_API.fullmatch(raw_path)
        if match is None:
            raise malformed
        name, version, label, sub = match.groups()
        api = "metadata" if sub else "status"
        if not name:
            raise invalid_argument("Missing model name in request.")
    else:
        raise malformed
    parsed_version = None
    if version is not None:
        parsed_version = int(version)
        if parsed_version > _INT64_MAX:
            raise invalid_argument(f"Failed to convert version: {version} to numeric.")
    return _Route(
        api=api,
        model_name=unquote(name),
        version=parsed_version,
        label=unquote(label) if label is not None else None,
    )


def _status_json(versions: list[VersionState]) -> bytes:
    from google.protobuf import json_format

    from serving._grpc_api import status_response

    response = status_response(versions)
    # JsonPrintOptions of TF Serving's ToJsonString(GetModelStatusResponse).
    doc = json_format.MessageToDict(response, including_default_value_fields=True)
    return orjson.dumps(doc)


def _metadata_json(model_name: str, vs: VersionState) -> bytes:
    from google.protobuf import json_format
    from tensorflow_serving.apis import model_pb2

    spec = model_pb2.ModelSpec(name=model_name)
    spec.version.value = vs.version
    doc = {
        "model_spec": json_format.MessageToDict(
            spec, preserving_proto_field_name=True, including_default_value_fields=True
        ),
        "metadata": {"signature_def": vs.servable.signature_def_map_json},
    }
    return orjson.dumps(doc)


class ModelServer:
    """The aiohttp application around a :class:`ModelManager`."""

    def __init__(self, options: ServerOptions, manager: ModelManager, metrics: ServingMetrics):
        self.options = options
        self.manager = manager
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(options.num_threads, thread_name_prefix="model")

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=self.options.max_request_bytes)
        # One catch-all route: TF Serving's URL grammar (case-insensitive, percent-decoded
        # names, its own error texts) is applied by _parse_route, not by aiohttp's router.
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.rel_url.raw_path
        if self.options.prometheus_enabled and raw_path == self.options.prometheus_path:
            if request.method != "GET":
                return self._error(405, "Only GET is supported on the metrics endpoint")
            return web.Response(
                body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )
        if not _V1_PATH.fullmatch(raw_path):
            return self._error(404, f"Not found: {request.method} {raw_path}")

        started = time.perf_counter()
        outcome = _Outcome()
        route: _Route | None = None
        try:
            # Handed over in a list that the worker empties: no frame here keeps a large body
            # alive while its converted copies exist.
            pending = [await self._read_body(request)]
            route = _parse_route(request.method, raw_path)
            if route.api in ("predict", "classify", "regress"):
                outcome = await self._in_thread(route, pending)
            elif route.api == "status":
                versions = self.manager.status(route.model_name, route.version, route.label)
                outcome.body = _status_json(versions)
            else:
                with self.manager.acquire(route.model_name, route.version, route.label) as vs:
                    outcome.version = str(vs.version)
                    outcome.body = _metadata_json(route.model_name, vs)
        except ServingError as exc:
            outcome.fail(exc)
        except _ClientGone as exc:
            # Nobody is left to answer: a client's doing, so no traceback and no server error.
            log.info("client left mid-request on %s %s: %s", request.method, raw_path, exc)
            outcome.fail(ServingError("CANCELLED", f"Client closed the request: {exc}"))
        except Exception as exc:  # a bug must cost one request, never the server
            log.exception("internal error on %s %s", request.method, raw_path)
            outcome.fail(ServingError("INTERNAL", f"Internal error: {type(exc).__name__}: {exc}"))
        self._record(route, outcome, time.perf_counter() - started)
        if isinstance(outcome.body, list):
            return await send_pieces(request, outcome.http_status, outcome.body)
        response = web.Response(
            body=outcome.body, status=outcome.http_status, headers={"Content-Type": _JSON}
        )
        if outcome.http_status in (408, 413, 499):
            # The rest of the body may still be on its way: the connection cannot carry another
            # request.
            response.force_close()
        return response

    async def _read_body(self, request: web.Request) -> bytes | bytearray:
        """The whole body, within the body timeout and the size cap."""
        try:
            return await asyncio.wait_for(
                read_body(request, self.options.max_request_bytes), self.options.body_timeout_s
            )
        except web.HTTPRequestEntityTooLarge:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Request body is larger than the {self.options.max_request_bytes} bytes "
                "this server accepts (--rest_api_max_request_bytes)",
                http_status=413,
            ) from None
        except TimeoutError:
            raise ServingError(
                "DEADLINE_EXCEEDED",
                f"Request body not received within {self.options.body_timeout_s:g} s "
                "(--rest_api_body_timeout_in_ms)",
                http_status=408,
            ) from None
        except (ConnectionError, ClientPayloadError) as exc:
            raise _ClientGone(f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.Response(
            body=_codec.error_body(message), status=status, headers={"Content-Type": _JSON}
        )

    def _record(self, route: _Route | None, outcome: _Outcome, seconds: float) -> None:
        model, api = ("", "unknown") if route is None else (route.model_name, route.api)
        self.record_request(
            model, api, outcome.version, outcome.code, seconds, outcome.rows, outcome.runtime_s
        )

    def record_request(
        self,
        model: str,
        api: str,
        version: str,
        code: str,
        seconds: float,
        rows: int | None,
        runtime_s: float | None,
        entrypoint: str = "REST",
    ) -> None:
        """Count one request of either protocol (``entrypoint`` REST or GRPC) in the metrics."""
        if model and not self.manager.is_configured(model):
            model = UNKNOWN_MODEL  # bounded label cardinality whatever clients send
        self.metrics.observe_request(
            model, version, api, code, seconds, rows, runtime_s, entrypoint
        )

    async def _in_thread(self, route: _Route, pending: list[bytes | bytearray]) -> _Outcome:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, self._run_model_request, route, pending)
        timeout = self.options.rest_api_timeout_s
        try:
            return await asyncio.wait_for(future, timeout) if timeout else await future
        except TimeoutError:
            # The worker cannot be interrupted; it finishes (and releases its version) later.
            return _Outcome().fail(ServingError("DEADLINE_EXCEEDED", "Deadline Exceeded"))

    def _run_model_request(self, route: _Route, pending: list[bytes | bytearray]) -> _Outcome:
        """Runs in the thread pool: JSON decode, input conversion, model call, JSON encode.

        Takes the body out of ``pending``, and drops each stage's input (body, parsed document,
        input arrays) once the next stage holds what it needs.
        """
        outcome = _Outcome()
        try:
            doc = _codec.parse_json_object(pending.pop(), dense=route.api == "predict")
            with self.manager.acquire(route.model_name, route.version, route.label) as vs:
                outcome.version = str(vs.version)
                servable = vs.servable
                if route.api == "predict":
                    sig_name, fmt, batch = _codec.parse_predict_request(
                        doc, lambda name: servable.signature(name).inputs, route.model_name
                    )
                    del doc  # a dense document holds the body
                    sig = servable.signature(sig_name)
                    t0 = time.perf_counter()
                    outputs = sig.run(batch)
                    outcome.runtime_s = time.perf_counter() - t0
                    outcome.rows = batch.rows
                    del batch
                    outcome.body = _codec.predict_response(outputs, fmt)
                elif route.api == "classify":
                    sig_name, examples = _json_examples.parse_examples_request(doc, "classify")
                    classes, scores, outcome.runtime_s = servable.classify(sig_name, examples)
                    outcome.rows = len(examples)
                    outcome.body = _json_examples.classify_response(classes, scores)
                else:
                    sig_name, examples = _json_examples.parse_examples_request(doc, "regress")
                    values, outcome.runtime_s = servable.regress(sig_name, examples)
                    outcome.rows = len(examples)
                    outcome.body = _json_examples.regress_response(values)
        except ServingError as exc:
            outcome.fail(exc)
        except Exception as exc:
            log.exception("internal error in %s for model %s", route.api, route.model_name)
            outcome.fail(ServingError("INTERNAL", f"Internal error: {type(exc).__name__}: {exc}"))
        return outcome

    async def serve_forever(self, stop: asyncio.Event | None = None) -> None:
        """Serve gRPC on --port and REST on --rest_api_port (unless 0) until ``stop`` is set."""
        from serving._grpc_api import start_grpc_server

        grpc_server, grpc_port = await start_grpc_server(
            self.options.rest_api_host,
            self.options.grpc_port,
            self.options.max_request_bytes,
            self.manager,
            self.executor,
            self.record_request,
        )
        # Same line as tensorflow_model_server prints.
        log.info("Running gRPC ModelServer at %s:%d ...", self.options.rest_api_host, grpc_port)
        runner: web.AppRunner | None = None
        try:
            if self.options.rest_api_port:
                runner = await self._start_rest()
            await self._wait_for_stop(stop)
        finally:
            if runner is not None:
                await runner.cleanup()
            await grpc_server.stop(grace=GRPC_STOP_GRACE_S)

    async def _start_rest(self) -> web.AppRunner:
        runner = web.AppRunner(
            self.build_app(),
            access_log=None,
            handle_signals=False,
            # aiohttp closes a connection that has not completed a request head this long after
            # it opened (or after its last response): the header read timeout.
            keepalive_timeout=self.options.header_timeout_s,
        )
        await runner.setup()
        site = web.TCPSite(
            runner,
            self.options.rest_api_host,
            self.options.rest_api_port,
            backlog=1024,
            reuse_address=True,
        )
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        host, port = runner.addresses[0][:2]
        # Same line as tensorflow_model_server prints; scripts wait for it.
        log.info("Exporting HTTP/REST API at:%s:%d ...", host, port)
        return runner

    @staticmethod
    async def _wait_for_stop(stop: asyncio.Event | None) -> None:
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            # Outside the main thread (embedded use) this fails; the caller sets `stop` then.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
            log.info("shutting down: draining in-flight requests")
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(signum)

    def close(self) -> None:
        self.manager.stop()
        self.executor.shutdown(wait=True)


def _configure_tensorflow(options: ServerOptions) -> None:
    import tensorflow as tf

    # Must happen before the first op runs; the model loads below are the first ops.
    if options.intra_op_parallelism:
        tf.config.threading.set_intra_op_parallelism_threads(options.intra_op_parallelism)
    if options.inter_op_parallelism:
        tf.config.threading.set_inter_op_parallelism_threads(options.inter_op_parallelism)


# Set by serving._launch: exit when the process that started us is gone, so that a test run or
# benchmark that is killed does not leave servers (and their memory and ports) behind.
EXIT_WITH_PARENT_ENV = "SERVING_EXIT_WITH_PARENT_PID"


def _exit_with_parent() -> None:
    raw = os.environ.get(EXIT_WITH_PARENT_ENV, "")
    if not raw.isdigit():
        return
    parent = int(raw)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        log.warning("parent process %d is gone: shutting down", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _setup_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGINT/SIGTERM. Returns a process exit code."""
    _setup_logging()
    _exit_with_parent()
    try:
        options = parse_flags(argv)
    except SystemExit as exc:  # argparse: --help or a bad flag (it printed why)
        return exc.code if isinstance(exc.code, int) else 2
    except ConfigError as exc:
        log.error("Failed to start server. Error: %s", exc)
        return 1
    if options.enable_batching:
        log.warning("--enable_batching is ignored: the embedded server does not batch requests")

    from serving._servable import load_servable

    _configure_tensorflow(options)
    metrics = ServingMetrics()
    manager = ModelManager(
        options.model_server_config,
        metrics,
        load_servable,
        allow_labels_for_unavailable=options.allow_version_labels_for_unavailable_models,
        poll_wait_s=options.file_system_poll_wait_seconds,
        config_file=options.model_config_file,
        config_poll_wait_s=options.model_config_file_poll_wait_seconds,
    )
    # Like tensorflow_model_server: load what is on disk before opening the port.
    manager.poll_once()
    try:
        manager.check_labels()
    except ConfigError as exc:
        log.error("Failed to start server. Error: %s", exc)
        manager.stop()
        return 1
    manager.start()
    server = ModelServer(options, manager, metrics)
    try:
        asyncio.run(server.serve_forever())
    except OSError as exc:
        log.error(
            "Failed to start server on %s (gRPC port %d, REST port %d): %s",
            options.rest_api_host,
            options.grpc_port,
            options.rest_api_port,
            exc,
        )
        return 1
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
