"""A real two-node Ray cluster on this machine, for tests: a head and one worker node, each its
own `ray start --block` process (own process group, own --temp-dir, own ports on 127.0.0.1), so
that it cannot collide with a local Ray that the test session or another checkout may run.

Ray replaces a loopback --node-ip-address with the machine's own address, so the GCS listens
there; the dashboard (job API) is bound to 127.0.0.1. Each node carries a custom resource named
after it (`node_head`, `node_w1`) so a test can tell which node is which. Teardown kills only the processes this module started: each node's process
group, then anything whose command line still names the node's temp dir (never `ray stop`,
which stops every Ray process on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
RAY = ROOT / ".venv" / "bin" / "ray"
HOST = "127.0.0.1"
# Token authentication stays off: a token in ~/.ray would otherwise switch it on for this cluster
# only when one happens to exist (Ray 2.60 enables it when RAY_AUTH_MODE is unset and a token exists).
CLUSTER_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
               "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
               # test-only helpers (tests/faults.py: a slow decoder) importable by the nodes' workers
               "PYTHONPATH": str(ROOT / "tests")}


class ClusterError(RuntimeError):
    pass


def _term_with_parent() -> None:
    """In the `ray start` child: SIGTERM when the test process dies, even by kill -9 (Linux), so
    that a killed test session does not leave a cluster behind (`ray start --block` then stops
    its node)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


_BLOCKS: set[int] = set()  # ports handed to clusters started by this process (fixed and worker ports)


def free_port_range(width: int, avoid: set[int], lo: int = 30000, hi: int = 32700) -> tuple[int, int]:
    """A block of `width` consecutive ports that are all free now and hold none of `avoid` (a
    cluster's fixed ports; a node's worker ports: `ray start` refuses a node whose fixed ports fall
    inside its worker range).

    Ray binds them seconds later (much later on a loaded machine), so they must be ports that
    nothing else can be handed meanwhile: below Linux's ephemeral range (32768+), where every
    outgoing connection and every bind to port 0 gets its port (a free port picked there was
    taken by such a connection before the head bound it, and the cluster failed); above
    20000-29999, where scripts/slurm_extract.sbatch puts a job's Ray (tests/test_slurm.py), and
    Ray's default worker ports (10002-19999) of the CLIs that start a local Ray of their own.
    """
    import random

    lo, hi = _this_workers_share(lo, hi)
    rng = random.Random(os.getpid() ^ int(time.time()))
    for _ in range(200):
        start = rng.randrange(lo, hi - width)
        ok = not avoid.intersection(range(start, start + width))
        for port in range(start, start + width) if ok else ():
            with socket.socket() as s:
                try:
                    s.bind(("", port))  # every address: the GCS listens on the machine's own, not 127.0.0.1
                except OSError:
                    ok = False
                    break
        if ok:
            return start, start + width - 1
    raise ClusterError(f"no block of {width} free ports between {lo} and {hi}")


def _this_workers_share(lo: int, hi: int) -> tuple[int, int]:
    """The part of [lo, hi) that this pytest-xdist worker owns (all of it without xdist).

    Each worker remembers only its own blocks (_BLOCKS is per process) and Ray binds a
    worker's port only when that worker starts, long after the block was checked free: two
    workers' clusters must never be able to pick overlapping blocks.
    """
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
    width = (hi - lo) // max(count, 1)
    return lo + index * width, lo + (index + 1) * width


@dataclass
class Node:
    name: str
    temp_dir: Path
    num_cpus: int
    ports: dict[str, int]
    proc: subprocess.Popen | None = None
    log: Path | None = None

    @property
    def resource(self) -> str:
        return f"node_{self.name}"


