"""The project image, built from the repository's Dockerfile with buildah (issue 11).

A mistake in the Dockerfile (a missing COPY, a wrong venv path, the user) fails here: the build
itself, the image's non-root user, and both entrypoints inside it.
"""

from __future__ import annotations

import pytest

from . import images

pytestmark = pytest.mark.pods


@pytest.mark.timeout(2400)  # first session: the Debian base (~2.5 min) + the build (~4 min)
def test_dockerfile_builds_and_runs_as_uid_10001(
    buildah: images.Buildah, project_image: str
) -> None:
    assert images.image_user(buildah, project_image) == "10001:10001"
    assert images.run_in_image(buildah, project_image, "id", "-u") == "10001"
    assert images.run_in_image(buildah, project_image, "id", "-g") == "10001"
    # The default command is the relay; the venv's python is the base image's 3.11.
    version = images.run_in_image(buildah, project_image, "python", "--version")
    assert version.startswith("Python 3.11."), version


@pytest.mark.timeout(600)
def test_both_entrypoints_run_in_the_image(buildah: images.Buildah, project_image: str) -> None:
    relay_help = images.run_in_image(buildah, project_image, "relay", "--help")
    # The compiled core is in the image (else the relay would run its pure-Python path).
    core = images.run_in_image(
        buildah, project_image, "python", "-c", "import gamecluster_core; print('core')"
    )
    assert core == "core", core
    assert "serve" in relay_help, relay_help
    operator_help = images.run_in_image(buildah, project_image, "gamecluster-operator", "--help")
    assert "usage" in operator_help.lower(), operator_help
