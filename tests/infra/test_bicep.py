"""Structural checks of ``infra/*.bicep`` against the app (no Bicep CLI here).

They hold the deployment to what the code needs: every setting the app reads is an env
var of the Container App with the app's default; secrets reach the app only as Key
Vault references; probes, the webhook path and the Event Grid filter match the app's
routes; the termination grace period covers the drain; Redis holds control state (no
eviction) behind Entra ID; the scale rule counts live calls. What they cannot check
(does Azure accept these resources?) is listed in docs/deploy.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import SecretStr
from pydantic_core import PydanticUndefined
from starlette.routing import Match

from tests.infra.bicep_text import (
    INFRA,
    ROOT,
    BicepFile,
    all_bicep,
    identifiers,
    literal,
    object_body,
    objects,
)
from voicebridge.app import create_app
from voicebridge.config import Settings

# Settings that are deliberately NOT set in Azure. Keep this list short and justified.
NOT_IN_AZURE = {
    "VOICELIVE_BEARER_TOKEN",  # a pre-fetched dev token; Azure uses the managed identity
    "HOST",  # read by `voicebridge serve` only; the image's uvicorn CMD binds 0.0.0.0
    "PORT",  # likewise: the CMD listens on 8000 = ingress targetPort
    "DEBUG_ENDPOINTS",  # /debug/stats (object census, heap trim): load tests only; never on
    "NODE_ID",  # default <hostname>/<pid> is already unique per replica and worker
    "EXPOSE_NODE_ID",  # x-voicebridge-node header for the cluster simulator; off in production
    # The browser phone (voicebridge phone) is a developer's tool on loopback: never on in
    # Azure, where /phone would face the internet (docs/security.md "The browser phone").
    "PHONE_ENABLED",
    "PHONE_TOKEN",
}

# Env vars the Container App sets that are not Settings fields, and who reads them.
# Where the deployment deliberately differs from the app's default (the app has none).
DEPLOYMENT_DEFAULTS = {
    "VOICELIVE_MODEL": "gpt-realtime",  # the app needs a model or an agent; deploy model mode
    "REDIS_AUTH": "entra",  # the app identity; the database has access keys disabled
    # keeps terminationGracePeriodSeconds <= 120 s (see test_termination_grace_...)
    "DRAIN_GRACE_S": 60,
}

EXTRA_ENV = {
    "AZURE_CLIENT_ID",  # azure-identity: selects the user-assigned managed identity
}


def _env_name(field_name: str) -> str:
    alias = Settings.model_fields[field_name].validation_alias
    choices = getattr(alias, "choices", None)
    return str(choices[0]) if choices else field_name.upper()


SETTINGS_ENV = {_env_name(name): name for name in Settings.model_fields}


def _is_secret(field_name: str) -> bool:
    annotation = Settings.model_fields[field_name].annotation
    return annotation is SecretStr or SecretStr in getattr(annotation, "__args__", ())


SECRET_ENV = {env for env, name in SETTINGS_ENV.items() if _is_secret(name)}


@pytest.fixture(scope="module")
def main() -> BicepFile:
    return BicepFile.load("main.bicep")


@pytest.fixture(scope="module")
def containerapp() -> BicepFile:
    return BicepFile.load("modules/containerapp.bicep")


@pytest.fixture(scope="module")
def eventgrid() -> BicepFile:
    return BicepFile.load("modules/eventgrid.bicep")


def _entries(main: BicepFile, var: str) -> dict[str, dict[str, str]]:
    return {literal(o["name"]): o for o in objects(main.var(var))}


@pytest.fixture(scope="module")
def plain_env(main: BicepFile) -> dict[str, dict[str, str]]:
    return _entries(main, "plainEnv")


@pytest.fixture(scope="module")
def secret_env(main: BicepFile) -> dict[str, dict[str, str]]:
    return _entries(main, "secretEnv")


Route = Callable[[str, str], bool]


@pytest.fixture(scope="module")
def app_routes() -> Route:
    """``app_routes(method, path)``: does the app (built from test settings) serve it?

    Asks the routes themselves (Starlette's ``matches``) rather than reading router
    internals, so included routers and path parameters are handled as in a request."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        voicelive_endpoint="https://res.services.ai.azure.com",
        voicelive_model="gpt-realtime",
        voicelive_api_key=SecretStr("test-key"),
        acs_connection_string=SecretStr(
            "endpoint=https://acs.communication.azure.com/;accesskey=dGVzdA=="
        ),
        public_base_url="https://bridge.example.com",
        acs_resource_id="00000000-0000-0000-0000-000000000000",
    )
    routes = create_app(settings).router.routes

    def serves(method: str, path: str) -> bool:
        scope: dict[str, Any] = {
            "type": "websocket" if method == "WEBSOCKET" else "http",
            "method": method,
            "path": path,
            "root_path": "",
            "headers": [],
            "query_string": b"",
        }
        return any(route.matches(scope)[0] == Match.FULL for route in routes)

    assert serves("GET", "/healthz") and not serves("GET", "/no-such-route")
    return serves


