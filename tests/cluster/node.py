"""A single-node Kubernetes 1.20.2, from nothing, inside the test's own network namespace.

etcd, kube-apiserver (token authentication, RBAC and the Node authorizer, audit log of Job
writes), kube-controller-manager (each controller with its own ServiceAccount credentials),
kube-scheduler, the kubelet on the tests' Docker engine through dockershim, kube-proxy
(iptables), pod networking from Debian's CNI plugins (bridge, host-local) and, as the cluster
DNS, dnsmasq answering the API's Service names: no CoreDNS image can be had here. The node's
address sits on a bridge in the namespace and nothing links the namespace to the outside, so no
node, pod or Service address is reachable from elsewhere. Everything started is stopped by its
pid on the way out, the pods' containers removed, the mounts below the state directory undone,
and the namespace deleted, whether the test passed or not.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from docker_support import DockerEngine, unmount_below
from k8s_support import NAMESPACE
from waiting import wait_until

from cluster import build
from cluster.images import PAUSE_IMAGE
from cluster.netns import NetworkNamespace, network_namespace
from demo.stack import Service, start_service, stop_services

NODE_IP = "10.200.0.1"
NODE_NAME = "pg2ch-node"
SERVICE_RANGE = "10.96.0.0/16"
POD_RANGE = "10.244.0.0/24"
CLUSTER_DOMAIN = "cluster.local"
ADMIN = "admin"
START_TIMEOUT_S = 180
DNS_REFRESH_S = 1
CNI_PLUGINS = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
# The components' environment: nothing of the test's, and the tools they run (iptables,
# nsenter, socat, mount) on PATH.
COMPONENT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
# The audit log records who creates and deletes Jobs: the run launcher, and anyone else.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "resources": [{"group": "batch", "resources": ["jobs"]}],
         "verbs": ["create", "delete"]},
        {"level": "None"},
    ],
}  # fmt: skip


@dataclass
class Cluster:
    namespace: NetworkNamespace
    state: Path
    bin_dir: Path
    docker: DockerEngine
    services: list[Service] = field(default_factory=list)

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def pause_binary(self) -> Path:
        return self.bin_dir / build.PAUSE

    def start(self, name: str, *argv: str) -> Service:
        """A process in the namespace, logging to `<state>/<name>.log`."""
        service = start_service(name, self.namespace.command(*argv), COMPONENT_ENV, self.state)
        self.services.append(service)
        return service

    def kubectl_argv(self, *args: str) -> list[str]:
        """kubectl on the admin kubeconfig, its discovery cache in the state directory."""
        return [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}",
                f"--cache-dir={self.state / 'kubectl-cache'}", *args]  # fmt: skip

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        finished = subprocess.run(
            self.namespace.command(*self.kubectl_argv(*args)),
            input=input, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if check and finished.returncode:
            raise AssertionError(
                f"`kubectl {' '.join(args)[:200]}` failed ({finished.returncode}):\n"
                f"{finished.stdout[-2000:]}\n{finished.stderr[-2000:]}"
            )
        return finished

    def forward(self, resource: str, local_port: int, remote_port: int) -> None:
        """`kubectl port-forward` to `resource`, listening on the namespace's loopback."""
        self.start(
            f"port-forward-{resource.replace('/', '-')}",
            *self.kubectl_argv("port-forward", "--namespace", NAMESPACE, resource,
                               f"{local_port}:{remote_port}"),
        )  # fmt: skip

    def get(self, *args: str) -> dict[str, Any]:
        """`kubectl get … -o json`, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def audit_events(self) -> list[dict[str, Any]]:
        path = self.state / "audit.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def log_tails(self, lines: int = 15) -> str:
        return "\n".join(service.log_tail(lines) for service in self.services)


# What the cluster runs that this machine must have: Debian's packages, by what they install.
PREREQUISITES = {
    "etcd": "etcd-server",
    "dnsmasq": "dnsmasq-base",
    "iptables": "iptables",
    "socat": "socat",  # the kubelet's port-forward through dockershim
    "conntrack": "conntrack",
    "go": "golang-go",  # the build, once
    "dpkg-source": "dpkg-dev",
    "gcc": "gcc",
    str(CNI_PLUGINS / "bridge"): "containernetworking-plugins",
}


def missing_prerequisites() -> list[str]:
    """The Debian packages the cluster needs that are not installed."""
    return [package for tool, package in PREREQUISITES.items() if shutil.which(tool) is None]


@contextmanager
def single_node_cluster(docker: DockerEngine, state: Path) -> Iterator[Cluster]:
    """The cluster, up with its node Ready; stopped and cleaned up on the way out."""
    assert docker.private, "the kubelet needs a Docker engine of the tests' own"
    bin_dir = build.binaries()
    state.mkdir(parents=True, exist_ok=True)
    with network_namespace("pg2ch-k8s") as namespace:
        cluster = Cluster(namespace, state, bin_dir, docker)
        dns_stop = threading.Event()
        dns_sync: threading.Thread | None = None
        try:
            _node_network(namespace)
            _write_credentials(state)
            _start_control_plane(cluster)
            dns_sync = threading.Thread(
                target=_serve_service_names, args=(cluster, _start_dns(cluster), dns_stop)
            )
            dns_sync.start()
            _start_node(cluster)
            wait_until(
                lambda: _node_ready(cluster), START_TIMEOUT_S, "Ready node", cluster.log_tails
            )
            yield cluster
        finally:
            dns_stop.set()
            if dns_sync:
                dns_sync.join()
            # Last started, first stopped: the API server goes while etcd still answers.
            stopped_by_force = [
                process for service in reversed(cluster.services)
                for process in stop_services([service])
            ]  # fmt: skip
            _remove_pod_containers(docker)
            unmount_below(state)
    assert stopped_by_force == [], f"had to be stopped by force: {stopped_by_force}"


def _node_network(namespace: NetworkNamespace) -> None:
    """The node's address on a bridge (this kernel has no dummy links), and a route for the
    Service range: without one a connect() fails before kube-proxy's rules rewrite it."""
    namespace.ip("link", "add", "node0", "type", "bridge")
    namespace.ip("addr", "add", f"{NODE_IP}/24", "dev", "node0")
    namespace.ip("link", "set", "node0", "up")
    namespace.ip("route", "add", SERVICE_RANGE, "dev", "node0")


