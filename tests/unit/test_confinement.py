"""How a container is confined, read from captured `docker inspect` output and a Swarm
service's spec (no Docker), and what the hardening gates count against it."""

from __future__ import annotations

from deploy.target import confinement

SECRET = "pw-of-the-db-1"  # a value of the settings (runner.add_secret: then masked everywhere)


def setup_module():
    from deploy.target import runner

    runner.add_secret(SECRET)


LOCKED = {
    "Config": {"User": "10001:10001", "Env": ["PATH=/usr/bin", "COLORGATE_COLOR=blue"]},
    "HostConfig": {
        "CapAdd": None,
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges:true"],
        "ReadonlyRootfs": True,
    },
}


def test_a_locked_down_container_has_nothing_to_count():
    found = confinement.of_container("api_blue", LOCKED)
    assert found == confinement.Confinement(
        "api_blue", "10001:10001", (), ("ALL",), ("no-new-privileges:true",), True, ()
    )
    assert found.problems() == []


def test_what_a_container_as_its_image_made_it_may_gain_is_each_named():
    loose = {
        "Config": {"User": "", "Env": [f"DATABASE_URL=postgresql://app:{SECRET}@db/app"]},
        "HostConfig": {
            "CapAdd": ["CAP_NET_RAW"],
            "CapDrop": None,
            "SecurityOpt": None,
            "ReadonlyRootfs": False,
        },
    }
    found = confinement.of_container("worker_green", loose)
    assert found.cap_add == ("NET_RAW",) and found.secret_env == ("DATABASE_URL",) and found.as_root
    assert found.problems() == [
        "capabilities added: NET_RAW",
        "capabilities not dropped (cap_drop: [ALL])",
        "no-new-privileges off",
        "runs as root",
        "root filesystem writable",
    ]


def test_the_last_no_new_privileges_option_wins_as_the_engine_applies_it():
    both = {
        **LOCKED,
        "HostConfig": {
            **LOCKED["HostConfig"],
            "SecurityOpt": ["no-new-privileges:true", "no-new-privileges=false"],
        },
    }
    assert not confinement.of_container("api_blue", both).no_new_privileges


def test_a_swarm_service_is_judged_by_its_spec_and_the_engines_setting():
    spec = {
        "Image": "registry.example/shop/api:v2@sha256:abc",
        "CapabilityDrop": ["CAP_ALL"],
        "ReadOnly": True,
        "Env": ["COLORGATE_COLOR=green"],
    }
    found = confinement.of_service("api_green", spec, "10001", locked=True)
    assert found.problems() == [] and found.cap_drop == ("ALL",)
    unlocked = confinement.of_service("api_green", spec, "", locked=False)
    assert unlocked.problems() == ["no-new-privileges off", "runs as root"]


def test_capabilities_are_named_as_compose_files_name_them():
    assert [confinement.capability(c) for c in ("CAP_NET_RAW", "net_admin", "SYS_TIME")] == [
        "NET_RAW",
        "NET_ADMIN",
        "SYS_TIME",
    ]