# ---------------------------------------------------------------- settings wiring


def test_every_setting_is_an_env_var_of_the_container_app(
    main: BicepFile,
    containerapp: BicepFile,
    plain_env: dict[str, dict[str, str]],
    secret_env: dict[str, dict[str, str]],
) -> None:
    wired = set(plain_env) | set(secret_env)
    missing = sorted(set(SETTINGS_ENV) - NOT_IN_AZURE - wired)
    assert not missing, f"Settings read these, infra/main.bicep does not set them: {missing}"
    unknown = sorted(wired - set(SETTINGS_ENV) - EXTRA_ENV)
    assert not unknown, f"main.bicep sets env vars the app does not read: {unknown}"
    assert not (wired & NOT_IN_AZURE), "dev-only settings must not be set in Azure"
    # ... and they all reach the container: appEnv = plain (non-empty) + secret refs.
    assert re.fullmatch(
        r"concat\(filter\(plainEnv,\s*(\w+)\s*=>\s*!empty\(\1\.value\)\),\s*secretEnv\)",
        main.var("appEnv"),
    )
    assert object_body(main.declaration("module", "app"))["params"].count("env: appEnv") == 1
    container = objects(containerapp.declaration("resource", "app"), "image")
    assert [c.get("env") for c in container] == ["env"], (
        "the container's env must be the module's env parameter"
    )


def _param_for(entry: dict[str, str], params: dict[str, Any]) -> str | None:
    """The single parameter an env entry's value is derived from, if any."""
    used = identifiers(entry.get("value", "")) & set(params)
    return used.pop() if len(used) == 1 else None


def test_parameter_defaults_are_the_app_defaults(
    main: BicepFile, plain_env: dict[str, dict[str, str]]
) -> None:
    """A Bicep default equal to the Settings default, or '' for "unset" (None)."""
    params = main.params()
    checked = 0
    for env, entry in plain_env.items():
        field = SETTINGS_ENV.get(env)
        pname = _param_for(entry, params)
        if field is None or pname is None:
            continue
        app_default = Settings.model_fields[field].default
        if app_default is PydanticUndefined:
            continue
        bicep_default = params[pname].default_value
        if env in DEPLOYMENT_DEFAULTS:
            assert bicep_default == DEPLOYMENT_DEFAULTS[env], pname
        elif app_default is None:
            assert bicep_default == "", f"{pname} (for {env}) should default to '' (unset)"
        elif isinstance(app_default, bool):
            assert bicep_default is app_default, f"{pname}: {bicep_default!r} != {app_default!r}"
        elif isinstance(app_default, float) and isinstance(bicep_default, str):
            # Bicep has no floats: a fractional default is a string parameter
            assert float(bicep_default) == app_default, f"{pname}: {bicep_default!r}"
        elif isinstance(app_default, int | float):
            assert isinstance(bicep_default, int) and bicep_default == app_default, (
                f"{pname} (for {env}): Bicep default {bicep_default!r}, app {app_default!r}"
            )
        else:
            assert bicep_default == app_default, f"{pname}: {bicep_default!r} != {app_default!r}"
        checked += 1
    assert checked >= 40, f"only {checked} defaults compared: did the env block change shape?"


def test_booleans_are_written_the_way_settings_parse_them(
    plain_env: dict[str, dict[str, str]],
) -> None:
    """Bicep's string(true) is 'True'; write 'true'/'false' explicitly."""
    for env, field in SETTINGS_ENV.items():
        if Settings.model_fields[field].annotation is bool and env in plain_env:
            assert re.search(r"\?\s*'true'\s*:\s*'false'", plain_env[env]["value"]), env


