"""The operator as it runs: kopf handlers, the SSA client, the reconciler, against kmock."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kopf_harness import NAMESPACE, RELAY_IMAGE, Harness, SSAEmulator, gc_path

from gamecluster import handlers, names
from relay import contract

pytestmark = [pytest.mark.operator, pytest.mark.kmock(cls=SSAEmulator)]

DEPLOYMENTS = "apps/v1/deployments"
STATEFULSETS = "apps/v1/statefulsets"
SERVICES = "v1/services"
CONFIGMAPS = "v1/configmaps"
SECRETS = "v1/secrets"
PDBS = "policy/v1/poddisruptionbudgets"
EVENTS = "v1/events"


def child_path(api: str, plural: str, name: str) -> str:
    prefix = f"/api/{api}" if "/" not in api else f"/apis/{api}"
    return f"{prefix}/namespaces/{NAMESPACE}/{plural}/{name}"


def deployment(harness: Harness) -> dict[str, Any] | None:
    return harness.objects(DEPLOYMENTS, "arena-relay")


async def test_create_makes_every_child_with_server_side_apply(harness: Harness) -> None:
    await harness.create_gamecluster("arena", {"replicas": 3, "redis": {"shards": 2}})
    deploy = await harness.eventually(lambda: deployment(harness), what="the relay Deployment")
    for resource, name in [
        (CONFIGMAPS, "arena-relay"),
        (SECRETS, "arena-jwt"),
        (SERVICES, "arena-redis"),
        (STATEFULSETS, "arena-redis"),
        (SERVICES, "arena"),
    ]:
        await harness.eventually(
            lambda r=resource, n=name: harness.objects(r, n), what=f"{resource} {name}"
        )
    await harness.eventually(lambda: harness.objects(PDBS, "arena-relay"), what="the PDB")

    assert deploy["spec"]["replicas"] == 3
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["image"] == RELAY_IMAGE
    assert deploy["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert harness.objects(STATEFULSETS, "arena-redis")["spec"]["replicas"] == 2  # type: ignore[index]
    config = harness.objects(CONFIGMAPS, "arena-relay")["data"]  # type: ignore[index]
    assert config[contract.ENV_REDIS_URLS].count("redis://") == 2

    # Every child went through server-side apply under the one field manager, forced.
    applies = [
        r
        for r in harness.emulator
        if r.method == "PATCH"
        and r.headers.get("Content-Type", "").startswith("application/apply-patch")
    ]
    assert {r.params.get("fieldManager") for r in applies} == {names.FIELD_MANAGER}
    assert {r.params.get("force") for r in applies} == {"true"}
    assert not [
        r
        for r in harness.emulator
        if r.method in ("POST", "PUT")
        and r.resource
        and r.resource.plural
        in ("deployments", "statefulsets", "services", "configmaps", "secrets")
    ]


async def test_changing_replicas_patches_the_deployment(harness: Harness) -> None:
    await harness.create_gamecluster("arena", {"replicas": 2})
    await harness.eventually(lambda: deployment(harness)["spec"]["replicas"] == 2)
    await harness.patch(gc_path("arena"), {"metadata": {"generation": 2}, "spec": {"replicas": 5}})
    await harness.eventually(
        lambda: deployment(harness)["spec"]["replicas"] == 5, what="replicas 5"
    )
    await harness.eventually(
        lambda: harness.gamecluster("arena")["status"]["observedGeneration"] == 2,
        what="observedGeneration 2",
    )


async def test_scale_subresource_style_change_applies_too(harness: Harness) -> None:
    """kubectl scale writes spec.replicas through /scale; here the same field is patched."""
    await harness.create_gamecluster("arena", {"replicas": 1})
    await harness.eventually(lambda: deployment(harness))
    await harness.patch(gc_path("arena"), {"metadata": {"generation": 2}, "spec": {"replicas": 0}})
    await harness.eventually(
        lambda: deployment(harness)["spec"]["replicas"] == 0, what="scaled to 0"
    )


async def test_a_deleted_child_comes_back(harness: Harness) -> None:
    await harness.create_gamecluster("arena", {})
    await harness.eventually(lambda: deployment(harness))
    await harness.request("DELETE", child_path("apps/v1", "deployments", "arena-relay"))
    await harness.eventually(lambda: deployment(harness), what="the Deployment to come back")
    await harness.request("DELETE", child_path("v1", "services", "arena"))
    await harness.eventually(
        lambda: harness.objects(SERVICES, "arena"), what="the Service to come back"
    )


async def test_a_hand_edit_is_reverted(harness: Harness) -> None:
    await harness.create_gamecluster("arena", {"replicas": 2})
    await harness.eventually(lambda: deployment(harness))
    await harness.patch(
        child_path("apps/v1", "deployments", "arena-relay"), {"spec": {"replicas": 9}}
    )
    await harness.eventually(
        lambda: deployment(harness)["spec"]["replicas"] == 2, what="revert to 2"
    )
    config = child_path("v1", "configmaps", "arena-relay")
    await harness.patch(config, {"data": {contract.ENV_MAX_CONNECTIONS: "1"}})
    await harness.eventually(
        lambda: (
            harness.objects(CONFIGMAPS, "arena-relay")["data"][contract.ENV_MAX_CONNECTIONS]
            == "20000"
        ),
        what="ConfigMap reverted",
    )


async def test_generated_secret_is_deleted_by_hand_and_recreated_by_the_timer(
    harness: Harness,
) -> None:
    await harness.create_gamecluster("arena", {})
    first = await harness.eventually(lambda: harness.objects(SECRETS, "arena-jwt"))
    deploy = await harness.eventually(lambda: deployment(harness))
    await harness.request("DELETE", child_path("v1", "secrets", "arena-jwt"))
    again = await harness.eventually(
        lambda: harness.objects(SECRETS, "arena-jwt"), what="the Secret back"
    )
    assert again["data"]["secret"]
    assert first["data"]["secret"]
    # A regenerated secret does not roll the pods by itself (the hash excludes secret values).
    hash_key = names.ANNOTATION_CONFIG_HASH
    assert (
        deployment(harness)["spec"]["template"]["metadata"]["annotations"][hash_key]
        == (  # type: ignore[index]
            deploy["spec"]["template"]["metadata"]["annotations"][hash_key]
        )
    )


async def test_child_status_flows_into_gamecluster_status(harness: Harness) -> None:
    harness.load.connections = 1234
    await harness.create_gamecluster("arena", {"replicas": 2, "redis": {"shards": 2}})
    await harness.eventually(
        lambda: deployment(harness) and harness.objects(STATEFULSETS, "arena-redis")
    )
    status = await harness.eventually(lambda: harness.gamecluster("arena")["status"])
    assert status["phase"] in {"Pending", "Progressing"}

    # Play the controllers: the Deployment and StatefulSet report their pods.
    await harness.patch(
        child_path("apps/v1", "statefulsets", "arena-redis") + "/status",
        {"status": {"replicas": 2, "readyReplicas": 2}},
    )
    await harness.patch(
        child_path("apps/v1", "deployments", "arena-relay") + "/status",
        {
            "status": {
                "replicas": 2,
                "readyReplicas": 2,
                "availableReplicas": 2,
                "updatedReplicas": 2,
            }
        },
    )
    ready = await harness.eventually(
        lambda: (s := harness.gamecluster("arena")["status"])["phase"] == "Ready" and s,
        what="phase Ready",
    )
    assert (ready["replicas"], ready["readyReplicas"]) == (2, 2)
    assert ready["redis"] == {"shards": 2, "readyShards": 2}
    assert ready["selector"] == "app.kubernetes.io/instance=arena,app.kubernetes.io/component=relay"
    assert ready["endpoint"] == f"ws://arena.{NAMESPACE}.svc:80/ws"
    conditions = {c["type"]: c["status"] for c in ready["conditions"]}
    assert conditions == {
        "Ready": "True",
        "Stalled": "False",
        "Reconciling": "False",
        "Available": "True",
        "Progressing": "False",
        "RedisReady": "True",
    }
    await harness.eventually(
        lambda: harness.gamecluster("arena")["status"].get("connections") == 1234,
        what="connections",
    )

    # A pod goes away: Ready turns False again.
    await harness.patch(
        child_path("apps/v1", "deployments", "arena-relay") + "/status",
        {"status": {"readyReplicas": 1, "availableReplicas": 1}},
    )
    await harness.eventually(
        lambda: harness.gamecluster("arena")["status"]["phase"] == "Progressing"
    )


def events(harness: Harness, reason: str, type_: str) -> list[dict[str, Any]]:
    found = []
    for (resource, _ns, _name), obj in harness.emulator.objects.items():
        if resource.plural == "events" and not obj.deleted:
            raw = obj.raw
            if raw.get("reason") == reason and raw.get("type") == type_:
                found.append(raw)
    return found


def warning_events(harness: Harness, reason: str) -> list[dict[str, Any]]:
    return events(harness, reason, "Warning")


async def test_missing_named_secret_is_degraded_with_an_event_then_recovers(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "RETRY_SECONDS", 0.5)
    await harness.create_gamecluster("arena", {"auth": {"secretName": "arena-keys"}})
    status = await harness.eventually(
        lambda: (s := harness.gamecluster("arena")["status"])["phase"] == "Degraded" and s,
        what="phase Degraded",
    )
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "SecretNotFound")
    await harness.eventually(
        lambda: warning_events(harness, "SecretNotFound"), what="a Warning Event"
    )
    assert deployment(harness) is None  # nothing applied for a spec that cannot work

    # The Secret appears: the retry (TemporaryError) applies everything.
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "arena-keys", "namespace": NAMESPACE},
        "data": {"secret": "eA=="},
    }
    await harness.request(
        "POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", secret, "application/json"
    )
    await harness.eventually(
        lambda: deployment(harness), what="the Deployment after the Secret appeared"
    )
    assert harness.objects(SECRETS, "arena-jwt") is None
    await harness.eventually(lambda: harness.gamecluster("arena")["status"]["phase"] != "Degraded")


async def test_external_mode_without_urls_is_degraded_permanently(harness: Harness) -> None:
    await harness.create_gamecluster("lobby", {"redis": {"mode": "external"}})
    status = await harness.eventually(
        lambda: (s := harness.gamecluster("lobby")["status"])["phase"] == "Degraded" and s,
        what="phase Degraded",
    )
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["reason"] == "ExternalRedisWithoutURLs"
    await harness.eventually(
        lambda: warning_events(harness, "ExternalRedisWithoutURLs"), what="a Warning Event"
    )
    assert harness.objects(DEPLOYMENTS, "lobby-relay") is None

    # Fixing the spec is what helps.
    fix = {
        "metadata": {"generation": 2},
        "spec": {"redis": {"external": {"urls": ["redis://r:6379"]}}},
    }
    await harness.patch(gc_path("lobby"), fix)
    deploy = await harness.eventually(
        lambda: harness.objects(DEPLOYMENTS, "lobby-relay"), what="Deployment"
    )
    assert harness.objects(STATEFULSETS, "lobby-redis") is None
    assert deploy["spec"]["replicas"] == 2


async def test_switching_to_external_prunes_the_managed_redis(harness: Harness) -> None:
    await harness.create_gamecluster("arena", {})
    await harness.eventually(lambda: harness.objects(STATEFULSETS, "arena-redis"))
    change = {
        "metadata": {"generation": 2},
        "spec": {"redis": {"mode": "external", "external": {"urls": ["redis://ext:6379"]}}},
    }
    await harness.patch(gc_path("arena"), change)
    await harness.eventually(
        lambda: harness.objects(STATEFULSETS, "arena-redis") is None, what="StatefulSet gone"
    )
    await harness.eventually(
        lambda: harness.objects(SERVICES, "arena-redis") is None, what="headless Service gone"
    )
    config = await harness.eventually(
        lambda: (
            (c := harness.objects(CONFIGMAPS, "arena-relay")["data"])[contract.ENV_REDIS_URLS]
            == "redis://ext:6379"
            and c
        )
    )
    assert config


def shard_names(count: int) -> tuple[str, ...]:
    return tuple(f"arena-redis-{n}.arena-redis.{NAMESPACE}.svc:6379" for n in range(count))


def shards_status(harness: Harness) -> dict[str, Any]:
    return dict(harness.gamecluster("arena")["status"]["shards"])


def relay_url_count(harness: Harness) -> int:
    return len(
        harness.objects(CONFIGMAPS, "arena-relay")["data"][contract.ENV_REDIS_URLS].split(",")
    )


async def set_rolled_out(harness: Harness, done: bool) -> None:
    """Play the Deployment controller: every relay pod on the latest template, or a rollout."""
    replicas = deployment(harness)["spec"]["replicas"]
    counts = {
        key: replicas
        for key in ("replicas", "updatedReplicas", "availableReplicas", "readyReplicas")
    }
    await harness.patch(
        child_path("apps/v1", "deployments", "arena-relay") + "/status",
        {"status": counts if done else {"updatedReplicas": 0}},
    )


async def test_shard_change_switches_the_map_between_relay_rollouts(harness: Harness) -> None:
    admin = harness.relay_admin
    admin.map = admin.map.__class__(1, shard_names(1), "stable")
    await harness.create_gamecluster("arena", {"redis": {"shards": 1}})
    before = await harness.eventually(lambda: deployment(harness))
    await harness.patch(
        gc_path("arena"), {"metadata": {"generation": 2}, "spec": {"redis": {"shards": 3}}}
    )
    # Rolling: Redis and the relays' list are the union; nothing is asked of the relays yet.
    await harness.eventually(
        lambda: (
            harness.objects(STATEFULSETS, "arena-redis")["spec"]["replicas"] == 3
            and relay_url_count(harness) == 3
            and shards_status(harness)["phase"] == "Rolling"
        ),
        what="the union running, phase Rolling",
    )
    after = deployment(harness)
    assert (
        after["spec"]["template"]["metadata"]["annotations"]
        != (before["spec"]["template"]["metadata"]["annotations"])
    )
    assert admin.posts() == []
    # The relays rolled: the operator asks for the switch, then reads until it is stable.
    await set_rolled_out(harness, True)
    # The POST comes before the pass writes status: wait for both, not one then the other.
    await harness.eventually(
        lambda: (
            admin.posts() == [shard_names(3)] and shards_status(harness)["phase"] == "Switching"
        ),
        what="the switch, phase Switching",
    )
    admin.finish()
    done = await harness.eventually(
        lambda: (s := shards_status(harness))["phase"] == "Stable" and s, what="Stable"
    )
    assert (done["active"], done["target"], done["mapVersion"]) == (3, 3, 2)

    # Shrinking: switched first; the relays leave shards 1 and 2 before Redis removes them.
    await harness.patch(
        gc_path("arena"), {"metadata": {"generation": 3}, "spec": {"redis": {"shards": 1}}}
    )
    await harness.eventually(lambda: admin.posts()[-1:] == [shard_names(1)], what="the switch")
    await set_rolled_out(harness, False)
    admin.finish()
    await harness.eventually(
        lambda: shards_status(harness)["phase"] == "Shrinking" and relay_url_count(harness) == 1,
        what="Shrinking with the relays on one shard",
    )
    assert harness.objects(STATEFULSETS, "arena-redis")["spec"]["replicas"] == 3
    await set_rolled_out(harness, True)
    await harness.eventually(
        lambda: (
            shards_status(harness)["phase"] == "Stable"
            and harness.objects(STATEFULSETS, "arena-redis")["spec"]["replicas"] == 1
        ),
        what="Redis shrunk once the relays rolled",
    )


async def test_a_switch_that_keeps_aborting_backs_off(harness: Harness) -> None:
    admin = harness.relay_admin
    admin.map = admin.map.__class__(1, shard_names(1), "stable")
    await harness.create_gamecluster("arena", {"redis": {"shards": 1}})
    await harness.eventually(lambda: deployment(harness))
    await harness.patch(
        gc_path("arena"), {"metadata": {"generation": 2}, "spec": {"redis": {"shards": 2}}}
    )
    await harness.eventually(lambda: relay_url_count(harness) == 2, what="the union")
    await set_rolled_out(harness, True)
    await harness.eventually(lambda: admin.posts() == [shard_names(2)], what="the first switch")
    admin.finish(abort="aborted: relay arena-relay-x lacks shard arena-redis-1")
    waiting = await harness.eventually(
        lambda: (s := shards_status(harness))["phase"] == "Rolling" and s["attempts"] == 1 and s,
        what="the abort recorded",
    )
    retry_after = datetime.fromisoformat(waiting["retryAfter"])
    # Truncated to the second and read a moment after it was written: at most 10 s ahead.
    assert 0 < (retry_after - datetime.now(UTC)).total_seconds() <= 10
    assert f"next attempt at {waiting['retryAfter']}" in waiting["message"]
    assert "lacks shard arena-redis-1" in waiting["message"]
    reconciling = next(
        c
        for c in harness.gamecluster("arena")["status"]["conditions"]
        if c["type"] == "Reconciling"
    )
    assert reconciling["reason"] == "ShardSwitchRetrying"
    # Passes go on (the resync timer, 0.5 s here); none asks the relays again meanwhile.
    passes = harness.metric("gamecluster_reconciles_total", kind="drift")
    await harness.eventually(
        lambda: harness.metric("gamecluster_reconciles_total", kind="drift") >= passes + 5,
        what="five more passes",
    )
    assert admin.posts() == [shard_names(2)]
    assert shards_status(harness)["retryAfter"] == waiting["retryAfter"]
    # Past the wait: asked again, at the next pass.
    harness.clock.ahead = timedelta(seconds=10)
    await harness.eventually(
        lambda: len(admin.posts()) == 2 and shards_status(harness)["phase"] == "Switching",
        what="the second attempt",
    )
    admin.finish()
    done = await harness.eventually(
        lambda: (s := shards_status(harness))["phase"] == "Stable" and s, what="Stable"
    )
    assert (done["active"], done["attempts"], done["retryAfter"]) == (2, 0, "")


async def test_autoscaler_follows_the_load_reports(harness: Harness) -> None:
    harness.load.connections = 12_000
    spec = {
        "autoscaling": {
            "enabled": True,
            "minReplicas": 1,
            "maxReplicas": 10,
            "targetConnectionsPerReplica": 5000,
            "scaleDownDelaySeconds": 0,
            "behavior": {
                "scaleDown": {"policies": [{"type": "Percent", "value": 100, "periodSeconds": 1}]}
            },
        }
    }
    await harness.create_gamecluster("arena", spec)
    await harness.eventually(
        lambda: deployment(harness)["spec"]["replicas"] == 3, what="3 replicas for 12000"
    )
    status = harness.gamecluster("arena")["status"]  # type: ignore[index]
    assert status["autoscaling"]["desiredReplicas"] == 3
    scaled = await harness.eventually(lambda: events(harness, "ScaledUp", "Normal"), what="Event")
    assert "1 -> 3" in scaled[0]["message"]
    assert harness.metric("gamecluster_scale_decisions_total", direction="up") == 1
    harness.load.connections = 100
    await harness.eventually(lambda: deployment(harness)["spec"]["replicas"] == 1, what="down to 1")
    # (A drift pass may apply the new count from status before the tick that decided it
    # has counted its decision.)
    await harness.eventually(
        lambda: harness.metric("gamecluster_scale_decisions_total", direction="down") >= 1,
        what="the scale-down counted",
    )
    assert harness.metric("gamecluster_reconciles_total", kind="full") >= 1
    assert harness.metric("gamecluster_reconciles_total", kind="drift") >= 2  # a tick each
    assert harness.metric("gamecluster_load_unknown_total") == 0  # every tick read a load
    # Shard 0 only, for the ready relay pods (the emulator runs no pods: none).
    assert harness.load.calls[-1] == ("redis://arena-redis-0.arena-redis.games.svc:6379", ())


def condition(harness: Harness, name: str, type_: str) -> dict[str, Any]:
    status = harness.gamecluster(name)["status"]  # type: ignore[index]
    return next(c for c in status["conditions"] if c["type"] == type_)  # type: ignore[no-any-return]


async def test_a_same_named_service_is_left_alone_and_reported(harness: Harness) -> None:
    theirs = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "arena", "namespace": NAMESPACE, "labels": {"team": "web"}},
        "spec": {"selector": {"app": "website"}, "ports": [{"port": 80}]},
    }
    await harness.request(
        "POST", f"/api/v1/namespaces/{NAMESPACE}/services", theirs, "application/json"
    )
    await harness.create_gamecluster("arena", {})
    stalled = await harness.eventually(
        lambda: (c := condition(harness, "arena", "Stalled"))["status"] == "True" and c,
        what="Stalled",
    )
    assert stalled["reason"] == "NameConflict"
    assert f"Service {NAMESPACE}/arena" in stalled["message"]
    # Everything else is still applied; their Service is untouched (no owner, same selector).
    assert deployment(harness) is not None
    service = harness.objects(SERVICES, "arena")
    assert service is not None
    assert service["spec"]["selector"] == {"app": "website"}
    assert not service["metadata"].get("ownerReferences")
    assert not [
        r
        for r in harness.emulator
        if r.method == "PATCH"
        and r.resource
        and r.resource.plural == "services"
        and r.name == "arena"
    ]
    await harness.eventually(lambda: warning_events(harness, "NameConflict"), what="an Event")
    await harness.eventually(
        lambda: harness.metric("gamecluster_reconcile_errors_total", reason="NameConflict") >= 1,
        what="the error counted in the operator's metrics",
    )


async def test_paused_gamecluster_is_left_alone_until_unpaused(harness: Harness) -> None:
    await harness.create_gamecluster("arena", {}, annotations={names.ANNOTATION_PAUSED: "true"})
    # A second, unpaused GameCluster proves the operator is running and ticking meanwhile.
    await harness.create_gamecluster("lobby", {}, uid="uid-2")
    await harness.eventually(lambda: harness.objects(DEPLOYMENTS, "lobby-relay"), what="lobby")
    ticks = len(harness.load.calls)
    await harness.eventually(
        lambda: len(harness.load.calls) >= ticks + 2, within=30, what="two more lobby ticks"
    )
    assert deployment(harness) is None
    assert "status" not in (harness.gamecluster("arena") or {})
    # The lobby's ticks read no load (no report: FakeLoad's default) and decided nothing.
    assert harness.metric("gamecluster_load_unknown_total") >= 2
    await harness.patch(
        gc_path("arena"), {"metadata": {"annotations": {names.ANNOTATION_PAUSED: None}}}
    )
    await harness.eventually(lambda: deployment(harness), what="the Deployment after unpausing")


async def test_scale_down_marks_the_least_loaded_pods_to_go_first(harness: Harness) -> None:
    harness.load.connections = 12_000
    spec = {
        "autoscaling": {
            "enabled": True,
            "minReplicas": 1,
            "maxReplicas": 10,
            "targetConnectionsPerReplica": 5000,
            "scaleDownDelaySeconds": 0,
            "behavior": {
                "scaleDown": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 1}]}
            },
        }
    }
    await harness.create_gamecluster("arena", spec)
    await harness.eventually(lambda: deployment(harness)["spec"]["replicas"] == 3, what="3 pods")
    # Play the ReplicaSet: three ready relay pods, ready for long enough to have reported.
    for pod in ("arena-relay-a", "arena-relay-b", "arena-relay-c"):
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod,
                "namespace": NAMESPACE,
                "labels": {
                    "app.kubernetes.io/instance": "arena",
                    "app.kubernetes.io/component": "relay",
                },
            },
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }
                ]
            },
        }
        await harness.request(
            "POST", f"/api/v1/namespaces/{NAMESPACE}/pods", body, "application/json"
        )
    harness.load.per_pod = {"arena-relay-a": 900, "arena-relay-b": 0, "arena-relay-c": 40}
    await harness.eventually(
        lambda: deployment(harness)["spec"]["replicas"] == 2, within=30, what="one pod less"
    )
    # The load was read for exactly the listed ready pods (their keys, no SCAN).
    assert set(harness.load.calls[-1][1]) == {"arena-relay-a", "arena-relay-b", "arena-relay-c"}
    costs = {
        pod: (harness.objects("v1/pods", pod) or {})["metadata"]["annotations"][
            names.ANNOTATION_DELETION_COST
        ]
        for pod in ("arena-relay-a", "arena-relay-b", "arena-relay-c")
    }
    assert costs == {"arena-relay-a": "900", "arena-relay-b": "0", "arena-relay-c": "40"}
    # (The ScaledDown Event is not checked here: kmock has no generateName, so kopf's second
    # Event for one object collides with the first; test_autoscaler_follows_the_load_reports
    # checks the first.)
    status = harness.gamecluster("arena")["status"]  # type: ignore[index]
    assert status["autoscaling"]["reason"] in {"ScaleDownLimitedByPolicy", "ScaleDown"}