@dataclass
class LocalCluster:
    """`LocalCluster(num_cpus={"head": 4, "w1": 4}).start()`; `.stop()` always (also after a failure)."""

    num_cpus: dict[str, int]
    object_store_bytes: int = 400 * 1024**2
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. the GCS's health-check settings
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="crr-", dir="/tmp")))
    nodes: dict[str, Node] = field(default_factory=dict)

    def __post_init__(self):
        # one block for every fixed port, then a block of worker ports per node: none repeats
        names = list(self.num_cpus)
        per_node = ["node_manager", "object_manager", "agent_listen", "agent_grpc", "runtime_env_agent", "metrics"]
        first, last = self._block(3 + len(per_node) * len(names))
        ports = list(range(first, last + 1))
        self.gcs_port, self.dashboard_port, self.client_port = ports[:3]
        for i, name in enumerate(names):
            mine = dict(zip(per_node, ports[3 + i * len(per_node):3 + (i + 1) * len(per_node)]))
            mine["min_worker"], mine["max_worker"] = self._block(100)
            self.nodes[name] = Node(name, self.base / name[:2], self.num_cpus[name], mine)

    @staticmethod
    def _block(width: int) -> tuple[int, int]:
        """A block of free ports that no cluster of this process holds yet (the session's Ray's either)."""
        first, last = free_port_range(width, _BLOCKS)
        _BLOCKS.update(range(first, last + 1))
        return first, last

    # ------------------------------------------------------------------ addresses
    @property
    def gcs_address(self) -> str:
        return f"{HOST}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{HOST}:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        """The environment to run `ray start` / `ray job submit` / a client with."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
        env.update(CLUSTER_ENV)
        env.update(self.extra_env)
        return env

    # ------------------------------------------------------------------ start / stop
    def _start_node(self, node: Node, head: bool) -> None:
        node.temp_dir.mkdir(parents=True, exist_ok=True)
        p = node.ports
        cmd = [str(RAY), "start", "--block", "--disable-usage-stats", f"--node-ip-address={HOST}",
               f"--temp-dir={node.temp_dir}", f"--num-cpus={node.num_cpus}", "--num-gpus=0",
               f"--resources={json.dumps({node.resource: 100})}",
               f"--object-store-memory={self.object_store_bytes}",
               f"--node-manager-port={p['node_manager']}", f"--object-manager-port={p['object_manager']}",
               f"--dashboard-agent-listen-port={p['agent_listen']}", f"--dashboard-agent-grpc-port={p['agent_grpc']}",
               f"--runtime-env-agent-port={p['runtime_env_agent']}", f"--metrics-export-port={p['metrics']}",
               f"--min-worker-port={p['min_worker']}", f"--max-worker-port={p['max_worker']}"]
        if head:
            cmd += ["--head", f"--port={self.gcs_port}", "--include-dashboard=true", f"--dashboard-host={HOST}",
                    f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={self.client_port}"]
        else:
            cmd += [f"--address={self.gcs_address}"]
        node.log = self.base / f"{node.name}.log"
        with open(node.log, "w") as log:
            node.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=_term_with_parent)

    def start(self, timeout: float = 180.0) -> "LocalCluster":
        names = list(self.nodes)
        try:
            self._start_node(self.nodes[names[0]], head=True)
            self._wait(lambda: self._alive_nodes() >= 1 and self._jobs_api_up(), timeout, "the head node")
            for name in names[1:]:
                self._start_node(self.nodes[name], head=False)
            self._wait(lambda: self._alive_nodes() >= len(names), timeout, f"{len(names)} nodes")
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for node in self.nodes.values():
                if node.proc is not None and node.proc.poll() is not None:
                    raise ClusterError(f"`ray start` of node {node.name} exited with {node.proc.returncode}:\n"
                                       f"{self.tail(node)}")
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(1.0)
        raise ClusterError(f"{what} not up after {timeout:.0f} s (dashboard {self.dashboard_url}):\n"
                           + "\n".join(self.tail(n) for n in self.nodes.values() if n.log))

    def tail(self, node: Node, n: int = 3000) -> str:
        try:
            return f"--- {node.log}\n" + node.log.read_text()[-n:]
        except OSError:
            return ""

    def stop(self, grace: float = 3.0) -> None:
        """Stop every node: SIGTERM to each `ray start --block` (it shuts its node down), then
        SIGKILL to its process group and to any process whose command line names its temp dir."""
        for node in reversed(list(self.nodes.values())):
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        deadline = time.time() + grace
        for node in self.nodes.values():
            if node.proc is not None:
                try:
                    node.proc.wait(max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    pass
                try:
                    os.killpg(node.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    node.proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        for proc in self.processes():
            try:
                proc.kill()
            except psutil.Error:
                pass
        if not os.environ.get("CREMA_KEEP_CLUSTER_LOGS"):
            shutil.rmtree(self.base, ignore_errors=True)

    def processes(self, node: Node | None = None) -> list[psutil.Process]:
        """This cluster's processes still running (those of `node` only, if given), found by the
        temp dir on their command line (raylet, GCS, agents, workers all carry the session dir)."""
        dirs = [str(n.temp_dir) for n in ([node] if node else self.nodes.values())]
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                line = " ".join(proc.info["cmdline"] or [])
            except psutil.Error:
                continue
            if any(d + os.sep in line or line.endswith(d) for d in dirs) and proc.pid != os.getpid():
                found.append(proc)
        return found

    def raylet(self, name: str) -> psutil.Process:
        node = self.nodes[name]
        for proc in self.processes(node):
            try:
                if proc.name() == "raylet" or "/raylet" in (proc.cmdline() or [""])[0]:
                    return proc
            except psutil.Error:
                continue
        raise ClusterError(f"no raylet process found for node {name} ({node.temp_dir})")

    # ------------------------------------------------------------------ state
    def api(self, path: str, timeout: float = 10.0):
        with urllib.request.urlopen(self.dashboard_url + path, timeout=timeout) as resp:
            return json.loads(resp.read().decode())

    def _jobs_api_up(self) -> bool:
        try:
            self.api("/api/jobs/", timeout=5)
            return True
        except Exception:
            return False

    def node_table(self) -> list[dict]:
        """Alive nodes as the state API lists them (node_id, resources_total, ...)."""
        data = self.api("/api/v0/nodes?detail=true&limit=100")
        rows = data.get("data", {}).get("result", {}).get("result", [])
        return [r for r in rows if r.get("state") == "ALIVE"]

    def _alive_nodes(self) -> int:
        try:
            return len(self.node_table())
        except Exception:
            return 0

    def node_ids(self) -> dict[str, str]:
        """node name (head, w1) -> Ray node id, from each node's custom resource."""
        out = {}
        for row in self.node_table():
            for name, node in self.nodes.items():
                if node.resource in (row.get("resources_total") or {}):
                    out[name] = row["node_id"]
        return out
