"""Reading a certificate for `tls.status` (no Docker)."""

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from deploy import profiles
from deploy.edge import acme, tls
from tests.certs import make_ca, make_leaf


def test_describe_a_leaf():
    ca, ca_key = make_ca("Test CA")
    cert, _ = make_leaf(ca, ca_key, "app.example.org", days=20)
    data = tls.describe(cert, '{"directory": "https://acme.test/dir"}', "")
    assert data["subject"] == "CN=app.example.org" and data["sans"] == ["app.example.org"]
    assert data["issuer"] == "CN=Test CA"
    assert 19.9 < data["days_left"] <= 20
    assert data["source"] == "ACME" and data["acme_directory"] == "https://acme.test/dir"
    assert data["renewed_on_server"] is None  # the renewer has not run yet
    failed = '{"finished": "2026-12-03T03:00:00Z", "outcome": "failed", "detail": "Failed to renew: timeout"}\n'
    assert (
        tls.describe(cert, "", "", failed)["renewed_on_server"]
        == "2026-12-03T03:00:00Z: failed (Failed to renew: timeout)"
    )


def test_describe_reports_expired_and_local_certificates():
    ca, ca_key = make_ca()
    cert, _ = make_leaf(ca, ca_key, "localhost", days=-2)
    data = tls.describe(cert, "", "localhost\n", now=datetime.now(UTC) + timedelta(days=1))
    assert (
        data["days_left"] < -2.9
        and data["source"] == "local CA (made by the edge)"
        and data["acme_directory"] is None
    )
    assert "days_left" in tls.format_status(data)


def test_the_renewal_of_a_remote_target_runs_here_against_it(tmp_path):
    from deploy import config

    settings = profiles.load(
        "development",
        root=config.project_root(),
        environ={"COLORGATE_DOCKER_HOST": "ssh://deploy@vps.example.org:2222"},
    )
    line = acme.cron_line(settings, "/opt/venv/bin/python")
    assert (
        "COLORGATE_DOCKER_HOST=ssh://deploy@vps.example.org:2222 /opt/venv/bin/python -m deploy.cli tls.renew"
        in line
    )
    local = profiles.load("development", root=config.project_root(), environ={})
    assert "COLORGATE_DOCKER_HOST" not in acme.cron_line(local, "/opt/venv/bin/python")
    assert "over SSH" in acme.schedule(settings, cron_dir=tmp_path, python="/opt/venv/bin/python")


@pytest.mark.parametrize(
    "directory, loopback",
    [
        ("https://127.0.0.1:14000/dir", True),
        ("https://localhost:14000/dir", True),
        ("https://[::1]:14000/dir", True),
        ("https://acme-v02.api.letsencrypt.org/directory", False),
        ("https://172.17.0.1:14000/dir", False),
    ],
)
def test_certbot_gets_the_hosts_network_only_for_a_directory_on_its_loopback(directory, loopback):
    settings = profiles.load("development", environ={})
    cmd = acme.certbot_cmd(settings, "renew", directory=directory)
    assert acme.on_loopback(directory) is loopback
    assert cmd[cmd.index("-T") + 1] == ("certbot-loopback" if loopback else "certbot")


@pytest.mark.parametrize(
    "names, host, ok",
    [
        (["db.example.org"], "db.example.org", True),
        (["DB.Example.org"], "db.example.org.", True),
        (["*.example.org"], "db.example.org", True),
        (["*.example.org"], "a.db.example.org", False),
        (["*.example.org"], "example.org", False),
        (["app.example.org"], "db.example.org", False),
        (["203.0.113.7"], "203.0.113.7", True),
        (["203.0.113.7"], "203.0.113.8", False),
        (["*.0.113.7"], "203.0.113.7", False),
        ([], "db.example.org", False),
    ],
)
def test_a_certificate_covers_a_host_as_a_verifying_client_sees_it(names, host, ok):
    assert tls.covers(names, host) is ok


def test_a_key_pair_is_refused_unless_a_checking_client_would_accept_it_for_the_host():
    ca, ca_key = make_ca()
    chain, key = make_leaf(ca, ca_key, "203.0.113.7", days=30)
    tls.check_pair(
        chain + ca, key, "203.0.113.7", "the relay's certificate", "COLORGATE_MOVE_RELAY_HOST"
    )
    _, other_key = make_leaf(ca, ca_key, "203.0.113.7", days=30)
    expired, expired_key = make_leaf(ca, ca_key, "203.0.113.7", days=-1)
    cases = [
        (
            (chain, other_key, "203.0.113.7"),
            "the relay's certificate: the key is not the certificate's",
        ),
        (
            (chain, key, "db.example.org"),
            "the relay's certificate is for 203.0.113.7, not db.example.org (COLORGATE_MOVE_RELAY_HOST), "
            "so a client checking it would refuse it: give a certificate for db.example.org",
        ),
        ((expired, expired_key, "203.0.113.7"), "the relay's certificate is not valid now"),
        (
            ("not a certificate", key, "203.0.113.7"),
            "the relay's certificate is not a PEM certificate chain and an unencrypted PEM key",
        ),
    ]
    for (c, k, host), message in cases:
        with pytest.raises(tls.ColorgateError) as err:
            tls.check_pair(c, k, host, "the relay's certificate", "COLORGATE_MOVE_RELAY_HOST")
        assert str(err.value).startswith(message), err.value


FAKE_CERTBOT = """#!/bin/sh
case "$FAKE" in
  renews) echo "Congratulations, all renewals succeeded:"; date +%s%N > "$CG_TLS_DIR/.changed" ;;
  due-later) echo "The following certificates are not due for renewal yet:" ;;
  fails) printf 'Attempting to renew\\nFailed to renew "colorgate": a \\\\ "quoted"\\ttab reason\\n\\n'; exit 1 ;;
esac
"""


@pytest.mark.parametrize(
    "fake, outcome, detail",
    [
        ("renews", "renewed", "Congratulations, all renewals succeeded:"),
        ("due-later", "not due", "The following certificates are not due for renewal yet:"),
        ("fails", "failed", 'Failed to renew "colorgate": a \\ "quoted"tab reason'),
    ],
)
def test_the_renewer_on_the_server_writes_each_run_as_a_history_record(
    tmp_path, fake, outcome, detail
):
    """compose/certbot/renew-loop.sh with a stand-in certbot: one JSON line a run, in the
    history's record form, whatever certbot printed."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "certbot").write_text(FAKE_CERTBOT)
    (tmp_path / "bin" / "certbot").chmod(0o755)
    script = Path(tls.__file__).resolve().parents[2] / "compose" / "certbot" / "renew-loop.sh"
    env = {
        "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
        "CG_TLS_DIR": str(tmp_path),
        "COLORGATE_RENEW_EVERY": "0.05",
        "FAKE": fake,
    }
    proc = subprocess.Popen(["sh", str(script)], env=env)
    try:
        deadline = time.monotonic() + 20
        while (
            len(
                lines := (tmp_path / "renewals.log").read_text().splitlines()
                if (tmp_path / "renewals.log").exists()
                else []
            )
            < 2
        ):
            assert time.monotonic() < deadline, "the renewer wrote no second run"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    record = json.loads(lines[0])
    assert (record["action"], record["operator"], record["outcome"], record["detail"]) == (
        "tls.renew",
        "the renewer on the server",
        outcome,
        detail,
    )
    assert {
        "id",
        "started",
        "finished",
        "duration_s",
        "from_color",
        "to_color",
        "from_version",
        "to_version",
    } <= set(record)
