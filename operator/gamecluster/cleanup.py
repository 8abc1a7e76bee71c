"""``python -m gamecluster.cleanup NAMESPACE NAME [NAME...]``: delete GameClusters and wait
until they are gone.

The chart runs it as a ``pre-delete`` hook for its demo GameCluster. Helm deletes the
operator together with the release's other objects, and kopf puts a finalizer on every
GameCluster (it does so for any resource with a timer, here the operator's ``tick``): with the
operator gone, nobody removes it, and the GameCluster stays Terminating forever. Run first,
while the operator still runs, the deletion completes as usual.

Best effort: a GameCluster still there at the deadline is reported (with what to do) and the
exit status is still 0, so that ``helm uninstall`` goes on rather than failing half-way.
"""

import argparse
import sys
import time
from collections.abc import Sequence

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from gamecluster import names

POLL_SECONDS = 1.0
"""How often the GameClusters are looked up while waiting (a few GETs a second at most)."""


def _api() -> k8s.CustomObjectsApi:
    try:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()  # type: ignore[no-untyped-call]
    return k8s.CustomObjectsApi()


def _exists(api: k8s.CustomObjectsApi, namespace: str, name: str) -> bool:
    try:
        api.get_namespaced_custom_object(names.GROUP, names.VERSION, namespace, names.PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def delete_and_wait(
    api: k8s.CustomObjectsApi, namespace: str, gameclusters: Sequence[str], timeout: float
) -> list[str]:
    """Delete each GameCluster (absent ones are fine); the names still there at the deadline."""
    for name in gameclusters:
        try:
            api.delete_namespaced_custom_object(
                names.GROUP, names.VERSION, namespace, names.PLURAL, name
            )
            print(f"deleting GameCluster {namespace}/{name}", flush=True)
        except ApiException as exc:
            if exc.status != 404:
                raise
    deadline = time.monotonic() + timeout
    left = [name for name in gameclusters if _exists(api, namespace, name)]
    while left and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        left = [name for name in left if _exists(api, namespace, name)]
    return left


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gamecluster.cleanup",
        description="Delete GameClusters while the operator still runs, and wait until they "
        "are gone (the chart's pre-delete hook for its demo GameCluster).",
    )
    parser.add_argument("namespace")
    parser.add_argument("names", nargs="+", metavar="name")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds (default 120)")
    args = parser.parse_args(argv)
    left = delete_and_wait(_api(), args.namespace, args.names, args.timeout)
    for name in left:
        print(
            f"GameCluster {args.namespace}/{name} is still there after {args.timeout:.0f} s: "
            "is the operator running? Once it is gone for good, remove the finalizer: "
            f"kubectl patch gc {name} -n {args.namespace} --type=merge "
            '-p \'{"metadata":{"finalizers":null}}\'',
            file=sys.stderr,
            flush=True,
        )
    print("done" if not left else "done, with GameClusters left (above)", flush=True)


if __name__ == "__main__":
    main()