# ---------------------------------------------------------------- secrets


def test_secrets_reach_the_app_only_as_key_vault_references(
    main: BicepFile,
    containerapp: BicepFile,
    plain_env: dict[str, dict[str, str]],
    secret_env: dict[str, dict[str, str]],
) -> None:
    secret_settings = SECRET_ENV - NOT_IN_AZURE
    assert secret_settings, "Settings has no SecretStr fields?"
    assert not (secret_settings & set(plain_env)), "a secret setting has a plain value"
    names = {k: literal(v) for k, v in object_body(main.var("secretNames")).items()}
    kv_secrets = {o["name"]: o for o in objects(main.var("keyVaultSecrets"))}
    for env in sorted(secret_settings | {"APPLICATIONINSIGHTS_CONNECTION_STRING"}):
        entry = secret_env.get(env)
        assert entry is not None, f"{env}: not wired as a secretRef"
        assert set(entry) == {"name", "secretRef"}, f"{env}: {entry}"
        ref = entry["secretRef"]
        assert ref in kv_secrets, f"{env}: secretRef {ref} has no Key Vault secret entry"
        assert re.fullmatch(r"secretNames\.\w+", ref) and ref.split(".")[1] in names
    for name, secret in kv_secrets.items():
        assert set(secret) == {"name", "keyVaultUrl", "identity"}, f"{name}: {secret}"
        assert secret["identity"] == "identity.id"
        assert secret["keyVaultUrl"] == f"'${{vault.outputs.vaultUri}}secrets/${{{name}}}'"
    # Secret names are valid Container App secret names and the same in Key Vault.
    for value in names.values():
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]*[a-z0-9]", value), value
    vault_params = object_body(object_body(main.declaration("module", "vault"))["params"])
    assert vault_params["secretNames"] == "secretNames"
    # The Container App takes its secrets from that list and nothing else.
    app_params = object_body(object_body(main.declaration("module", "app"))["params"])
    assert app_params["secrets"] == "keyVaultSecrets"
    config = containerapp.declaration("resource", "app")
    assert re.search(r"^\s*secrets:\s*secrets\s*$", config, re.M)


def test_no_secret_value_is_ever_written_into_a_container_app(main: BicepFile) -> None:
    secure = {name for name, p in main.params().items() if p.secure}
    assert {"eventGridSharedSecret", "callUrlSecret", "callUrlKeys", "scaleMetricToken"} <= secure
    # (They may appear in conditions, e.g. `!empty(callUrlSecret) ? [...]`, not in values.)
    for var in ("plainEnv", "secretEnv", "keyVaultSecrets"):
        for entry in objects(main.var(var)):
            leaked = set().union(*(identifiers(v) for v in entry.values())) & secure
            assert not leaked, f"var {var}: {entry['name']} uses secure parameters {leaked}"
    assert not identifiers(main.var("plainEnv")) & secure
    for bicep in all_bicep():
        for name, resource in bicep.resources().items():
            if resource[0] == "Microsoft.App/containerApps":
                body = bicep.declaration("resource", name)
                assert not re.search(r"^\s*value:", body.split("template:")[0], re.M), (
                    f"{bicep.path.name}: a Container App secret with a literal value"
                )
        secure_here = {name for name, p in bicep.params().items() if p.secure}
        for out, expr in bicep.outputs().items():
            assert not (identifiers(expr) & secure_here), f"{bicep.path.name}: output {out}"
            assert "listKeys" not in expr and "ConnectionString" not in expr, out


def test_key_vault_is_rbac_and_the_identity_can_read_it() -> None:
    vault = BicepFile.load("modules/keyvault.bicep")
    body = vault.declaration("resource", "vault")
    assert re.search(r"enableRbacAuthorization:\s*true", body)
    assert "4633458b-17de-408a-b874-0445c86b69e6" in vault.text  # Key Vault Secrets User


# ---------------------------------------------------------------- probes, ingress, drain