def _write_credentials(state: Path) -> None:
    """The ServiceAccount signing keys, and one admin token for kubectl and the components."""
    key, public = state / "sa.key", state / "sa.pub"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    subprocess.run(
        ["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(public)],
        check=True, capture_output=True,
    )  # fmt: skip
    token = secrets.token_hex(16)
    (state / "tokens.csv").write_text(f'{token},{ADMIN},{ADMIN},"system:masters"\n')
    (state / "tokens.csv").chmod(0o600)
    # Reachable only inside the namespace; the apiserver's certificate is self-signed.
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "pg2ch", "cluster": {"server": f"https://{NODE_IP}:6443",
                                                   "insecure-skip-tls-verify": True}}],
        "users": [{"name": ADMIN, "user": {"token": token}}],
        "contexts": [{"name": "pg2ch", "context": {"cluster": "pg2ch", "user": ADMIN}}],
        "current-context": "pg2ch",
    }  # fmt: skip
    (state / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    (state / "kubeconfig").chmod(0o600)
    (state / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY))


def _start_control_plane(cluster: Cluster) -> None:
    state, bin_dir = cluster.state, cluster.bin_dir
    cluster.start(
        "etcd", "etcd", f"--data-dir={state}/etcd",
        "--listen-client-urls=http://127.0.0.1:2379",
        "--advertise-client-urls=http://127.0.0.1:2379",
        "--listen-peer-urls=http://127.0.0.1:2380",
    )  # fmt: skip
    apiserver = cluster.start(
        "kube-apiserver", str(bin_dir / "kube-apiserver"),
        "--etcd-servers=http://127.0.0.1:2379",
        f"--advertise-address={NODE_IP}", "--bind-address=0.0.0.0", "--secure-port=6443",
        f"--cert-dir={state}/certs", f"--token-auth-file={state}/tokens.csv",
        f"--service-account-key-file={state}/sa.pub",
        f"--service-account-signing-key-file={state}/sa.key",
        "--service-account-issuer=https://kubernetes.default.svc",
        "--authorization-mode=Node,RBAC",
        f"--service-cluster-ip-range={SERVICE_RANGE}",
        "--kubelet-preferred-address-types=InternalIP",
        f"--audit-policy-file={state}/audit-policy.yaml", f"--audit-log-path={state}/audit.log",
    )  # fmt: skip

    def answers() -> bool:
        assert apiserver.process.poll() is None, f"kube-apiserver exited\n{cluster.log_tails()}"
        return cluster.kubectl("get", "--raw=/readyz", check=False).returncode == 0

    wait_until(answers, START_TIMEOUT_S, "kube-apiserver ready", cluster.log_tails)
    cluster.start(
        "kube-controller-manager", str(bin_dir / "kube-controller-manager"),
        f"--kubeconfig={cluster.kubeconfig}",
        f"--service-account-private-key-file={state}/sa.key",
        f"--root-ca-file={state}/certs/apiserver.crt",
        "--use-service-account-credentials=true", "--leader-elect=false",
        "--port=0", "--secure-port=0", f"--cluster-cidr={POD_RANGE}",
    )  # fmt: skip
    cluster.start(
        "kube-scheduler", str(bin_dir / "kube-scheduler"), f"--kubeconfig={cluster.kubeconfig}",
        "--leader-elect=false", "--port=0", "--secure-port=0",
    )  # fmt: skip


