"""Reading a certificate for `tls.status` (no Docker)."""

from datetime import datetime, timedelta, timezone

import pytest

from deploy import config, tls
from tests.certs import make_ca, make_leaf


def test_describe_a_leaf():
    ca, ca_key = make_ca("Test CA")
    cert, _ = make_leaf(ca, ca_key, "app.example.org", days=20)
    data = tls.describe(cert, '{"directory": "https://acme.test/dir"}', "")
    assert data["subject"] == "CN=app.example.org" and data["sans"] == ["app.example.org"]
    assert data["issuer"] == "CN=Test CA"
    assert 19.9 < data["days_left"] <= 20
    assert data["source"] == "ACME" and data["acme_directory"] == "https://acme.test/dir"


def test_describe_reports_expired_and_local_certificates():
    ca, ca_key = make_ca()
    cert, _ = make_leaf(ca, ca_key, "localhost", days=-2)
    data = tls.describe(cert, "", "localhost\n", now=datetime.now(timezone.utc) + timedelta(days=1))
    assert data["days_left"] < -2.9 and data["source"] == "local CA (made by the edge)" and data["acme_directory"] is None
    assert "days_left" in tls.format_status(data)


def test_the_renewal_of_a_remote_target_runs_here_against_it(tmp_path):
    from deploy import config

    settings = config.load("development", root=config.project_root(),
                           environ={"COLORGATE_DOCKER_HOST": "ssh://deploy@vps.example.org:2222"})
    line = tls.cron_line(settings, "/opt/venv/bin/python")
    assert "COLORGATE_DOCKER_HOST=ssh://deploy@vps.example.org:2222 /opt/venv/bin/python -m deploy.cli tls.renew" in line
    local = config.load("development", root=config.project_root(), environ={})
    assert "COLORGATE_DOCKER_HOST" not in tls.cron_line(local, "/opt/venv/bin/python")
    assert "over SSH" in tls.schedule(settings, cron_dir=tmp_path, python="/opt/venv/bin/python")


@pytest.mark.parametrize("directory, loopback", [
    ("https://127.0.0.1:14000/dir", True), ("https://localhost:14000/dir", True), ("https://[::1]:14000/dir", True),
    ("https://acme-v02.api.letsencrypt.org/directory", False), ("https://172.17.0.1:14000/dir", False),
])
def test_certbot_gets_the_hosts_network_only_for_a_directory_on_its_loopback(directory, loopback):
    settings = config.load("development", environ={})
    cmd = tls.certbot_cmd(settings, "renew", directory=directory)
    assert tls.on_loopback(directory) is loopback
    assert cmd[cmd.index("-T") + 1] == ("certbot-loopback" if loopback else "certbot")


@pytest.mark.parametrize("names, host, ok", [
    (["db.example.org"], "db.example.org", True), (["DB.Example.org"], "db.example.org.", True),
    (["*.example.org"], "db.example.org", True), (["*.example.org"], "a.db.example.org", False),
    (["*.example.org"], "example.org", False), (["app.example.org"], "db.example.org", False),
    (["203.0.113.7"], "203.0.113.7", True), (["203.0.113.7"], "203.0.113.8", False),
    (["*.0.113.7"], "203.0.113.7", False), ([], "db.example.org", False),
])
def test_a_certificate_covers_a_host_as_a_verifying_client_sees_it(names, host, ok):
    assert tls.covers(names, host) is ok


def test_a_key_pair_is_refused_unless_a_checking_client_would_accept_it_for_the_host():
    ca, ca_key = make_ca()
    chain, key = make_leaf(ca, ca_key, "203.0.113.7", days=30)
    tls.check_pair(chain + ca, key, "203.0.113.7", "the relay's certificate", "COLORGATE_MOVE_RELAY_HOST")
    _, other_key = make_leaf(ca, ca_key, "203.0.113.7", days=30)
    expired, expired_key = make_leaf(ca, ca_key, "203.0.113.7", days=-1)
    cases = [
        ((chain, other_key, "203.0.113.7"), "the relay's certificate: the key is not the certificate's"),
        ((chain, key, "db.example.org"), "the relay's certificate is for 203.0.113.7, not db.example.org (COLORGATE_MOVE_RELAY_HOST), "
                                         "so a client checking it would refuse it: give a certificate for db.example.org"),
        ((expired, expired_key, "203.0.113.7"), "the relay's certificate is not valid now"),
        (("not a certificate", key, "203.0.113.7"), "the relay's certificate is not a PEM certificate chain and an unencrypted PEM key"),
    ]
    for (c, k, host), message in cases:
        with pytest.raises(tls.ColorgateError) as err:
            tls.check_pair(c, k, host, "the relay's certificate", "COLORGATE_MOVE_RELAY_HOST")
        assert str(err.value).startswith(message), err.value