def test_probes_hit_the_app_health_routes(containerapp: BicepFile, app_routes: Route) -> None:
    probes = {literal(p["type"]): p for p in objects(containerapp.text, "type") if "httpGet" in p}
    assert set(probes) == {"Startup", "Liveness", "Readiness"}
    paths = {kind: literal(object_body(p["httpGet"])["path"]) for kind, p in probes.items()}
    assert paths["Liveness"] == "/healthz" and paths["Readiness"] == "/readyz"
    for kind, path in paths.items():
        assert app_routes("GET", path), f"{kind} probe {path} is not a GET route"
        assert object_body(probes[kind]["httpGet"])["port"] == "targetPort"
    for probe in probes.values():  # Container Apps limits (ContainerAppProbe, 2024-03-01)
        assert 1 <= int(probe.get("failureThreshold", "3")) <= 10
        assert 1 <= int(probe.get("periodSeconds", "10")) <= 240


def test_ingress_carries_the_media_websocket_to_port_8000(
    main: BicepFile, containerapp: BicepFile
) -> None:
    ingress = object_body(
        object_body(object_body(containerapp.declaration("resource", "app"))["properties"])[
            "configuration"
        ]
    )["ingress"]
    body = object_body(ingress)
    assert body["external"] == "true"
    assert body["targetPort"] == "targetPort"
    assert literal(body["transport"]) in ("http", "auto")  # WebSockets over HTTP/1.1
    assert body["allowInsecure"] == "false"
    assert "stickySessions" not in body  # cookie affinity cannot pin ACS traffic
    app_params = object_body(object_body(main.declaration("module", "app"))["params"])
    assert app_params["targetPort"] == "8000"


# The longest grace the platform is known to honour on scale-in: replicas were killed
# 60-80 s after SIGTERM with terminationGracePeriodSeconds=600 (issue
# microsoft/azure-container-apps#1824). Raise only once a real test shows more.
GRACE_CEILING_S = 120
GRACE_TERMS = ["drainRouteSettleS", "drainMigrateDeadlineS", "drainGraceS", "shutdownMarginS"]


def _app_params(main: BicepFile) -> dict[str, str]:
    return object_body(object_body(main.declaration("module", "app"))["params"])


def _defaults(main: BicepFile) -> dict[str, Any]:
    """Parameter defaults, overridden by infra/main.parameters.json (what deploys)."""
    values = {name: p.default_value for name, p in main.params().items()}
    given = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))
    values.update({name: v["value"] for name, v in given["parameters"].items()})
    return values


def test_termination_grace_covers_the_drain(main: BicepFile, containerapp: BicepFile) -> None:
    """SIGTERM -> settle (readiness 503) -> migrate (deadline) -> wait (drain grace) ->
    uvicorn exit: the grace period is their sum, and stays under what the platform
    has been seen to honour."""
    expr = _app_params(main)["terminationGracePeriodSeconds"]
    terms = [t.strip() for t in expr.split("+")]
    assert terms == GRACE_TERMS, expr
    params = main.params()
    for values in ({n: p.default_value for n, p in params.items()}, _defaults(main)):
        grace = sum(values[t] for t in terms)
        assert grace <= GRACE_CEILING_S, (
            f"terminationGracePeriodSeconds {grace} > {GRACE_CEILING_S}"
        )
        drain = (
            values["drainRouteSettleS"] + values["drainMigrateDeadlineS"] + values["drainGraceS"]
        )
        assert grace >= drain + 10, "no margin left for uvicorn and process exit"
    # Each term is the env var the app drains by.
    env = _entries(main, "plainEnv")
    for name, pname in [
        ("DRAIN_ROUTE_SETTLE_S", "drainRouteSettleS"),
        ("DRAIN_MIGRATE_DEADLINE_S", "drainMigrateDeadlineS"),
        ("DRAIN_GRACE_S", "drainGraceS"),
    ]:
        assert env[name]["value"] == f"string({pname})", name
    template = containerapp.declaration("resource", "app")
    assert re.search(r"terminationGracePeriodSeconds:\s*terminationGracePeriodSeconds", template)


def test_drain_settle_outlasts_readiness(main: BicepFile, containerapp: BicepFile) -> None:
    """The ingress stops routing to a replica only after readiness fails failureThreshold
    times; calls must not move before that, or the re-dialled socket lands back here."""
    probes = {literal(p["type"]): p for p in objects(containerapp.text, "type") if "httpGet" in p}
    readiness = probes["Readiness"]
    unready_after = int(readiness["periodSeconds"]) * int(readiness["failureThreshold"])
    settle = main.params()["drainRouteSettleS"].default_value
    assert settle == Settings.model_fields["drain_route_settle_s"].default
    assert settle > unready_after, f"DRAIN_ROUTE_SETTLE_S {settle} <= {unready_after} s"