def _start_dns(cluster: Cluster) -> Service:
    """dnsmasq, standing for CoreDNS: Service names from a hosts file, and NXDOMAIN for any
    other name in the cluster's domain (REFUSED would make glibc treat it as a passing
    failure and try again)."""
    (cluster.state / "hosts").write_text("")
    return cluster.start(
        "dnsmasq", "dnsmasq", "--keep-in-foreground", "--log-facility=-", "--conf-file=/dev/null",
        f"--pid-file={cluster.state}/dnsmasq.pid", f"--listen-address={NODE_IP}",
        "--bind-interfaces", "--no-resolv", "--no-hosts", f"--addn-hosts={cluster.state}/hosts",
        f"--local=/{CLUSTER_DOMAIN}/", "--domain-needed", "--user=root",
    )  # fmt: skip


def _serve_service_names(cluster: Cluster, dnsmasq: Service, stop: threading.Event) -> None:
    """Keep dnsmasq's hosts file equal to the API's Services, as CoreDNS watches them."""
    hosts = cluster.state / "hosts"
    while not stop.wait(DNS_REFRESH_S):
        listed = cluster.kubectl(
            "get", "services", "--all-namespaces", "-o", "json", check=False, timeout=30
        )
        if listed.returncode:
            continue
        lines = sorted(
            f"{s['spec']['clusterIP']} {s['metadata']['name']}.{s['metadata']['namespace']}"
            f".svc.{CLUSTER_DOMAIN}\n"
            for s in json.loads(listed.stdout)["items"]
            if s["spec"].get("clusterIP", "None") != "None"
        )
        if "".join(lines) != hosts.read_text():
            hosts.write_text("".join(lines))
            with contextlib.suppress(ProcessLookupError):
                dnsmasq.process.send_signal(signal.SIGHUP)


