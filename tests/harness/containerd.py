"""Run a private instance of Debian's real ``containerd`` (with ``runc``) for tests and benchmarks.

The images ocimodel makes exist to be pulled by a node and started as KServe's modelcar sidecar, so the tests do
exactly that: ``ctr -n k8s.io images pull`` (fetch and unpack, like the kubelet), then a container with no
entrypoint running the sidecar's own command, then every model file read through ``/proc/<pid>/root/models`` as the
serving container reads it through the pod's shared process namespace.

Each instance has its own config, root, state, gRPC socket and runc root under one directory, uses the overlayfs
snapshotter, and never touches a system containerd (the CRI plugin is disabled: ``ctr`` does not need it). It is
stopped by PID, and every mount left under its directory is unmounted before the directory is removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# The registry harness's helpers: stop by PID (SIGTERM, then SIGKILL after a bound) and a log's tail.
from tests.harness.registry import _stop, _tail

CONTAINERD_BINARY = "containerd"
CTR_BINARY = "ctr"
#: The namespace the kubelet's CRI plugin uses; ``ctr`` pulls into it the way the bottlerocket cache scripts do.
NAMESPACE = "k8s.io"
SNAPSHOTTER = "overlayfs"
#: Layers containerd's CRI plugin fetches at once by default (``max_concurrent_downloads``); ``ctr`` alone: no bound.
CRI_MAX_CONCURRENT_DOWNLOADS = 3
#: KServe's modelcar sidecar command (pkg/utils/storage.go), run as args with no entrypoint.
MODELCAR_COMMAND: tuple[str, ...] = ("sh", "-c", "ln -sf /proc/$$/root/models /mnt/models && sleep infinity")

READINESS_DEADLINE_S = 20.0
READINESS_POLL_INTERVAL_S = 0.05
#: Lines of containerd's log quoted in an error.
LOG_LINES = 40
#: How long a started modelcar may take to run its ``ln``.
LINK_DEADLINE_S = 10.0
#: Bound on a single ``ctr`` call; a pull passes its own, larger one.
CTR_TIMEOUT_S = 60.0
PULL_TIMEOUT_S = 600.0
#: A unix socket path must fit in ``sockaddr_un.sun_path`` (108 bytes with the NUL).
MAX_SOCKET_PATH = 100
HASH_CHUNK = 1 << 20
#: Plugins this instance has no use for: CRI (``ctr`` talks to the core services) and snapshotters that only
#: log errors on an ext4 host.
DISABLED_PLUGINS: tuple[str, ...] = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
)


class ContainerdError(RuntimeError):
    """containerd failed to start, died, or a ``ctr`` command failed; the message carries its output."""


@dataclass(frozen=True)
class Timed:
    """What a pull or start did, and how long it took (informational: timing goals live in bench/)."""

    ref: str
    seconds: float


@dataclass(frozen=True)
class Modelcar:
    """A running modelcar container: its task's host PID and the host directory mounted at ``/mnt``."""

    container_id: str
    image: str
    pid: int
    mnt: Path
    started_s: float

    @property
    def models(self) -> Path:
        """``/models`` of the container, as the serving container reaches it through the shared PID namespace."""
        return Path(f"/proc/{self.pid}/root/models")

    @property
    def inner_pid(self) -> int:
        """The task's PID inside its own PID namespace: the ``$$`` the sidecar wrote into its symlink."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^NSpid:\s*(.*)$", status, re.MULTILINE)
        if match is None:
            raise ContainerdError(f"no NSpid line in /proc/{self.pid}/status")
        return int(match.group(1).split()[-1])

    def link_target(self) -> str:
        """Where the sidecar's ``/mnt/models`` symlink points (read on the host side of the ``/mnt`` bind mount)."""
        return os.readlink(self.mnt / "models")

    def model_files(self) -> dict[str, str]:
        """``relative path → sha256:…`` of every regular file under ``/models``, read through /proc."""
        return sha256_tree(self.models)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def sha256_tree(root: Path) -> dict[str, str]:
    """Hash every regular file below ``root`` (symlinks are not followed), keyed by its POSIX relative path."""
    result: dict[str, str] = {}
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            if path.is_symlink() or not path.is_file():
                continue
            result[path.relative_to(root).as_posix()] = sha256_file(path)
    return result


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def containerd_config(root: Path, state: Path, address: Path) -> str:
    """A version 2 config.toml for containerd 1.6+ whose every path lives under this instance's directory."""
    disabled = ", ".join(_toml_string(plugin) for plugin in DISABLED_PLUGINS)
    return "\n".join(
        [
            "version = 2",
            f"root = {_toml_string(str(root))}",
            f"state = {_toml_string(str(state))}",
            f"disabled_plugins = [{disabled}]",
            "",
            "[grpc]",
            f"  address = {_toml_string(str(address))}",
            "",
            "[ttrpc]",
            f"  address = {_toml_string(str(address) + '.ttrpc')}",
            "",
            # The opt plugin would otherwise create /opt/containerd on the host.
            '[plugins."io.containerd.internal.v1.opt"]',
            f"  path = {_toml_string(str(root / 'opt'))}",
            "",
        ]
    )