# ---------------------------------------------------------------- Event Grid


def _incoming_call_type() -> str:
    try:
        from voicebridge.core.webhooks import INCOMING_CALL
    except ImportError:  # older layout
        from voicebridge.routes.calls import INCOMING_CALL  # type: ignore[attr-defined,no-redef]
    return str(INCOMING_CALL)


def test_event_grid_delivers_incoming_calls_to_the_webhook_route(
    main: BicepFile, eventgrid: BicepFile, app_routes: Route
) -> None:
    sub = object_body(object_body(eventgrid.declaration("resource", "incomingCall"))["properties"])
    included = re.findall(r"'([^']*)'", object_body(sub["filter"])["includedEventTypes"])
    assert included == [_incoming_call_type()] == ["Microsoft.Communication.IncomingCall"]
    destination = object_body(sub["destination"])
    assert literal(destination["endpointType"]) == "WebHook"
    assert literal(sub["eventDeliverySchema"]) == "EventGridSchema"
    topic = object_body(eventgrid.declaration("resource", "createdTopic"))
    assert "'Microsoft.Communication.CommunicationServices'" in topic["properties"]
    # The endpoint is the app's POST route.
    webhook = main.var("webhookUrl")
    path = re.fullmatch(r"'\$\{publicBaseUrl\}(/[\w/-]+)'", webhook)
    assert path, webhook
    assert app_routes("POST", path[1]), f"{path[1]} is not a POST route"
    events_params = object_body(object_body(main.declaration("module", "events"))["params"])
    assert events_params["endpointBaseUrl"] == "webhookUrl"
    assert events_params["sharedSecret"] == "eventGridSharedSecret"
    assert "app" in object_body(main.declaration("module", "events"))["dependsOn"]


def test_webhook_secret_query_parameter_is_the_one_the_app_reads(eventgrid: BicepFile) -> None:
    source = (ROOT / "src/voicebridge/routes/calls.py").read_text(encoding="utf-8")
    read = set(re.findall(r"query_params\.get\(\s*\"(\w+)\"", source))
    if not read:
        pytest.skip("the webhook reads no query parameter (no shared-secret check)")
    sent = set(re.findall(r"\?(\w+)=\$\{uriComponent\(sharedSecret\)\}", eventgrid.text))
    assert sent and sent <= read, f"Event Grid sends ?{sent}=, the app reads {read}"


def test_entra_delivery_and_app_settings_use_the_same_values(
    main: BicepFile, plain_env: dict[str, dict[str, str]]
) -> None:
    events_params = object_body(object_body(main.declaration("module", "events"))["params"])
    assert plain_env["EVENTGRID_ENTRA_TENANT_ID"]["value"] == events_params["entraTenantId"]
    assert (
        plain_env["EVENTGRID_ENTRA_AUDIENCE"]["value"] == events_params["entraApplicationIdOrUri"]
    )
    assert plain_env["ACS_RESOURCE_ID"]["value"] == "acs.outputs.immutableResourceId"
    assert plain_env["PUBLIC_BASE_URL"]["value"] == "publicBaseUrl"
    assert "containerEnv.outputs.defaultDomain" in main.var("publicBaseUrl")


# ---------------------------------------------------------------- files and versions


def test_modules_exist_and_api_versions_are_stable_and_documented() -> None:
    main = BicepFile.load("main.bicep")
    for path in main.modules().values():
        assert (INFRA / path).is_file(), path
    runbook = (ROOT / "docs/deploy.md").read_text(encoding="utf-8")
    for bicep in all_bicep():
        for name, (rtype, version) in bicep.resources().items():
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", version), f"{name}: {rtype}@{version}"
            assert f"`{rtype}@{version}`" in runbook, f"docs/deploy.md: list {rtype}@{version}"


def test_outputs_include_the_app_and_webhook_urls(main: BicepFile) -> None:
    outputs = main.outputs()
    assert outputs["appUrl"] == "publicBaseUrl"
    assert outputs["webhookUrl"] == "webhookUrl"


