"""Settings of the DICOM node (``backmice serve --config node.yaml``), validated on load.

Every problem raises :class:`~backmice_vision.errors.ConfigError` with a one-line message that names
the file and the key. Times are in seconds; relative paths in the file are relative to the file's folder.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..types import Precision

OUTPUT_KINDS = ("seg", "sr", "sc")
PIPELINES = ("detector", "passthrough-sc")  # or "package.module:function"
_AE_RE = re.compile(r"^[\x20-\x7e]{1,16}$")
_PIPELINE_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class TlsServer:
    """TLS of the node's own listener. ``ca_file`` set: clients must present a certificate it signed."""

    certificate: Path
    private_key: Path
    ca_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.certificate), str(self.private_key))
        if self.ca_file is not None:
            ctx.load_verify_locations(cafile=str(self.ca_file))
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


@dataclass(frozen=True)
class TlsClient:
    """TLS towards a destination: the CA that signed its certificate, and our optional client certificate."""

    ca_file: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    server_hostname: str | None = None  # default: the destination host

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=None if self.ca_file is None else str(self.ca_file)
        )
        if self.certificate is not None and self.private_key is not None:
            ctx.load_cert_chain(str(self.certificate), str(self.private_key))
        return ctx


@dataclass(frozen=True)
class Destination:
    """Where results go: a C-STORE SCP (``ae_title``/``host``/``port``) or a DICOMweb STOW-RS URL."""

    name: str
    ae_title: str | None = None
    host: str | None = None
    port: int | None = None
    stow_url: str | None = None
    tls: TlsClient | None = None
    timeout_s: float = 30.0

    @property
    def kind(self) -> str:
        return "stow" if self.stow_url else "dimse"


@dataclass(frozen=True)
class Caller:
    """A sender allowed to associate: its AE title, the hosts it may come from, where its results go."""

    ae_title: str
    hosts: tuple[str, ...]
    destination: str | None = None  # None: the node's default destination


@dataclass
class NodeConfig:
    ae_title: str = "BACKMICE"
    bind_address: str = "127.0.0.1"
    port: int = 11112
    spool_dir: Path = Path("build/node-spool")
    callers: dict[str, Caller] = field(default_factory=dict)
    destinations: dict[str, Destination] = field(default_factory=dict)
    default_destination: str | None = None
    outputs: tuple[str, ...] = OUTPUT_KINDS
    series_complete: str = (
        "quiet"  # "quiet": quiet_period_s after the last instance; "release": also on release
    )
    quiet_period_s: float = 10.0
    workers: int = 1
    pipeline: str = "detector"
    model: str | None = None
    device: str = "cpu"
    precision: Precision = "float32"  # of the network (Detector(precision=...))
    max_process_attempts: int = 3
    max_delivery_attempts: int = 8
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 300.0
    processing_delay_s: float = 0.0  # tests only: hold each series this long in the worker
    max_associations: int = 10
    tls: TlsServer | None = None
    source: Path | None = None

    def destination_for(self, calling_ae: str) -> Destination:
        """The destination of results of series sent by ``calling_ae``."""
        caller = self.callers.get(calling_ae)
        name = caller.destination if caller and caller.destination else self.default_destination
        if name is None or name not in self.destinations:
            raise ConfigError(f"no destination for calling AE {calling_ae!r}", self.source)
        return self.destinations[name]

    def backoff_s(self, attempt: int) -> float:
        """Delay before delivery attempt ``attempt + 1`` (attempt >= 1): exponential, capped."""
        return float(min(self.backoff_max_s, self.backoff_initial_s * 2 ** max(0, attempt - 1)))


def _ae(value: Any, where: str, path: Path | None) -> str:
    if not isinstance(value, str) or not _AE_RE.match(value.strip()) or "\\" in value:
        raise ConfigError(f"{where}: AE title must be 1-16 printable ASCII characters", path)
    return value.strip()


def _num(raw: dict[str, Any], key: str, default: float, path: Path | None, minimum: float = 0.0) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ConfigError(f"{key} must be a number >= {minimum}", path)
    return float(value)


def _int(raw: dict[str, Any], key: str, default: int, path: Path | None, lo: int = 1, hi: int = 65535) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{key} must be an integer in [{lo}, {hi}]", path)
    return value


def _file(value: Any, key: str, base: Path, path: Path | None) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a file path", path)
    p = Path(value) if Path(value).is_absolute() else base / value
    if not p.is_file():
        raise ConfigError(f"{key}: file not found: {p}", path)
    return p


