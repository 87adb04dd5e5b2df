"""The Redis URL forms (brokers/redis/topology.py): one server, Sentinel, Cluster; and the broker's wait= option."""

from __future__ import annotations

import pytest

from conveyor.brokers.redis.broker import _confirm_option
from conveyor.brokers.redis.topology import parse, take_params
from conveyor.errors import ConfigurationError


def test_a_plain_url_is_one_server_passed_to_redis_py_unchanged() -> None:
    topology = parse("redis://:pw@h:6380/2")
    assert (topology.kind, topology.url) == ("single", "redis://:pw@h:6380/2")


def test_a_sentinel_url_names_its_sentinels_service_database_and_passwords() -> None:
    topology = parse("redis+sentinel://user:p%40ss@s1:26380,s2,s3:26381/shop?db=3&sentinel_password=sp")
    assert topology.kind == "sentinel"
    assert topology.hosts == (("s1", 26380), ("s2", 26379), ("s3", 26381))
    assert topology.service == "shop"
    assert topology.options == {"username": "user", "password": "p@ss", "db": 3}
    assert topology.sentinel_options == {"password": "sp"}
    assert parse("redis+sentinel://s1/shop/4").options == {"db": 4}  # the /SERVICE/DB form


def test_a_cluster_url_names_its_startup_nodes() -> None:
    topology = parse("redis+cluster://:pw@n1:7000,n2:7001")
    assert (topology.kind, topology.hosts, topology.options) == (
        "cluster",
        (("n1", 7000), ("n2", 7001)),
        {"password": "pw"},
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://s1:26379",  # no service
        "redis+sentinel://s1:26379/svc?timeout=3",  # unknown parameter
        "redis+cluster://n1:7000/2",  # Cluster has database 0 only
        "redis+cluster://n1:7000?db=1",
        "rediss+sentinel://s1/svc",  # TLS not offered
        "redis+cluster://n1:port",
    ],
)
def test_a_bad_ha_url_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        parse(url)


def test_wait_takes_replicas_and_a_timeout_off_the_url() -> None:
    assert _confirm_option("redis://h/0?wait=1&wait_timeout=0.5&x=1") == ("redis://h/0?x=1", (1, 0.5))
    assert _confirm_option("redis://h/0?wait=2") == ("redis://h/0", (2, 1.0))
    assert _confirm_option("unix:///tmp/r.sock?wait=0") == ("unix:///tmp/r.sock", None)
    with pytest.raises(ConfigurationError):
        _confirm_option("redis://h/0?wait=one")
    with pytest.raises(ConfigurationError):
        _confirm_option("redis://h/0?wait=1&wait_timeout=0")
    assert take_params("redis://h/0?a=1&b=2", ("a",)) == ("redis://h/0?b=2", {"a": "1"})


def test_wait_is_refused_on_cluster_before_any_connection() -> None:
    from conveyor.brokers import from_url

    with pytest.raises(ConfigurationError, match="not offered on Redis Cluster"):
        from_url("redis+cluster://127.0.0.1:1?wait=1")