def test_parameters_file_matches_main(main: BicepFile) -> None:
    params = main.params()
    given = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert set(given) <= set(params), f"unknown parameters: {set(given) - set(params)}"
    # Required secure values (callUrlKeys, scaleMetricToken) go on the command line.
    required = {name for name, p in params.items() if p.default is None and not p.secure}
    assert required <= set(given), f"required parameters missing: {required - set(given)}"
    assert not {name for name in given if params[name].secure}, "secure values in a JSON file"
    runbook = (ROOT / "docs/deploy.md").read_text(encoding="utf-8")
    for name, p in params.items():
        if p.default is None and p.secure:
            assert f"{name}=" in runbook, f"docs/deploy.md: show how to pass {name}"


# ---------------------------------------------------------------- many nodes


@pytest.fixture(scope="module")
def redis() -> BicepFile:
    assert (INFRA / "modules/redis.bicep").is_file(), "no infra/modules/redis.bicep"
    return BicepFile.load("modules/redis.bicep")


def _properties(bicep: BicepFile, resource: str) -> dict[str, str]:
    return object_body(object_body(bicep.declaration("resource", resource))["properties"])


def test_redis_holds_control_state_not_cache(main: BicepFile, redis: BicepFile) -> None:
    """Call records must never be evicted; one endpoint (no cluster client); TLS only."""
    assert main.modules().get("redis") == "modules/redis.bicep"
    types = {rtype for rtype, _ in redis.resources().values()}
    assert {
        "Microsoft.Cache/redisEnterprise",
        "Microsoft.Cache/redisEnterprise/databases",
        "Microsoft.Cache/redisEnterprise/databases/accessPolicyAssignments",
    } <= types
    database = object_body(redis.declaration("resource", "database"))
    assert literal(database["name"]) == "default"  # the only name AMR accepts
    props = _properties(redis, "database")
    assert literal(props["evictionPolicy"]) == "NoEviction"
    assert literal(props["clusteringPolicy"]) == "EnterpriseCluster"
    assert literal(props["clientProtocol"]) == "Encrypted"
    assert literal(props["port"]) == 10000
    persistence = object_body(props["persistence"])
    assert persistence == {"aofEnabled": "false", "rdbEnabled": "false"}
    cluster = _properties(redis, "cluster")
    assert literal(cluster["minimumTlsVersion"]) == "1.2"
    sku = object_body(object_body(redis.declaration("resource", "cluster"))["sku"])
    redis_params = object_body(object_body(main.declaration("module", "redis"))["params"])
    assert sku["name"] == "skuName" and redis_params["skuName"] == "redisSku"
    assert main.params()["redisSku"].default_value == "Balanced_B1"


def test_redis_access_keys_are_off_and_the_app_identity_has_entra_access(
    main: BicepFile, redis: BicepFile, plain_env: dict[str, dict[str, str]]
) -> None:
    props = _properties(redis, "database")
    assert re.fullmatch(
        r"accessKeysEnabled\s*\?\s*'Enabled'\s*:\s*'Disabled'", props["accessKeysAuthentication"]
    )
    assert redis.params()["accessKeysEnabled"].default_value is False
    redis_params = object_body(object_body(main.declaration("module", "redis"))["params"])
    assert redis_params["accessKeysEnabled"] == "redisAuth == 'key'"
    assert main.params()["redisAuth"].default_value == "entra"
    assert plain_env["REDIS_AUTH"]["value"] == "redisAuth"
    # The app's identity gets the built-in data access policy on the database.
    assignment = object_body(redis.declaration("resource", "appAccess"))
    assert assignment["parent"] == "database"
    access = _properties(redis, "appAccess")
    assert literal(access["accessPolicyName"]) == "default"
    assert object_body(access["user"])["objectId"] == "principalId"
    assert redis_params["principalId"] == "identity.properties.principalId"
    # Assignment names are letters and digits only in the 2025-04-01 spec.
    assert assignment["name"] == "replace(principalId, '-', '')"
    # The identity azure-identity picks is the same one (AZURE_CLIENT_ID).
    assert plain_env["AZURE_CLIENT_ID"]["value"] == "identity.properties.clientId"