def _start_node(cluster: Cluster) -> None:
    state, bin_dir = cluster.state, cluster.bin_dir
    cni = state / "cni"
    (cni / "net.d").mkdir(parents=True)
    (cni / "net.d" / "10-pods.conflist").write_text(json.dumps(_cni_config(cni)))
    (state / "kubelet.yaml").write_text(yaml.safe_dump(_kubelet_config()))
    cluster.start(
        "kubelet", str(bin_dir / "kubelet"), f"--kubeconfig={cluster.kubeconfig}",
        f"--config={state}/kubelet.yaml", "--container-runtime=docker",
        f"--docker-endpoint={cluster.docker.host}",
        f"--pod-infra-container-image={PAUSE_IMAGE}",
        f"--root-dir={state}/kubelet", f"--cert-dir={state}/kubelet-pki",
        f"--experimental-dockershim-root-directory={state}/dockershim",
        f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}",
        "--network-plugin=cni", f"--cni-bin-dir={CNI_PLUGINS}",
        f"--cni-conf-dir={cni}/net.d", f"--cni-cache-dir={cni}/cache",
    )  # fmt: skip
    # The conntrack sysctls are read-only here: leave them as they are.
    cluster.start(
        "kube-proxy", str(bin_dir / "kube-proxy"), f"--kubeconfig={cluster.kubeconfig}",
        f"--hostname-override={NODE_NAME}", "--proxy-mode=iptables",
        f"--cluster-cidr={POD_RANGE}", "--conntrack-max-per-core=0",
        "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
        "--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256",
    )  # fmt: skip


def _cni_config(cni: Path) -> dict[str, Any]:
    """A bridge for the pods, addresses from host-local (its store in the state directory)."""
    ipam = {
        "type": "host-local",
        "dataDir": str(cni / "ipam"),
        "ranges": [[{"subnet": POD_RANGE, "gateway": POD_RANGE.replace("0/24", "1")}]],
        "routes": [{"dst": "0.0.0.0/0"}],
    }
    bridge = {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False,
              "hairpinMode": True, "ipam": ipam}  # fmt: skip
    portmap = {"type": "portmap", "capabilities": {"portMappings": True}}
    return {"cniVersion": "0.4.0", "name": "pods", "plugins": [bridge, portmap]}


def _kubelet_config() -> dict[str, Any]:
    """cgroupfs (these machines have cgroup v1) without QoS cgroups; the cluster DNS; and an
    API (logs, exec, port-forward) open to the apiserver without client certificates, which
    is only reachable inside the namespace."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "readOnlyPort": 0,
        "address": NODE_IP,
        "healthzBindAddress": "127.0.0.1",
        "clusterDNS": [NODE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "evictionHard": {},
        "serializeImagePulls": False,
    }


def _node_ready(cluster: Cluster) -> bool:
    nodes = cluster.get("nodes")["items"]
    return any(
        condition["type"] == "Ready" and condition["status"] == "True"
        for node in nodes
        for condition in node["status"].get("conditions", [])
    )


def _remove_pod_containers(docker: DockerEngine) -> None:
    """The pods' containers, and the log directories the kubelet kept for them in /var/log."""
    listed = docker.run(
        "ps",
        "--all",
        "--quiet",
        "--no-trunc",
        "--filter",
        "label=io.kubernetes.docker.type",
        check=False,
    )
    containers = listed.stdout.split()
    if not containers:
        return
    uids = docker.run(
        "inspect", "--format", '{{index .Config.Labels "io.kubernetes.pod.uid"}}', *containers
    ).stdout.split()
    docker.run("rm", "--force", "--volumes", *containers, timeout=300)
    for uid in set(uids):
        for directory in Path("/var/log/pods").glob(f"*_{uid}"):
            shutil.rmtree(directory, ignore_errors=True)
    for link in Path("/var/log/containers").glob("*.log"):
        if any(link.name.endswith(f"-{container}.log") for container in containers):
            link.unlink()
