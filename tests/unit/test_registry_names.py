"""Which image names the swarm backend's registry pushes, and which it leaves to the
registry they name (containers/registry.py)."""

import pytest

from clipper_core.containers.registry import Registry, _has_registry_host
from clipper_core.errors import ConfigError


@pytest.mark.parametrize("image, named", [
    ("clipper-files:0123abcd", False),
    ("myorg/model:1", False),             # a Docker Hub style path is not a registry
    ("model", False),
    ("sha256:" + "a" * 64, False),
    ("localhost/model:1", True),
    ("registry.example.com/team/model:2", True),
    ("127.0.0.1:5000/clipper-files@sha256:" + "b" * 64, True),
    ("10.0.0.5:5000/model", True),
])
def test_images_that_name_a_registry_are_left_as_they_are(image, named):
    assert _has_registry_host(image) is named
    if named:  # returned before any engine call
        assert Registry(5000, "/nonexistent").publish(None, image) == image


def test_a_registry_without_the_debian_package_is_a_config_error_naming_it(monkeypatch,
                                                                           tmp_path):
    import clipper_core.containers.registry as reg

    monkeypatch.setattr(reg, "BINARY", "no-such-docker-registry-binary")
    r = Registry(1, str(tmp_path))  # port 1: nothing answers there
    with pytest.raises(ConfigError, match="apt-get install docker-registry"):
        r.start()


def test_registry_port_is_for_the_swarm_backend_and_a_real_port(tmp_path):
    from clipper_core.config import ServerConfig

    assert ServerConfig(state_dir=str(tmp_path), backend="swarm",
                        registry_port=5000).registry_port == 5000
    for kw, expected in [(dict(backend="docker", registry_port=5000), "swarm backend"),
                         (dict(backend="swarm", registry_port=0), "1-65535"),
                         (dict(backend="swarm", registry_port=70000), "0-65535")]:
        with pytest.raises(ConfigError, match=expected):
            ServerConfig(state_dir=str(tmp_path), **kw)