@dataclass
class Containerd:
    """A running private containerd and the ``ctr`` calls the tests need against it."""

    workdir: Path
    address: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    namespace: str = NAMESPACE

    @property
    def runc_root(self) -> Path:
        return self.workdir / "runc"

    def ctr(self, *args: str, timeout: float = CTR_TIMEOUT_S, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``ctr -a SOCK -n NAMESPACE ARGS``; on failure (with ``check``) raise with its output and our log tail."""
        command = [CTR_BINARY, "--address", str(self.address), "--namespace", self.namespace, *args]
        try:
            result = subprocess.run(
                command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise ContainerdError(f"{' '.join(command)} did not finish within {timeout}s") from error
        if check and result.returncode != 0:
            raise ContainerdError(self.explain(result))
        return result

    def explain(self, result: subprocess.CompletedProcess[str]) -> str:
        return (
            f"{' '.join(map(str, result.args))} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\ncontainerd log tail:\n{self.log_tail()}"
        )

    def pull(
        self,
        ref: str,
        plain_http: bool = True,
        platform: str | None = None,
        max_concurrent_downloads: int = CRI_MAX_CONCURRENT_DOWNLOADS,
        timeout: float = PULL_TIMEOUT_S,
    ) -> Timed:
        """Fetch and unpack ``ref`` (pin it by digest) as the kubelet would: the node's platform unless one is given."""
        args = ["images", "pull", "--snapshotter", SNAPSHOTTER]
        if plain_http:
            args.append("--plain-http")
        if platform is not None:
            args += ["--platform", platform]
        args += ["--max-concurrent-downloads", str(max_concurrent_downloads), ref]
        started = time.monotonic()
        self.ctr(*args, timeout=timeout)
        return Timed(ref, time.monotonic() - started)

    def start(self, image: str, name: str, command: Sequence[str] = MODELCAR_COMMAND) -> Modelcar:
        """Start ``image`` detached with ``command`` as its whole process (no entrypoint), ``/mnt`` a fresh host dir.

        ``/mnt`` stands for the pod's shared emptyDir that KServe mounts at ``/mnt`` in the sidecar. A start that
        fails (no ``sh`` in the image, say) raises :class:`ContainerdError` and leaves no container behind.
        """
        container_id = f"{name}-{uuid.uuid4().hex[:8]}"
        mnt = self.workdir / "mnt" / container_id
        mnt.mkdir(parents=True)
        pid_file = self.workdir / "pids" / container_id
        pid_file.parent.mkdir(exist_ok=True)
        started = time.monotonic()
        result = self.ctr(
            "run",
            "--detach",
            "--null-io",
            "--snapshotter",
            SNAPSHOTTER,
            "--runc-root",
            str(self.runc_root),
            "--pid-file",
            str(pid_file),
            "--mount",
            f"type=bind,src={mnt},dst=/mnt,options=rbind:rw",
            image,
            container_id,
            *command,
            check=False,
        )
        elapsed = time.monotonic() - started
        if result.returncode != 0:
            self._remove_container(container_id)
            raise ContainerdError(self.explain(result))
        return Modelcar(container_id, image, int(pid_file.read_text().strip()), mnt, elapsed)

    def run_modelcar(self, image: str, name: str) -> Modelcar:
        """Start ``image`` exactly as KServe's modelcar sidecar runs: ``sh -c 'ln -sf … && sleep infinity'``.

        Returns once the sidecar's ``/mnt/models`` link exists (``ctr run -d`` returns when the process has started,
        not when its shell has run ``ln``); ``started_s`` includes that wait. A sidecar that exits first raises.
        """
        car = self.start(image, name, MODELCAR_COMMAND)
        deadline = time.monotonic() + LINK_DEADLINE_S
        started = time.monotonic()
        while not (car.mnt / "models").is_symlink():
            if not Path(f"/proc/{car.pid}").exists() or time.monotonic() > deadline:
                tasks = self.ctr("tasks", "list").stdout
                self._remove_container(car.container_id)
                raise ContainerdError(
                    f"the modelcar {car.container_id} made no /mnt/models link within {LINK_DEADLINE_S}s, or exited:"
                    f"\n{tasks}"
                )
            time.sleep(READINESS_POLL_INTERVAL_S)
        return dataclasses.replace(car, started_s=car.started_s + time.monotonic() - started)

    @contextlib.contextmanager
    def modelcar(self, image: str, name: str) -> Iterator[Modelcar]:
        """:meth:`run_modelcar`, stopped and removed on leaving the block."""
        running = self.run_modelcar(image, name)
        try:
            yield running
        finally:
            self.remove(running)

    def remove(self, modelcar: Modelcar) -> None:
        """Kill the task (SIGKILL, as the kubelet does after the grace period), delete it, then its container."""
        self._remove_container(modelcar.container_id)

    def _remove_container(self, container_id: str) -> None:
        self.ctr("tasks", "kill", "--signal", "SIGKILL", container_id, check=False)
        # ``delete --force`` waits for the killed task to exit; a task that never started makes it fail, harmlessly.
        self.ctr("tasks", "delete", "--force", container_id, check=False)
        self.ctr("containers", "delete", container_id, check=False)
        if container_id in self.containers():
            raise ContainerdError(f"container {container_id} survived its removal; log tail:\n{self.log_tail()}")

    def containers(self) -> list[str]:
        return self.ctr("containers", "list", "--quiet").stdout.split()

    def tasks(self) -> list[str]:
        return [line.split()[0] for line in self.ctr("tasks", "list").stdout.splitlines()[1:] if line.strip()]

    def images(self) -> list[str]:
        return self.ctr("images", "list", "--quiet").stdout.split()

    def content(self) -> list[str]:
        """Digests of every blob in the content store."""
        return [line.split()[0] for line in self.ctr("content", "list").stdout.splitlines()[1:] if line.strip()]

    def snapshots(self) -> list[str]:
        return [
            line.split()[0]
            for line in self.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "list").stdout.splitlines()[1:]
            if line.strip()
        ]

    def remove_image(self, ref: str) -> None:
        """Delete ``ref`` and, synchronously, whatever only it held (content, snapshots)."""
        self.ctr("images", "delete", "--sync", ref)

    def make_cold(self) -> None:
        """Remove every container, image, blob and snapshot of the namespace, as on a node that never pulled."""
        for container_id in self.containers():
            self._remove_container(container_id)
        images = self.images()
        if images:
            self.ctr("images", "delete", "--sync", *images)
        left = self.content() + self.snapshots()
        if left:
            raise ContainerdError(f"still in containerd after removing every image: {left}")

    def log_tail(self) -> str:
        return _tail(self.log_path, LOG_LINES)

    def assert_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise ContainerdError(f"containerd exited with {code}; log tail:\n{self.log_tail()}")