def _mapping(value: Any, key: str, path: Path | None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a mapping", path)
    return value


def _tls_client(raw: Any, key: str, base: Path, path: Path | None) -> TlsClient | None:
    if raw is None or raw is False:
        return None
    if raw is True:
        return TlsClient()
    raw = _mapping(raw, key, path)
    cert, pkey = raw.get("certificate"), raw.get("private_key")
    if (cert is None) != (pkey is None):
        raise ConfigError(f"{key}: certificate and private_key go together", path)
    return TlsClient(
        ca_file=None if raw.get("ca_file") is None else _file(raw["ca_file"], f"{key}.ca_file", base, path),
        certificate=None if cert is None else _file(cert, f"{key}.certificate", base, path),
        private_key=None if pkey is None else _file(pkey, f"{key}.private_key", base, path),
        server_hostname=raw.get("server_hostname"),
    )


def parse_config(raw: dict[str, Any], path: Path | None = None) -> NodeConfig:
    """Validate a settings mapping (the YAML document) into a :class:`NodeConfig`."""
    base = path.parent if path is not None else Path.cwd()
    known = set(NodeConfig.__dataclass_fields__) - {"source"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}", path)

    destinations: dict[str, Destination] = {}
    for name, d in _mapping(raw.get("destinations"), "destinations", path).items():
        d = _mapping(d, f"destinations.{name}", path)
        if d.get("stow_url"):
            url = str(d["stow_url"])
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"destinations.{name}.stow_url must be an http(s) URL", path)
            destinations[name] = Destination(
                name=name,
                stow_url=url.rstrip("/"),
                tls=_tls_client(d.get("tls"), f"destinations.{name}.tls", base, path),
                timeout_s=_num(d, "timeout_s", 30.0, path, 1.0),
            )
            continue
        for key in ("ae_title", "host", "port"):
            if key not in d:
                raise ConfigError(f"destinations.{name} needs ae_title, host and port (or stow_url)", path)
        destinations[name] = Destination(
            name=name,
            ae_title=_ae(d["ae_title"], f"destinations.{name}.ae_title", path),
            host=str(d["host"]),
            port=_int(d, "port", 104, path),
            tls=_tls_client(d.get("tls"), f"destinations.{name}.tls", base, path),
            timeout_s=_num(d, "timeout_s", 30.0, path, 1.0),
        )

    callers: dict[str, Caller] = {}
    raw_callers = raw.get("callers") or []
    if not isinstance(raw_callers, list):
        raise ConfigError("callers must be a list of {ae_title, hosts, destination}", path)
    for i, c in enumerate(raw_callers):
        c = _mapping(c, f"callers[{i}]", path)
        ae = _ae(c.get("ae_title"), f"callers[{i}].ae_title", path)
        hosts = c.get("hosts", ["127.0.0.1"])
        if isinstance(hosts, str):
            hosts = [hosts]
        if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) for h in hosts):
            raise ConfigError(f"callers[{i}].hosts must be a list of addresses", path)
        dest = c.get("destination")
        if dest is not None and dest not in destinations:
            raise ConfigError(f"callers[{i}].destination {dest!r} is not in destinations", path)
        callers[ae] = Caller(ae_title=ae, hosts=tuple(hosts), destination=dest)
    if not callers:
        raise ConfigError("callers: at least one allowed calling AE title is needed", path)

    default = raw.get("default_destination")
    if default is None and len(destinations) == 1:
        default = next(iter(destinations))
    if default is not None and default not in destinations:
        raise ConfigError(f"default_destination {default!r} is not in destinations", path)
    if default is None and any(c.destination is None for c in callers.values()):
        raise ConfigError("default_destination is needed for callers without a destination", path)

    outputs = raw.get("outputs", list(OUTPUT_KINDS))
    if not isinstance(outputs, list) or not outputs or any(o not in OUTPUT_KINDS for o in outputs):
        raise ConfigError(f"outputs must be a non-empty list of {', '.join(OUTPUT_KINDS)}", path)
    pipeline = raw.get("pipeline", "detector")
    if not isinstance(pipeline, str) or (pipeline not in PIPELINES and not _PIPELINE_RE.match(pipeline)):
        raise ConfigError(f"pipeline must be one of {', '.join(PIPELINES)} or 'module:function'", path)
    complete = raw.get("series_complete", "quiet")
    if complete not in ("quiet", "release"):
        raise ConfigError("series_complete must be 'quiet' or 'release'", path)
    spool = raw.get("spool_dir", "build/node-spool")
    if not isinstance(spool, str) or not spool:
        raise ConfigError("spool_dir must be a folder path", path)

    tls: TlsServer | None = None
    if raw.get("tls"):
        t = _mapping(raw["tls"], "tls", path)
        tls = TlsServer(
            certificate=_file(t.get("certificate"), "tls.certificate", base, path),
            private_key=_file(t.get("private_key"), "tls.private_key", base, path),
            ca_file=None if t.get("ca_file") is None else _file(t["ca_file"], "tls.ca_file", base, path),
        )
    model = raw.get("model")
    precision = raw.get("precision", "float32")
    from ..model.inference import check_precision  # numpy only, no torch

    try:
        check_precision(precision)
    except ConfigError as exc:
        raise ConfigError(exc.reason, path) from None
    return NodeConfig(
        ae_title=_ae(raw.get("ae_title", "BACKMICE"), "ae_title", path),
        bind_address=str(raw.get("bind_address", "127.0.0.1")),
        port=_int(raw, "port", 11112, path, lo=0),
        spool_dir=Path(spool) if Path(spool).is_absolute() else base / spool,
        callers=callers,
        destinations=destinations,
        default_destination=default,
        outputs=tuple(outputs),
        series_complete=complete,
        quiet_period_s=_num(raw, "quiet_period_s", 10.0, path),
        workers=_int(raw, "workers", 1, path, hi=64),
        pipeline=pipeline,
        model=None if model is None else str(model),
        device=str(raw.get("device", "cpu")),
        precision=precision,
        max_process_attempts=_int(raw, "max_process_attempts", 3, path, hi=100),
        max_delivery_attempts=_int(raw, "max_delivery_attempts", 8, path, hi=1000),
        backoff_initial_s=_num(raw, "backoff_initial_s", 2.0, path, 0.01),
        backoff_max_s=_num(raw, "backoff_max_s", 300.0, path, 0.01),
        processing_delay_s=_num(raw, "processing_delay_s", 0.0, path),
        max_associations=_int(raw, "max_associations", 10, path, hi=1000),
        tls=tls,
        source=path,
    )


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate a node YAML file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the node config ({exc.strerror or exc})", path) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = "" if line is None else f" at line {line + 1}"
        raise ConfigError(f"not valid YAML{where}", path) from None
    if not isinstance(raw, dict):
        raise ConfigError("the node config must be a YAML mapping", path)
    return parse_config(raw, path)
