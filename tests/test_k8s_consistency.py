"""The deployment files agree with each other: names, keys, hosts, ports, paths and versions.

Each check here stands for a pod that would otherwise start and then fail: a Secret key that
does not exist, a URL to a Service that is not there, a password the server does not know.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml
from k8s_support import (
    IMAGE,
    NAMESPACE,
    container_env,
    helm_release,
    k8s_object,
    k8s_objects,
    k8s_run_launcher_values,
    load_yaml,
    require_chart,
    secret_data,
    skaffold,
    user_deployment,
    values,
)

# Where each demo connection URL points, and the server-side Secret key with its password.
SOURCE = ("source-postgres", "PG_URL", "postgres-source", "SYNC_READER_PASSWORD")
DESTINATION = ("clickhouse-sync", "CLICKHOUSE_URL", "clickhouse", "CLICKHOUSE_SYNC_PASSWORD")


def test_skaffold_builds_the_image_the_chart_runs():
    (artifact,) = skaffold()["build"]["artifacts"]
    assert artifact["image"] == IMAGE == user_deployment()["image"]["repository"]
    assert skaffold()["build"]["local"]["push"] is False
    token = IMAGE.replace("-", "_")
    image_path = "dagster-user-deployments.deployments[0].image"
    assert helm_release()["setValueTemplates"] == {
        f"{image_path}.repository": f"{{{{.IMAGE_REPO_{token}}}}}",
        f"{image_path}.tag": f"{{{{.IMAGE_TAG_{token}}}}}",
    }


def test_skaffold_installs_the_chart_matching_the_installed_dagster():
    release = helm_release()
    assert release["remoteChart"] == "dagster"
    assert release["repo"] == "https://dagster-io.github.io/helm"
    assert str(release["version"]) == importlib.metadata.version("dagster")
    assert release["namespace"] == NAMESPACE
    assert release["valuesFiles"] == ["helm/values.yaml"]


def test_skaffold_forwards_the_chart_webserver_service():
    chart_webserver = load_yaml(require_chart() / "values.yaml")["dagsterWebserver"]
    webserver = {**chart_webserver, **values().get("dagsterWebserver", {})}
    (forward,) = skaffold()["portForward"]
    assert forward["resourceType"] == "service"
    assert forward["resourceName"] == f"{helm_release()['name']}-{webserver['nameOverride']}"
    assert forward["port"] == webserver["service"]["port"] == chart_webserver["service"]["port"]
    assert forward["namespace"] == NAMESPACE


def test_code_server_names_do_not_collide_with_k8s_services():
    # The chart creates one Service per code server, named after the deployment.
    assert user_deployment()["name"] not in k8s_objects("Service")


@pytest.mark.parametrize(
    "env_secrets",
    [user_deployment()["envSecrets"], k8s_run_launcher_values()["envSecrets"]],
    ids=["code-server", "run-pods"],
)
def test_pods_get_both_connection_urls(env_secrets):
    keys = {key for ref in env_secrets for key in secret_data(ref["name"])}
    assert {"PG_URL", "CLICKHOUSE_URL"} <= keys


@pytest.mark.parametrize(
    ("volumes", "mounts", "env"),
    [
        (
            user_deployment()["volumes"],
            user_deployment()["volumeMounts"],
            {e["name"]: e["value"] for e in user_deployment()["env"]},
        ),
        (
            k8s_run_launcher_values()["volumes"],
            k8s_run_launcher_values()["volumeMounts"],
            dict(pair.split("=", 1) for pair in k8s_run_launcher_values()["envVars"]),
        ),
    ],
    ids=["code-server", "run-pods"],
)
def test_sync_config_path_is_a_mounted_config_map_key(volumes, mounts, env):
    path = PurePosixPath(env["SYNC_CONFIG"])
    config_maps = {v["name"]: v["configMap"]["name"] for v in volumes if "configMap" in v}
    (mount,) = [m for m in mounts if m["name"] in config_maps]
    if "subPath" in mount:
        assert path == PurePosixPath(mount["mountPath"])
        key = mount["subPath"]
    else:
        key = str(path.relative_to(mount["mountPath"]))
    sync_yaml = k8s_object("ConfigMap", config_maps[mount["name"]])["data"][key]
    assert yaml.safe_load(sync_yaml)["tables"]


def test_storage_postgres_matches_the_chart_connection_values():
    postgresql = values()["postgresql"]
    service = k8s_object("Service", postgresql["postgresqlHost"])
    assert [p["port"] for p in service["spec"]["ports"]] == [postgresql["service"]["port"]]
    statefulset = k8s_object("StatefulSet", postgresql["postgresqlHost"])
    # The chart's check-db-ready init containers use the same image: one pull on the node.
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    image = postgresql["image"]
    assert container["image"] == f"{image['repository'].removeprefix('library/')}:{image['tag']}"
    env = container_env(statefulset)
    assert env["POSTGRES_USER"]["value"] == postgresql["postgresqlUsername"]
    assert env["POSTGRES_DB"]["value"] == postgresql["postgresqlDatabase"]
    # The chart and dagster-k8s read the password from this Secret and key, by convention.
    password_ref = env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password_ref == {
        "name": values()["global"]["postgresqlSecretName"],
        "key": "postgresql-password",
    }
    assert secret_data(password_ref["name"])["postgresql-password"]


@pytest.mark.parametrize(
    ("secret", "key", "server", "password_key"), [SOURCE, DESTINATION], ids=["source", "dest"]
)
def test_connection_url_reaches_its_server_with_its_credentials(secret, key, server, password_key):
    url = urlsplit(secret_data(secret)[key])
    assert url.hostname == server
    service = k8s_object("Service", url.hostname)
    assert url.port in [p["port"] for p in service["spec"]["ports"]]
    server_env = container_env(k8s_object("StatefulSet", server))
    server_secret = server_env[password_key]["valueFrom"]["secretKeyRef"]
    assert url.password == secret_data(server_secret["name"])[server_secret["key"]]
    database = url.path.lstrip("/")
    assert database == server_env.get("POSTGRES_DB", server_env.get("CLICKHOUSE_DB"))["value"]


def test_source_url_user_is_the_read_only_role_the_init_script_creates():
    user = urlsplit(secret_data("source-postgres")["PG_URL"]).username
    init = k8s_object("ConfigMap", "postgres-source-init")["data"]
    (script,) = [text for name, text in init.items() if name.endswith(".sh")]
    assert re.search(rf"CREATE ROLE {user} LOGIN PASSWORD :'reader_password'", script)
    assert f"GRANT SELECT ON ALL TABLES IN SCHEMA public, ops TO {user};" in script
    assert "INSERT" not in script and "SUPERUSER" not in script


def test_destination_url_user_may_only_write_its_database():
    url = urlsplit(secret_data("clickhouse-sync")["CLICKHOUSE_URL"])
    users_xml = k8s_object("ConfigMap", "clickhouse-users")["data"]["sync.xml"]
    assert f"<{url.username}>" in users_xml
    assert f'<password from_env="{DESTINATION[3]}"/>' in users_xml
    grants = re.findall(r"<query>(.*?)</query>", users_xml)
    privileges = (  # why: test_privileges.py
        "CREATE TABLE, DROP TABLE, ALTER ADD COLUMN, ALTER ADD INDEX, ALTER MATERIALIZE INDEX, "
        "INSERT, SELECT"
    )
    assert grants == [f"GRANT {privileges} ON {url.path.lstrip('/')}.*"]