def test_redis_url_reaches_the_app_from_key_vault(
    main: BicepFile, redis: BicepFile, secret_env: dict[str, dict[str, str]]
) -> None:
    assert redis.outputs()["url"] == "'rediss://${cluster.properties.hostName}:10000'"
    vault_params = object_body(object_body(main.declaration("module", "vault"))["params"])
    assert vault_params["redisUrl"] == "redis.outputs.url"
    assert secret_env["REDIS_URL"]["secretRef"] == "secretNames.redisUrl"
    keyvault = BicepFile.load("modules/keyvault.bicep")
    stored = _properties(keyvault, "redisUrlSecret")
    assert stored["value"] == "redisUrl"
    # An access key only in key mode, and only from the database itself.
    assert "redisAuth == 'key'" in main.var("secretEnv")
    assert re.search(r"resource redisKey '[^']+' = if \(storeRedisKey\)", keyvault.text), (
        "the Redis key secret must be conditional"
    )
    assert _properties(keyvault, "redisKey")["value"] == "redisDatabase.listKeys().primaryKey"
    assert vault_params["storeRedisKey"] == "redisAuth == 'key'"
    assert main.outputs()["redisHost"] == "redis.outputs.hostName"


def test_the_app_waits_for_redis_access(main: BicepFile) -> None:
    """The access policy assignment must exist before the first replica connects."""
    depends = object_body(main.declaration("module", "app"))["dependsOn"]
    assert "redis" in re.findall(r"\w+", depends)


def _scale(containerapp: BicepFile) -> dict[str, str]:
    template = object_body(object_body(containerapp.declaration("resource", "app"))["properties"])[
        "template"
    ]
    return object_body(object_body(template)["scale"])


def _rules(containerapp: BicepFile) -> dict[str, dict[str, str]]:
    return {literal(r["name"]): r for r in objects(_scale(containerapp)["rules"])}


def test_scale_rule_counts_live_calls_through_the_scale_metric_route(
    main: BicepFile, containerapp: BicepFile
) -> None:
    """KEDA metrics-api on the app's /api/scale-metric: desired = ceil(activeCalls / 60)."""
    rules = _rules(containerapp)
    assert set(rules) == {"active-calls", "cpu-safety"}
    calls = rules["active-calls"]
    assert set(calls) == {"name", "custom"}
    custom = object_body(calls["custom"])
    assert literal(custom["type"]) == "metrics-api"
    metadata = object_body(custom["metadata"])
    assert metadata["url"] == "scaleMetricUrl"
    assert literal(metadata["valueLocation"]) == "activeCalls"
    assert metadata["targetValue"] == "string(callsPerReplica)"
    assert literal(metadata["authMode"]) == "bearer"
    (auth,) = objects(custom["auth"], "secretRef")
    assert literal(auth["triggerParameter"]) == "token"
    assert auth["secretRef"] == "scaleMetricSecretName"
    # Wiring in main.bicep: the app's own URL, 60 calls per replica, the token's secret.
    app_params = _app_params(main)
    assert main.var("scaleMetricUrl") == "'${publicBaseUrl}/api/scale-metric'"
    assert app_params["scaleMetricUrl"] == "scaleMetricUrl"
    assert main.outputs()["scaleMetricUrl"] == "scaleMetricUrl"
    assert app_params["callsPerReplica"] == "callsPerReplica"
    assert main.params()["callsPerReplica"].default_value == 60
    assert app_params["scaleMetricSecretName"] == "secretNames.scaleMetricToken"
    kv_secrets = {o["name"] for o in objects(main.var("keyVaultSecrets"))}
    assert "secretNames.scaleMetricToken" in kv_secrets
    # The app checks the same token (a 404 while SCALE_METRIC_TOKEN is unset).
    secret_env = _entries(main, "secretEnv")
    assert secret_env["SCALE_METRIC_TOKEN"]["secretRef"] == "secretNames.scaleMetricToken"


def test_scale_metric_route_is_served(app_routes: Route) -> None:
    if not app_routes("GET", "/api/scale-metric"):
        pytest.skip("GET /api/scale-metric is not in this tree yet (written in parallel)")


def test_no_http_scale_rule_and_a_cpu_safety_net(containerapp: BicepFile) -> None:
    """The HTTP rule counts requests per 15 s: a 10-minute call barely registers."""
    scale = _scale(containerapp)
    for rule in objects(scale["rules"]):
        assert "http" not in rule and "tcp" not in rule, rule["name"]
        custom = object_body(rule["custom"])
        assert literal(custom["type"]) not in ("http", "tcp"), rule["name"]
    cpu = object_body(_rules(containerapp)["cpu-safety"]["custom"])
    assert literal(cpu["type"]) == "cpu"
    metadata = object_body(cpu["metadata"])
    assert literal(metadata["type"]) == "Utilization"
    assert metadata["value"] == "string(cpuScalePercent)"
    assert containerapp.params()["cpuScalePercent"].default_value == 70
    # Poll faster than the 30 s default; keep the documented 300 s cooldown.
    assert scale["pollingInterval"] == "pollingIntervalS"
    assert scale["cooldownPeriod"] == "cooldownPeriodS"
    assert containerapp.params()["pollingIntervalS"].default_value == 15
    assert containerapp.params()["cooldownPeriodS"].default_value == 300


