"""A local NDIF 0.1.2 server on one CPU machine, reachable on loopback only, for tests of ``remote=True``.

``LocalNDIF`` starts the services ``ndif start`` would start, by hand, inside a private network namespace
whose only interface is ``lo`` (Ray's GCS, raylet and workers bind every interface whatever
``--node-ip-address`` says, so bind flags alone cannot keep them on loopback):

* redis-server (Debian),
* a Ray head with a pretend GPU (ndif's controller only places models on nodes that report one),
* ndif's controller actor, through the shims in ``ndif_compat.py`` (a CPU model actor, and a fix for an
  ndif 0.1.2 / nnsight 0.8.1 signature mismatch),
* the API (gunicorn + uvicorn, and its queue dispatcher),
* optionally (``object_store=True``) moto's S3 server as NDIF's object store, which only non-blocking
  requests and results over 8 MiB use.

Each service is also told to bind 127.0.0.1. A bridge thread in this process listens on 127.0.0.1 of the
host's namespace, on the same port numbers, and forwards to the API (and the object store) inside the
namespace, so a client in this process uses ``http://127.0.0.1:<port>`` as usual. ``deploy`` serves a
model from a local folder. ``stop`` ends every process of the namespace (all started here) and any process
carrying this server's marker in its environment, deletes the namespace and the temporary folder.
Needs root (``ip netns``).

Command line (serves until Ctrl-C, then stops everything)::

    python tests/ndif/local_server.py [--model FOLDER] [--dtype float32] [--object-store]

Test infrastructure: imported by tests/test_remote.py, never by nnshift.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import queue
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "LocalNDIF",
    "NDIFServerError",
    "ServerInfo",
    "allow_local_model_key",
    "missing_requirements",
    "point_client_at",
]

HERE = Path(__file__).resolve().parent
MARKER = "NNSHIFT_NDIF_STACK"
_CLONE_NEWNET = 0x40000000


class NDIFServerError(RuntimeError):
    """The local NDIF server could not be started, or a deploy failed (the message ends with log tails)."""


@dataclass
class ServerInfo:
    """How to reach a running local NDIF server (``host`` is what nnsight's ``CONFIG.API.HOST`` takes)."""

    host: str
    api_port: int
    netns: str
    workdir: Path
    dtype: str
    model_keys: list[str] = field(default_factory=list)
    startup_s: float = 0.0


def _which(exe: str) -> str | None:
    """An executable next to this Python first (a venv's scripts), then on PATH."""
    local = Path(sys.executable).parent / exe
    if local.exists() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(exe)


def missing_requirements() -> str | None:
    """Why a local NDIF server cannot run here, or None: needs ndif, redis-server, ray, gunicorn, root + ip netns."""
    import importlib.metadata as md

    try:
        md.version("ndif")
    except md.PackageNotFoundError:
        return "the ndif package is not installed (run: bash scripts/ndif_setup.sh)"
    for exe in ("redis-server", "ray", "gunicorn"):
        if _which(exe) is None:
            return f"{exe} is not on PATH (run: bash scripts/ndif_setup.sh)"
    if not sys.platform.startswith("linux") or shutil.which("ip") is None:
        return "needs Linux with iproute2 (ip netns) to keep the server on a private loopback"
    if os.geteuid() != 0:
        return "needs root to create the server's private network namespace (ip netns add)"
    return None


def allow_local_model_key(path: str | Path) -> str:
    """Let nnsight build a remote model key for a model loaded from a local folder; return the absolute path.

    nnsight canonicalises a repo id through the Hub (``HfApi().model_info``), which rejects a filesystem
    path; pre-filling its cache skips that lookup. The key then carries the absolute path, so the server
    must see the same folder (true for a server on the same machine).
    """
    from nnsight.modeling import huggingface

    resolved = str(Path(path).resolve())
    huggingface._ID_CACHE[resolved] = resolved
    huggingface._ID_CACHE[str(path)] = resolved
    return resolved


@contextlib.contextmanager
def point_client_at(host: str, api_key: str | None = None) -> Iterator[None]:
    """Point nnsight's client (``nnsight.CONFIG.API``) at ``host`` inside the block; restore it afterwards."""
    from nnsight import CONFIG

    saved = (CONFIG.API.HOST, CONFIG.API.APIKEY, CONFIG.APP.REMOTE_LOGGING)
    CONFIG.API.HOST = host
    CONFIG.API.APIKEY = api_key
    CONFIG.APP.REMOTE_LOGGING = False
    try:
        yield
    finally:
        CONFIG.API.HOST, CONFIG.API.APIKEY, CONFIG.APP.REMOTE_LOGGING = saved


class _Dialer:
    """A thread that joined a network namespace and opens TCP connections to 127.0.0.1 *inside* it.

    A socket belongs to the namespace of the thread that created it, and keeps it afterwards, so the
    connections it hands out can be used from any thread of this process.
    """

    def __init__(self, netns: str) -> None:
        self._jobs: queue.Queue[tuple[int, float, queue.Queue[Any]] | None] = queue.Queue()
        ready: queue.Queue[BaseException | None] = queue.Queue()
        self._thread = threading.Thread(
            target=self._loop, args=(netns, ready), name=f"ndif-dialer-{netns}", daemon=True
        )
        self._thread.start()
        err = ready.get(timeout=10)
        if err is not None:
            raise NDIFServerError(f"cannot enter network namespace {netns}: {err}")

    @staticmethod
    def _enter(netns: str) -> None:
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if hasattr(os, "setns"):  # Python >= 3.12
                os.setns(fd, _CLONE_NEWNET)
                return
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, os.strerror(errno))
        finally:
            os.close(fd)

    def _loop(self, netns: str, ready: queue.Queue[BaseException | None]) -> None:
        try:
            self._enter(netns)  # this thread only: setns(CLONE_NEWNET) is per thread
        except BaseException as exc:
            ready.put(exc)
            return
        ready.put(None)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            port, timeout, answer = job
            try:
                answer.put(socket.create_connection(("127.0.0.1", port), timeout=timeout))
            except OSError as exc:
                answer.put(exc)

    def connect(self, port: int, timeout: float = 5.0) -> socket.socket:
        """A connected socket to 127.0.0.1:port in the namespace (OSError when nothing listens)."""
        answer: queue.Queue[Any] = queue.Queue()
        self._jobs.put((port, timeout, answer))
        got = answer.get(timeout=timeout + 5)
        if isinstance(got, BaseException):
            raise got
        got.settimeout(None)
        return got

    def close(self) -> None:
        """Stop the thread."""
        self._jobs.put(None)
        self._thread.join(timeout=5)


