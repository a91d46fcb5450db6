"""Command-line flags and config files of the embedded model server.

Flags are named as ``tensorflow_model_server`` names them, and ``--model_config_file`` /
``--monitoring_config_file`` are the same text-format protos (``ModelServerConfig``,
``MonitoringConfig``), so a deployment can switch between this server and TF Serving without
rewriting its configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

log = logging.getLogger("serving")

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath
TENSORFLOW_PLATFORM = "tensorflow"
# Parsing a JSON body into Python objects costs several times its size, so the cap bounds what
# one request can make the server allocate.
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
DEFAULT_HEADER_TIMEOUT_MS = 30_000
DEFAULT_BODY_TIMEOUT_MS = 30_000


class ConfigError(ValueError):
    """A flag or config file is invalid; the server refuses to start (or to reload)."""


def _bool_flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.model_server",
        description=(
            "Embedded TensorFlow Serving compatible model server (REST and gRPC) "
            "(flags follow tensorflow_model_server)."
        ),
    )
    add = parser.add_argument
    add("--port", type=int, default=8500, help="gRPC port")
    add("--rest_api_port", type=int, default=8501, help="REST port (0: no REST API)")
    add(
        "--rest_api_host",
        default="127.0.0.1",
        help="address to bind both APIs to (TF Serving binds gRPC to all addresses)",
    )
    add("--model_name", default="default", help="model name (ignored with --model_config_file)")
    add("--model_base_path", default="", help="directory holding <version>/saved_model.pb")
    add("--model_config_file", default="", help="text-format ModelServerConfig")
    add(
        "--model_config_file_poll_wait_seconds",
        type=float,
        default=0.0,
        help="re-read --model_config_file this often (0: never)",
    )
    add("--file_system_poll_wait_seconds", type=float, default=1.0, help="version poll interval")
    add(
        "--rest_api_timeout_in_ms",
        type=int,
        default=30000,
        help="per-request model run timeout; 0 disables it",
    )
    add("--rest_api_num_threads", type=int, default=0, help="model threads (0: 4 x CPUs)")
    add("--monitoring_config_file", default="", help="text-format MonitoringConfig")
    add(
        "--allow_version_labels_for_unavailable_models",
        type=_bool_flag,
        nargs="?",
        const=True,
        default=False,
        help="allow a version label to point at a version that is not loaded yet",
    )
    add(
        "--rest_api_max_request_bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help="largest accepted request body (not a TF Serving flag)",
    )
    add(
        "--rest_api_header_timeout_in_ms",
        type=int,
        default=DEFAULT_HEADER_TIMEOUT_MS,
        help="close a connection whose request head is not complete this long after it opened "
        "or after its previous response (also the keep-alive idle limit; not a TF Serving flag)",
    )
    add(
        "--rest_api_body_timeout_in_ms",
        type=int,
        default=DEFAULT_BODY_TIMEOUT_MS,
        help="answer 408 and close the connection if a request body is not complete this long "
        "after its head (not a TF Serving flag)",
    )
    add("--tensorflow_intra_op_parallelism", type=int, default=0)
    add("--tensorflow_inter_op_parallelism", type=int, default=0)
    # Accepted so that TF Serving command lines keep working; main() warns that it is ignored.
    add("--enable_batching", type=_bool_flag, nargs="?", const=True, default=False)
    return parser


@dataclass(frozen=True)
class ServerOptions:
    rest_api_port: int
    rest_api_host: str
    model_config_file: str
    model_config_file_poll_wait_seconds: float
    file_system_poll_wait_seconds: float
    rest_api_timeout_s: float | None
    num_threads: int
    prometheus_enabled: bool
    prometheus_path: str
    allow_version_labels_for_unavailable_models: bool
    max_request_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    intra_op_parallelism: int
    inter_op_parallelism: int
    grpc_port: int
    enable_batching: bool
    model_server_config: Any = field(repr=False)


def _read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path!r}: {exc}") from exc


def parse_model_server_config(text: str, source: str = "<string>") -> Any:
    """Parse a text-format ModelServerConfig and check what this server supports."""
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ConfigError(f"Invalid protobuf file: '{source}': {exc}") from exc
    if config.WhichOneof("config") == "custom_model_config":
        raise ConfigError(f"{source}: custom_model_config is not supported, use model_config_list")
    seen: set[str] = set()
    for model in config.model_config_list.config:
        if not model.name:
            raise ConfigError(f"{source}: a model config has no name")
        if model.name in seen:
            raise ConfigError(f"{source}: model {model.name!r} is configured twice")
        seen.add(model.name)
        if not model.base_path:
            raise ConfigError(f"{source}: model {model.name!r} has no base_path")
        platform = model.model_platform or TENSORFLOW_PLATFORM
        if platform != TENSORFLOW_PLATFORM:
            raise ConfigError(
                f"{source}: model {model.name!r} has model_platform {platform!r}; "
                f"only {TENSORFLOW_PLATFORM!r} is served"
            )
        policy = model.model_version_policy
        if policy.WhichOneof("policy_choice") == "latest" and policy.latest.num_versions < 0:
            raise ConfigError(f"{source}: model {model.name!r}: latest.num_versions must be >= 0")
    return config


def load_model_server_config(path: str) -> Any:
    return parse_model_server_config(_read_text(path, "model config file"), path)


def single_model_config(model_name: str, model_base_path: str) -> Any:
    """What tensorflow_model_server builds from --model_name/--model_base_path."""
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = model_base_path
    model.model_platform = TENSORFLOW_PLATFORM
    return config


_MONITORING_CLASS: Any = None


def monitoring_config_class() -> Any:
    """``tensorflow.serving.MonitoringConfig``, built from its descriptor.

    The tensorflow-serving-api wheel does not ship ``monitoring_config_pb2``; the message is two
    fields, so it is declared here (in a private pool, so it cannot clash with another copy).
    """
    global _MONITORING_CLASS
    if _MONITORING_CLASS is not None:
        return _MONITORING_CLASS
    fdp = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
    )
    fd = descriptor_pb2.FieldDescriptorProto
    prometheus = fdp.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=fd.TYPE_BOOL, label=fd.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL)
    monitoring = fdp.message_type.add(name="MonitoringConfig")
    monitoring.field.add(
        name="prometheus_config",
        number=1,
        type=fd.TYPE_MESSAGE,
        type_name=".tensorflow.serving.PrometheusConfig",
        label=fd.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    descriptor = pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")
    _MONITORING_CLASS = message_factory.GetMessageClass(descriptor)
    return _MONITORING_CLASS


def parse_monitoring_config(text: str, source: str = "<string>") -> Any:
    config = monitoring_config_class()()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ConfigError(f"Invalid protobuf file: '{source}': {exc}") from exc
    path = config.prometheus_config.path
    if path and not path.startswith("/"):
        raise ConfigError(f"{source}: prometheus_config.path must start with '/', got {path!r}")
    return config


def parse_flags(argv: Sequence[str] | None) -> ServerOptions:
    args = build_arg_parser().parse_args(None if argv is None else list(argv))
    if args.model_config_file:
        model_server_config = load_model_server_config(args.model_config_file)
        if args.model_base_path:
            log.info("--model_config_file is set: ignoring --model_name/--model_base_path")
    elif args.model_base_path:
        model_server_config = single_model_config(args.model_name, args.model_base_path)
    else:
        raise ConfigError("Both server_model_config_file and model_base_path are empty!")
    if args.model_config_file_poll_wait_seconds and not args.model_config_file:
        raise ConfigError("--model_config_file_poll_wait_seconds needs --model_config_file")

    prometheus_enabled, prometheus_path = False, DEFAULT_PROMETHEUS_PATH
    if args.monitoring_config_file:
        monitoring = parse_monitoring_config(
            _read_text(args.monitoring_config_file, "monitoring config file"),
            args.monitoring_config_file,
        )
        prometheus_enabled = monitoring.prometheus_config.enable
        prometheus_path = monitoring.prometheus_config.path or DEFAULT_PROMETHEUS_PATH

    if not 0 <= args.rest_api_port <= 65535:
        raise ConfigError(f"--rest_api_port must be in [0, 65535], got {args.rest_api_port}")
    if not 0 < args.port <= 65535:
        # As in tensorflow_model_server, the gRPC API is always served.
        raise ConfigError(f"--port (gRPC) must be in [1, 65535], got {args.port}")
    if args.file_system_poll_wait_seconds <= 0:
        # TF Serving treats 0 as "poll once"; a server whose point is hot-swapping keeps polling.
        raise ConfigError("--file_system_poll_wait_seconds must be > 0")
    if args.rest_api_max_request_bytes <= 0:
        raise ConfigError("--rest_api_max_request_bytes must be > 0")
    for flag in ("rest_api_header_timeout_in_ms", "rest_api_body_timeout_in_ms"):
        if getattr(args, flag) <= 0:
            raise ConfigError(f"--{flag} must be > 0, got {getattr(args, flag)}")
    threads = args.rest_api_num_threads or 4 * (os.cpu_count() or 1)
    return ServerOptions(
        rest_api_port=args.rest_api_port,
        rest_api_host=args.rest_api_host,
        model_config_file=args.model_config_file,
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        rest_api_timeout_s=(
            args.rest_api_timeout_in_ms / 1000.0 if args.rest_api_timeout_in_ms > 0 else None
        ),
        num_threads=max(1, threads),
        prometheus_enabled=prometheus_enabled,
        prometheus_path=prometheus_path,
        allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
        max_request_bytes=args.rest_api_max_request_bytes,
        header_timeout_s=args.rest_api_header_timeout_in_ms / 1000.0,
        body_timeout_s=args.rest_api_body_timeout_in_ms / 1000.0,
        intra_op_parallelism=args.tensorflow_intra_op_parallelism,
        inter_op_parallelism=args.tensorflow_inter_op_parallelism,
        grpc_port=args.port,
        enable_batching=args.enable_batching,
        model_server_config=model_server_config,
    )


def aspired_versions(policy: Any, on_disk: Sequence[int]) -> set[int]:
    """Versions a ``FileSystemStoragePathSourceConfig.ServableVersionPolicy`` asks for.

    Unset policy means ``latest { num_versions: 1 }``, as in TF Serving.
    """
    choice = policy.WhichOneof("policy_choice") if policy is not None else None
    available = sorted(set(on_disk), reverse=True)
    if choice == "all":
        return set(available)
    if choice == "specific":
        return set(policy.specific.versions) & set(available)
    num = policy.latest.num_versions if choice == "latest" else 1
    return set(available[: num or 1])