def test_at_least_two_replicas_and_nodes_add_up(
    main: BicepFile, containerapp: BicepFile, plain_env: dict[str, dict[str, str]]
) -> None:
    params = main.params()
    minimum = params["minReplicas"]
    assert minimum.default_value >= 2
    assert "@minValue(2)" in minimum.decorators
    assert params["maxReplicas"].default_value > minimum.default_value
    assert "@minValue(2)" in containerapp.params()["minReplicas"].decorators
    assert _defaults(main)["minReplicas"] >= 2
    scale = _scale(containerapp)
    assert scale["minReplicas"] == "minReplicas" and scale["maxReplicas"] == "maxReplicas"
    app_params = _app_params(main)
    assert app_params["minReplicas"] == "minReplicas"
    assert app_params["maxReplicas"] == "maxReplicas"
    # MAX_NODES: every worker of every replica is a node.
    assert plain_env["MAX_NODES"]["value"] == "string(maxReplicas * workersPerReplica)"
    assert plain_env["WORKERS"]["value"] == "string(workersPerReplica)"
    assert params["workersPerReplica"].default_value == Settings.model_fields["workers"].default


def test_call_url_keys_are_required_and_a_key_vault_reference(
    main: BicepFile, secret_env: dict[str, dict[str, str]]
) -> None:
    """Every node verifies URLs that other nodes signed: one shared key ring, always."""
    params = main.params()
    keyvault = BicepFile.load("modules/keyvault.bicep")
    for pname, env, secret, resource in [
        ("callUrlKeys", "CALL_URL_KEYS", "callUrlKeys", "callUrlKeyRing"),
        ("scaleMetricToken", "SCALE_METRIC_TOKEN", "scaleMetricToken", "scaleMetric"),
    ]:
        assert params[pname].secure and params[pname].default is None, f"{pname}: required"
        assert secret_env[env] == {"name": f"'{env}'", "secretRef": f"secretNames.{secret}"}
        # Not behind a condition (the earlier `!empty(callUrlKeys) ? [...] : []`).
        assert f"!empty({pname})" not in main.text
        assert re.search(rf"resource {resource} '[^']+' = \{{", keyvault.text), resource
    kv_secrets = {o["name"]: o for o in objects(main.var("keyVaultSecrets"))}
    assert kv_secrets["secretNames.callUrlKeys"]["keyVaultUrl"] == (
        "'${vault.outputs.vaultUri}secrets/${secretNames.callUrlKeys}'"
    )


def test_the_profiles_file_is_mounted_from_key_vault_where_profiles_file_points(
    main: BicepFile, containerapp: BicepFile, plain_env: dict[str, dict[str, str]]
) -> None:
    """profilesYaml (secure) -> Key Vault -> a Container App secret mounted as a file in
    /mnt/voicebridge; PROFILES_FILE names that file (docs/outbound.md)."""
    params = main.params()
    assert params["profilesYaml"].secure and params["outboundApiKeys"].secure
    path = literal(main.var("profilesPath"))
    directory, _, name = path.rpartition("/")
    assert plain_env["PROFILES_FILE"]["value"] == "profilesMounted ? profilesPath : profilesFile"
    app_params = object_body(object_body(main.declaration("module", "app"))["params"])
    files = objects(app_params["secretFiles"], "secretRef")
    assert files == [{"secretRef": "secretNames.profilesYaml", "path": f"'{name}'"}]
    mounts = objects(containerapp.declaration("resource", "app"), "mountPath")
    assert [literal(m["mountPath"]) for m in mounts] == [directory]
    volumes = objects(containerapp.declaration("resource", "app"), "storageType")
    assert [literal(v["storageType"]) for v in volumes] == ["Secret"]
    assert volumes[0]["name"] == mounts[0]["volumeName"]