def _wait_until_ready(process: subprocess.Popen[bytes], address: Path, log_path: Path) -> None:
    """Poll ``ctr version`` until the daemon answers on its socket, or the deadline passes."""
    deadline = time.monotonic() + READINESS_DEADLINE_S
    last = "no attempt made"
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise ContainerdError(
                f"containerd exited with {code} before becoming ready; log tail:\n{_tail(log_path, LOG_LINES)}"
            )
        if address.exists():
            try:
                probe = subprocess.run(
                    [CTR_BINARY, "--address", str(address), "version"],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                last = "ctr version did not answer within 5s"
            else:
                if probe.returncode == 0:
                    return
                last = probe.stderr.strip()
        time.sleep(READINESS_POLL_INTERVAL_S)
    raise ContainerdError(
        f"containerd at {address} not ready within {READINESS_DEADLINE_S}s ({last}); "
        f"log tail:\n{_tail(log_path, LOG_LINES)}"
    )


def _mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory``, deepest first (mountinfo escapes spaces as ``\\040``)."""
    prefix = str(directory)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def _unmount_all(directory: Path) -> None:
    for point in _mounts_under(directory):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    left = _mounts_under(directory)
    if left:
        raise ContainerdError(f"could not unmount {left}")


@contextlib.contextmanager
def run_containerd(workdir: Path) -> Iterator[Containerd]:
    """Start a private containerd under ``workdir`` (which it then owns and removes) and stop it on exit.

    On exit every task is killed and every container deleted (their shims outlive the daemon otherwise), the daemon
    gets SIGTERM then SIGKILL after a bound, mounts left below ``workdir`` are unmounted, and ``workdir`` is removed.
    If the daemon died on its own while in use, leaving the block raises with its log tail.
    """
    for binary in (CONTAINERD_BINARY, CTR_BINARY, "runc", "containerd-shim-runc-v2"):
        if shutil.which(binary) is None:
            raise ContainerdError(f"{binary} not found (apt-get install containerd runc)")
    if os.geteuid() != 0:
        raise ContainerdError("a private containerd needs root (mounts, namespaces, cgroups): run the tests as root")

    workdir = Path(workdir).resolve()
    address = workdir / "containerd.sock"
    if len(str(address)) > MAX_SOCKET_PATH:
        raise ContainerdError(f"socket path {address} is too long for a unix socket: use a shorter work directory")
    workdir.mkdir(parents=True, exist_ok=True)
    root, state = workdir / "root", workdir / "state"
    config_path = workdir / "config.toml"
    config_path.write_text(containerd_config(root, state, address))
    log_path = workdir / "containerd.log"

    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [CONTAINERD_BINARY, "--config", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    instance = Containerd(workdir=workdir, address=address, log_path=log_path, process=process)
    ready = False
    try:
        _wait_until_ready(process, address, log_path)
        ready = True
        yield instance
    finally:
        died_early = process.poll()
        death = f"containerd died during the tests (exit {died_early}); log tail:\n{_tail(log_path, LOG_LINES)}"
        try:
            if ready and died_early is None:
                for container_id in instance.containers():
                    instance._remove_container(container_id)
        finally:
            _stop(process)
            _unmount_all(workdir)
            shutil.rmtree(workdir, ignore_errors=True)
        if ready and died_early is not None:
            raise ContainerdError(death)
