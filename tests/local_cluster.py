"""The rendered cluster on this machine: each Service gets a loopback address of its own.

In the cluster a pod reaches `dagster-storage-postgres:5432` through Service DNS. Here each
Service name maps to its own address in 127.0.0.0/8 (random per test session, so concurrent
sessions never meet), and the processes standing for its pods listen there on the Service's
own port. The only rewrite of the rendered configuration is host names: in dagster.yaml,
workspace.yaml and the URLs of the Secrets. ClickHouse is the one exception (see
`localize`): no ClickHouse server runs here.
"""

from __future__ import annotations

import copy
import random
from typing import Any
from urllib.parse import urlsplit

import yaml
from chart_support import Objects
from k8s_support import NAMESPACE, helm_release

RELEASE = helm_release()["name"]
INSTANCE_CONFIG_MAP = f"{RELEASE}-instance"
WORKSPACE_CONFIG_MAP = f"{RELEASE}-workspace-yaml"
STORAGES = ("run_storage", "event_log_storage", "schedule_storage")


def loopback_addresses(objects: Objects) -> dict[str, str]:
    """Service name -> an address of its own on the loopback network."""
    base = f"127.{random.randint(1, 254)}.{random.randint(0, 254)}"
    return {name: f"{base}.{i}" for i, name in enumerate(sorted(objects.of_kind("Service")), 1)}


def loopback_host(host: str, addresses: dict[str, str]) -> str:
    service = host.removesuffix(".svc.cluster.local").removesuffix(f".{NAMESPACE}")
    assert service in addresses, f"{host} is not a Service of the cluster"
    return addresses[service]


def _with_host(url: str, address: str) -> str:
    parts = urlsplit(url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@{address}" if userinfo else address
    if parts.port:
        netloc += f":{parts.port}"
    return parts._replace(netloc=netloc).geturl()


def localize(objects: Objects, addresses: dict[str, str], clickhouse_url: str) -> Objects:
    """The cluster's objects with Service host names replaced by their loopback addresses.

    `CLICKHOUSE_URL` is the one value replaced whole, by `clickhouse_url` (a chdb:// URL):
    no ClickHouse server can run here, and chDB is ClickHouse in-process.
    """
    items = copy.deepcopy(list(objects.items))
    for item in items:
        name = item["metadata"]["name"]
        if item["kind"] == "ConfigMap" and name == INSTANCE_CONFIG_MAP:
            instance = yaml.safe_load(item["data"]["dagster.yaml"])
            for storage in STORAGES:
                db = instance[storage]["config"]["postgres_db"]
                db["hostname"] = loopback_host(db["hostname"], addresses)
            item["data"]["dagster.yaml"] = yaml.safe_dump(instance, sort_keys=False)
        elif item["kind"] == "ConfigMap" and name == WORKSPACE_CONFIG_MAP:
            workspace = yaml.safe_load(item["data"]["workspace.yaml"])
            for entry in workspace["load_from"]:
                grpc = entry["grpc_server"]
                grpc["host"] = loopback_host(grpc["host"], addresses)
            item["data"]["workspace.yaml"] = yaml.safe_dump(workspace, sort_keys=False)
        elif item["kind"] == "Secret":
            item["stringData"] = {
                key: localized_value(key, value, addresses, clickhouse_url)
                for key, value in item.get("stringData", {}).items()
            }
    return Objects(tuple(items))


def localized_value(key: str, value: str, addresses: dict[str, str], clickhouse_url: str) -> Any:
    if key == "CLICKHOUSE_URL":
        return clickhouse_url
    url = urlsplit(value)
    if url.scheme and url.hostname:
        return _with_host(value, loopback_host(url.hostname, addresses))
    return value