class _Bridge:
    """Listens on 127.0.0.1:<port> in this namespace and pipes each connection to the same port in the server's."""

    def __init__(self, dialer: _Dialer, ports: list[int]) -> None:
        self.dialer = dialer
        self.listeners: list[socket.socket] = []
        for port in ports:
            lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lst.bind(("127.0.0.1", port))
            lst.listen(64)
            lst.setblocking(False)
            self.listeners.append(lst)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ndif-bridge", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        for lst in self.listeners:
            sel.register(lst, selectors.EVENT_READ, ("listen", lst))
        peers: dict[socket.socket, socket.socket] = {}

        def drop(sock: socket.socket) -> None:
            other = peers.pop(sock, None)
            for s in (sock, other):
                if s is None:
                    continue
                peers.pop(s, None)
                with contextlib.suppress(Exception):
                    sel.unregister(s)
                with contextlib.suppress(Exception):
                    s.close()

        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.2):
                    kind, sock = key.data
                    if kind == "listen":
                        try:
                            client, _addr = sock.accept()
                        except BlockingIOError:
                            continue
                        try:
                            upstream = self.dialer.connect(sock.getsockname()[1])
                        except OSError:
                            client.close()
                            continue
                        for s in (client, upstream):
                            s.setblocking(False)
                        peers[client], peers[upstream] = upstream, client
                        sel.register(client, selectors.EVENT_READ, ("pipe", client))
                        sel.register(upstream, selectors.EVENT_READ, ("pipe", upstream))
                        continue
                    try:
                        data = sock.recv(1 << 16)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    target = peers.get(sock)
                    if not data or target is None:
                        drop(sock)
                        continue
                    try:
                        target.setblocking(True)
                        target.sendall(data)
                        target.setblocking(False)
                    except OSError:
                        drop(sock)
        finally:
            for s in list(peers):
                drop(s)
            sel.close()

    def close(self) -> None:
        """Stop forwarding and close every socket."""
        self._stop.set()
        self._thread.join(timeout=5)
        for lst in self.listeners:
            with contextlib.suppress(Exception):
                lst.close()


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 of this namespace (all held while choosing, so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalNDIF:
    """Start, use and stop a loopback-only NDIF stack (see the module docstring)."""

    def __init__(
        self,
        *,
        dtype: str = "float32",
        object_store: bool = False,
        num_cpus: int = 4,
        timeout_s: float = 180.0,
        execution_timeout_s: int = 120,
        hide_modules: tuple[str, ...] = (),
    ) -> None:
        self.dtype = dtype
        self.hide_modules = tuple(hide_modules)
        self.object_store = object_store
        self.num_cpus = num_cpus
        self.timeout_s = timeout_s
        self.execution_timeout_s = execution_timeout_s
        self.token = uuid.uuid4().hex
        self.netns = f"nnshift-ndif-{self.token[:10]}"
        self.workdir: Path | None = None
        self.ports: dict[str, int] = {}
        self._netns_made = False
        self._dialer: _Dialer | None = None
        self._bridge: _Bridge | None = None
        self._popen: dict[str, subprocess.Popen[bytes]] = {}
        self.info: ServerInfo | None = None

    # ------------------------------------------------------------------ helpers
    @property
    def logs(self) -> Path:
        """The folder with one log per service."""
        assert self.workdir is not None
        return self.workdir / "logs"

    def _env(self, **extra: str) -> dict[str, str]:
        assert self.workdir is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NDIF_", "RAY_"))}
        # server_site/sitecustomize.py hides `hide_modules` from every server process (NNSHIFT_NDIF_HIDE)
        python_path = [str(HERE / "server_site"), str(HERE)]
        python_path += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env.update(
            {
                MARKER: self.token,
                "NNSHIFT_NDIF_HIDE": ",".join(self.hide_modules),
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
                "PYTHONPATH": os.pathsep.join(python_path),
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_enable_worker_prestart": "0",
                "RAY_prestart_worker_first_driver": "0",
                # Ray's client proxier forks a server per client; gRPC fork support makes that fail at random.
                "GRPC_ENABLE_FORK_SUPPORT": "0",
                "NDIF_HOME": str(self.workdir / "home"),
                "NDIF_REDIS_URL": f"redis://127.0.0.1:{self.ports['redis']}",
                "NDIF_RAY_ADDRESS": f"ray://127.0.0.1:{self.ports['ray_client']}",
                "NDIF_OBJECT_STORE_URL": f"http://127.0.0.1:{self.ports['s3']}",
                "NDIF_API_PORT": str(self.ports["api"]),
                "NDIF_API_WORKERS": "1",
                "NDIF_MODEL_IMPORT_PATH": "ndif_compat.CPUModelActor",
                "NDIF_CONTROLLER_IMPORT_PATH": "ndif_compat.ControllerActor",
                "NDIF_DEFAULT_DTYPE": self.dtype,
                "NDIF_CONTROLLER_SYNC_INTERVAL_S": "5",
                "NDIF_DEFAULT_EXECUTION_TIMEOUT_SECONDS": str(self.execution_timeout_s),
            }
        )
        env.update(extra)
        return env

    def _in_ns(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def _spawn(self, name: str, argv: list[str], **extra: str) -> None:
        with open(self.logs / f"{name}.log", "wb") as log:
            self._popen[name] = subprocess.Popen(
                self._in_ns(argv),
                env=self._env(**extra),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _run(self, name: str, argv: list[str], timeout: float, **extra: str) -> None:
        with open(self.logs / f"{name}.log", "wb") as log:
            try:
                done = subprocess.run(
                    self._in_ns(argv),
                    env=self._env(**extra),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    timeout=timeout,
                    start_new_session=True,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise NDIFServerError(f"{name} did not finish in {timeout:.0f}s{self._tail(name)}") from exc
        if done.returncode != 0:
            raise NDIFServerError(f"{name} exited with {done.returncode}{self._tail(name)}")

    def _tail(self, *names: str, lines: int = 25) -> str:
        if self.workdir is None or not self.logs.exists():
            return ""
        out = []
        for name in names or tuple(p.stem for p in sorted(self.logs.glob("*.log"))):
            path = self.logs / f"{name}.log"
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"\n--- {path} (last {len(text)} lines)\n" + "\n".join(text))
        return "".join(out)

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float, proc: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if proc is not None and self._popen[proc].poll() is not None:
                raise NDIFServerError(f"{proc} exited with {self._popen[proc].returncode}{self._tail(proc)}")
            time.sleep(0.25)
        raise NDIFServerError(f"timed out after {timeout:.0f}s waiting for {what}{self._tail()}")

    def _port_open(self, port: int) -> bool:
        assert self._dialer is not None
        try:
            self._dialer.connect(port, timeout=1.0).close()
            return True
        except OSError:
            return False

    def http_status(self, path: str) -> int:
        """The HTTP status of GET ``path`` on the API (0 when it does not answer), asked inside the namespace."""
        assert self._dialer is not None
        try:
            sock = self._dialer.connect(self.ports["api"], timeout=2.0)
        except OSError:
            return 0
        with sock:
            sock.settimeout(5.0)
            try:
                sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
                head = sock.recv(64).decode("latin-1")
            except OSError:
                return 0
        parts = head.split(" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ServerInfo:
        """Start every service, wait until the API is connected to Ray, and return how to reach it."""
        reason = missing_requirements()
        if reason is not None:
            raise NDIFServerError(f"cannot start a local NDIF server: {reason}")
        t0 = time.monotonic()
        atexit.register(self.stop)
        try:
            # Short path: Ray puts unix sockets under its temp dir (107-byte limit).
            self.workdir = Path(tempfile.mkdtemp(prefix="nnshift-ndif-", dir="/tmp"))
            self.logs.mkdir(parents=True)
            names = (
                "redis",
                "api",
                "s3",
                "ray_gcs",
                "ray_client",
                "dashboard",
                "agent_listen",
                "agent_grpc",
                "metrics",
                "runtime_env",
                "node_manager",
                "object_manager",
            )
            # API and object-store ports must also be free here: the bridge listens on the same numbers.
            self.ports = dict(zip(names, _free_ports(len(names)), strict=True))
            subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True)
            self._netns_made = True
            subprocess.run(self._in_ns(["ip", "link", "set", "lo", "up"]), check=True, capture_output=True)
            self._dialer = _Dialer(self.netns)
            self._start_services()
            bridged = [self.ports["api"]] + ([self.ports["s3"]] if self.object_store else [])
            self._bridge = _Bridge(self._dialer, bridged)
        except BaseException:
            self.stop()
            raise
        self.info = ServerInfo(
            host=f"http://127.0.0.1:{self.ports['api']}",
            api_port=self.ports["api"],
            netns=self.netns,
            workdir=self.workdir,
            dtype=self.dtype,
            startup_s=time.monotonic() - t0,
        )
        return self.info

    def _start_services(self) -> None:
        assert self.workdir is not None
        p = self.ports
        if self.object_store:
            moto = _which("moto_server")
            if moto is None:
                raise NDIFServerError("object_store=True needs moto_server (pip install 'moto[server]')")
            self._spawn("s3", [moto, "-H", "127.0.0.1", "-p", str(p["s3"])])
            self._wait("the object store", lambda: self._port_open(p["s3"]), 30, proc="s3")

        redis_dir = self.workdir / "redis"
        redis_dir.mkdir()
        redis = _which("redis-server") or "redis-server"
        self._spawn(
            "redis",
            [
                redis,
                "--bind",
                "127.0.0.1",
                "--port",
                str(p["redis"]),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
                "--daemonize",
                "no",
                "--dir",
                str(redis_dir),
            ],
        )
        self._wait("redis", lambda: self._port_open(p["redis"]), 30, proc="redis")

        # A pretend GPU: ndif's controller only manages nodes with a "GPU" resource; the CPU actor asks for none.
        resources = {"head": 10, "cuda_memory_bytes": 8_000_000_000, "cpu_memory_bytes": 8_000_000_000}
        self._run(
            "ray-start",
            [
                _which("ray") or "ray",
                "start",
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={p['ray_gcs']}",
                f"--ray-client-server-port={p['ray_client']}",
                f"--num-cpus={self.num_cpus}",
                "--num-gpus=1",
                f"--resources={json.dumps(resources)}",
                "--object-store-memory=100000000",
                # the controller reads the cluster through Ray's state API, which needs the dashboard
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={p['dashboard']}",
                f"--dashboard-agent-listen-port={p['agent_listen']}",
                f"--dashboard-agent-grpc-port={p['agent_grpc']}",
                f"--metrics-export-port={p['metrics']}",
                f"--runtime-env-agent-port={p['runtime_env']}",
                f"--node-manager-port={p['node_manager']}",
                f"--object-manager-port={p['object_manager']}",
                "--disable-usage-stats",
                f"--temp-dir={self.workdir / 'ray'}",
            ],
            timeout=120,
        )
        self._wait("the Ray client server", lambda: self._port_open(p["ray_client"]), 60)

        self._run(
            "controller-launch",
            [sys.executable, "-m", "ndif.services.ray.deployments.controller.controller"],
            timeout=120,
            RAY_ADDRESS=f"127.0.0.1:{p['ray_gcs']}",
        )

        # --bind on the command line overrides gunicorn_conf's 0.0.0.0.
        self._spawn(
            "api",
            [
                _which("gunicorn") or "gunicorn",
                "--config",
                "python:ndif.services.api.gunicorn_conf",
                "--bind",
                f"127.0.0.1:{p['api']}",
                "ndif.services.api.app:app",
            ],
            NDIF_SERVICE="api",
        )
        # /connected answers 503 until the API's dispatcher has joined Ray.
        self._wait("the API to connect to Ray", lambda: self.http_status("/connected") == 200, self.timeout_s, "api")

    def deploy(self, *models: tuple[str, str | Path], timeout: float | None = None) -> float:
        """Deploy models from local folders, given as ``(model_key, folder)`` pairs; wait until all are ready.

        What ``ndif deploy -f spec.yaml`` does, in one Ray client session: pinned, trusted, in the server's dtype,
        each key used verbatim (no Hub lookup) and each size measured from its folder. Returns the seconds it took.
        """
        assert self.workdir is not None and self.info is not None
        t0 = time.monotonic()
        specs = [
            {
                "checkpoint": str(folder),
                "model_key": key,
                "size_bytes": max(1, sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))),
                "pinned": True,
                "trusted": True,
                "dtype": self.dtype,
            }
            for key, folder in models
        ]
        spec_file = self.workdir / f"deploy-{len(self.info.model_keys)}.json"
        spec_file.write_text(json.dumps(specs))
        code = (
            "import json, sys\n"
            "from ndif.cli.lib.deploy import deploy\n"
            "out = deploy(json.load(open(sys.argv[1])), on_message=print)\n"
            "print(json.dumps(out))\n"
            "sys.exit(0 if all(d['status'] == 'READY' for d in out['deployments']) else 1)\n"
        )
        self._run("deploy", [sys.executable, "-c", code, str(spec_file)], timeout=timeout or self.timeout_s)
        self.info.model_keys += [key for key, _ in models]
        return time.monotonic() - t0

    def netns_pids(self) -> list[int]:
        """The ids of the processes inside this server's network namespace."""
        if not self._netns_made:
            return []
        done = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True, check=False)
        return sorted(int(x) for x in done.stdout.split() if x.isdigit())

    def our_pids(self) -> list[int]:
        """The live processes this server started: those in its namespace, or carrying its marker."""
        import psutil

        pids = set(self.netns_pids())
        pids |= {proc.pid for proc in self._popen.values() if proc.poll() is None}
        for proc in psutil.process_iter():
            try:
                if proc.environ().get(MARKER) == self.token:
                    pids.add(proc.pid)
            except (psutil.Error, OSError):
                continue
        pids.discard(os.getpid())
        return sorted(pids)

    def listening(self) -> list[tuple[str, int]]:
        """(address, port) of every TCP socket listening inside the server's namespace."""
        if not self._netns_made:
            return []
        done = subprocess.run(self._in_ns(["ss", "-Hltn"]), capture_output=True, text=True, check=False)
        out = []
        for line in done.stdout.splitlines():
            cols = line.split()
            if len(cols) >= 4:
                addr, _, port = cols[3].rpartition(":")
                out.append((addr.strip("[]"), int(port)))
        return sorted(out)

    def interfaces(self) -> list[str]:
        """The network interfaces of the server's namespace (only ``lo``)."""
        done = subprocess.run(self._in_ns(["ip", "-o", "link", "show"]), capture_output=True, text=True, check=False)
        return [line.split(":")[1].strip().split("@")[0] for line in done.stdout.splitlines() if ":" in line]

    def stop(self, grace_s: float = 5.0) -> list[int]:
        """End every process this server started (SIGTERM, then SIGKILL), delete its namespace and folder.

        Safe to call more than once and after a failed start. Returns the pids it ended.
        """
        import psutil

        if self._bridge is not None:
            self._bridge.close()
            self._bridge = None
        killed: set[int] = set()
        for _ in range(3):  # a dying parent may still spawn: sweep until nothing of ours is left
            pids = self.our_pids()
            if not pids:
                break
            procs = []
            for pid in pids:
                try:
                    proc = psutil.Process(pid)
                    proc.send_signal(signal.SIGTERM)
                    procs.append(proc)
                except psutil.Error:
                    continue
            killed |= set(pids)
            _, alive = psutil.wait_procs(procs, timeout=grace_s)
            for proc in alive:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            psutil.wait_procs(alive, timeout=5)
        for proc in self._popen.values():
            with contextlib.suppress(Exception):
                proc.wait(timeout=1)
        self._popen.clear()
        if self._dialer is not None:
            self._dialer.close()
            self._dialer = None
        if self._netns_made:
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
            self._netns_made = False
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        return sorted(killed)

    def __enter__(self) -> ServerInfo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Serve models from local folders on a loopback-only NDIF server.")
    parser.add_argument("--model", action="append", default=[], help="a model folder to deploy (repeatable)")
    parser.add_argument(
        "--dtype", default="float32", help="dtype the server loads models in (NDIF's default: bfloat16)"
    )
    parser.add_argument("--object-store", action="store_true", help="also run moto as the S3 object store")
    parser.add_argument(
        "--hide", action="append", default=[], help="a package the server must not import (e.g. nnshift)"
    )
    args = parser.parse_args(argv)

    server = LocalNDIF(dtype=args.dtype, object_store=args.object_store, hide_modules=tuple(args.hide))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        info = server.start()
        print(f"NDIF API up at {info.host} after {info.startup_s:.1f}s (logs: {server.logs})", flush=True)
        if args.model:
            import nnshift.models

            models = []
            for folder in args.model:
                path = allow_local_model_key(folder)
                models.append((nnshift.models.load(path, dtype=args.dtype).model.to_model_key(), path))
            print(f"deployed {[k for k, _ in models]} in {server.deploy(*models):.1f}s", flush=True)
        print(f"netns {info.netns}: interfaces {server.interfaces()}, listening {server.listening()}", flush=True)
        print(f"client: nnsight.CONFIG.API.HOST = {info.host!r}  (Ctrl-C stops the server)", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        print(f"stopped {len(server.stop())} processes", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
