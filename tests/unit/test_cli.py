"""The CLI's bad-input paths: one line naming the problem and the fix, the exit code
that says which kind of problem it is (2 bad input, 6 unreachable), no traceback. None
of these reaches a Docker engine."""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import errors

ROOT = Path(__file__).resolve().parents[2]
INVOKE = str(Path(sys.executable).with_name("invoke"))


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("COLORGATE_", "POSTGRES_"))}
    return subprocess.run(
        [INVOKE, *args], env={**full, **env}, capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def at_once(*calls):
    """Run independent CLI calls (each a zero-argument function) side by side: each is
    a process of its own that mostly starts Python, so the test waits for the slowest."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return [f.result() for f in [pool.submit(call) for call in calls]]


def one_line_error(proc: subprocess.CompletedProcess, code: int = errors.BAD_INPUT) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# The one-call cases below, started side by side when the first of them runs (each is
# a process that mostly starts Python): name -> the call's arguments and environment.
STAGING = {
    "COLORGATE_DOMAIN": "app.example.org",
    "POSTGRES_PASSWORD": "a-real-secret-1",
    "PATH": "/nonexistent",
}
EARLY = {
    "unknown profile": (("up", "--profile", "prod"), {}),
    "placeholder domain": (("up", "--profile", "staging"), {}),
    "placeholder password": (
        ("status", "--profile", "staging"),
        {"COLORGATE_DOMAIN": "app.example.org"},
    ),
    "bad port": (("up",), {"COLORGATE_HTTPS_PORT": "99999"}),
    "engine unreachable": (
        ("status",),
        {"COLORGATE_DOCKER_HOST": "unix:///nonexistent/colorgate-test.sock"},
    ),
    "no docker CLI": (("up",), {"PATH": "/nonexistent-colorgate-bin"}),
    "debug": (("up",), {"COLORGATE_INITIAL_COLOR": "purple", "COLORGATE_DEBUG": "1"}),
    "restore on staging": (
        ("db.restore", "20260101T000000000000Z", "--profile", "staging"),
        STAGING,
    ),
    "down --volumes on production": (("down", "--volumes", "--profile", "production"), STAGING),
    "fewer backups on staging": (("db.backup", "--keep", "2", "--profile", "staging"), STAGING),
}


@pytest.fixture(scope="module")
def early():
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        yield {name: pool.submit(cli, *args, **env) for name, (args, env) in EARLY.items()}


def test_unknown_profile(early):
    line = one_line_error(early["unknown profile"].result())
    assert line == "colorgate: unknown profile 'prod': use one of development, staging, production"


def test_placeholders_in_staging_stop_before_anything_starts(early):
    line = one_line_error(early["placeholder domain"].result())
    assert line.startswith("colorgate: COLORGATE_DOMAIN in .env.staging is a placeholder")


def test_placeholder_password_in_staging_is_named_but_not_shown(early):
    line = one_line_error(early["placeholder password"].result())
    assert line.startswith(
        "colorgate: POSTGRES_PASSWORD in .env.staging is a placeholder: set a real value"
    )
    assert "change-me" not in line


def test_bad_port_from_the_environment(early):
    line = one_line_error(early["bad port"].result())
    assert (
        line
        == "colorgate: COLORGATE_HTTPS_PORT '99999' in the environment should be a port number from 1 to 65535"
    )


def test_docker_engine_not_reachable(early):
    line = one_line_error(early["engine unreachable"].result(), errors.UNREACHABLE)
    assert line.startswith(
        "colorgate: the Docker engine at unix:///nonexistent/colorgate-test.sock is not reachable"
    )
    assert line.endswith("start it (`systemctl start docker`) or fix COLORGATE_DOCKER_HOST")


def test_docker_cli_missing(early):
    line = one_line_error(early["no docker CLI"].result(), errors.UNREACHABLE)
    assert (
        line
        == "colorgate: the docker CLI is not installed: install Docker Engine (e.g. `apt-get install docker.io`) and retry"
    )


def test_debug_mode_shows_the_traceback(early):
    proc = early["debug"].result()
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_restore_over_staging_needs_yes_before_touching_anything(early):
    line = one_line_error(early["restore on staging"].result())
    assert (
        line
        == "colorgate: restoring over the staging database needs --yes (a fresh backup is taken first)"
    )


def test_down_with_volumes_on_production_needs_yes_before_touching_anything(early):
    line = one_line_error(early["down --volumes on production"].result())
    assert line == (
        "colorgate: `down --volumes` deletes the production database, its backups on the host, its certificates and its history: "
        "add --yes (first, `invoke db.backup --copy` keeps a backup off the host)"
    )


def test_keeping_fewer_backups_than_the_setting_on_staging_needs_yes_before_touching_anything(
    early,
):
    line = one_line_error(early["fewer backups on staging"].result())
    assert (
        line
        == "colorgate: --keep 2 deletes staging backups that COLORGATE_BACKUP_KEEP (7) keeps: add --yes"
    )


def test_every_task_that_acts_on_a_target_takes_host():
    import tasks

    for name in tasks.ns.task_names:
        # its own local stack; a file written here; secrets read here
        if name not in (
            "bench",
            "init",
            "secrets.check",
        ):
            assert "host" in tasks.ns[name].help, f"invoke {name} has no --host"


def test_host_option_wins_and_is_named_in_errors():
    named, unreachable = at_once(
        lambda: cli("status", "--host", "myhost", COLORGATE_DOCKER_HOST="ssh://a@b"),
        lambda: cli("status", "--host", "unix:///nonexistent/cg.sock"),
    )
    line = one_line_error(named)
    assert (
        line
        == "colorgate: COLORGATE_DOCKER_HOST 'myhost' in --host should be empty (local engine) or a URL like ssh://user@host"
    )
    line = one_line_error(unreachable, errors.UNREACHABLE)
    assert line.startswith(
        "colorgate: the Docker engine at unix:///nonexistent/cg.sock is not reachable"
    )


@pytest.mark.parametrize(
    "stderr, expected",
    [
        (
            "ssh: connect to host 10.1.2.3 port 22: Connection refused",
            "cannot reach 10.1.2.3 over SSH (connection refused)",
        ),
        ("ssh: Could not resolve hostname nohost: Name or service not known", "cannot reach"),
        (
            "deploy@10.1.2.3: Permission denied (publickey).",
            "10.1.2.3 refused the SSH login of deploy@10.1.2.3",
        ),
        (
            "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\nHost key verification failed.",
            "does not match your known_hosts",
        ),
        (
            "No ED25519 host key is known for 10.1.2.3 and you have requested strict checking.\nHost key verification failed.",
            "is not known here",
        ),
        (
            "bash: line 1: docker: command not found",
            "10.1.2.3 has no Docker: set it up with compose/scripts/server-setup.sh",
        ),
        (
            "permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock",
            "add it to the docker group",
        ),
    ],
)
def test_ssh_engine_errors_name_the_cause(stderr, expected):
    from deploy.bootstrap import explain_engine_error

    message = explain_engine_error(
        "ssh://deploy@10.1.2.3", "error during connect: ... stderr=" + stderr
    )
    assert expected in message and "\n" not in message


def test_render_prints_the_compose_file_colorgate_runs_without_secrets():
    proc = cli("render", POSTGRES_PASSWORD="Very-Secret-Render-1")
    assert proc.returncode == 0, proc.stderr
    assert (
        "backend_green:" in proc.stdout
        and "frontend_blue:" in proc.stdout
        and "edge:" in proc.stdout
    )
    assert (
        "Very-Secret-Render-1" not in proc.stdout
        and "DATABASE_URL_FILE: /run/colorgate-secrets/database_url" in proc.stdout
    )
    routes = cli("render", "--routes")
    assert "proxy_pass http://backend_$cg_color:8000;" in routes.stdout


def test_a_bad_contract_stops_every_task_in_one_line(tmp_path):
    app = tmp_path / "compose.yaml"
    app.write_text(
        "x-colorgate:\n  colored: [web]\n  routes: [{path: /, to: web:80}]\n  health: {web: healthz}\n"
        "services:\n  web: {build: .}\n"
    )
    *each, missing = at_once(
        *(
            lambda task=task: cli(task, COLORGATE_APP=str(app))
            for task in ("up", "deploy", "status", "render")
        ),
        lambda: cli("up", COLORGATE_APP=str(tmp_path / "nope")),
    )
    for proc in each:
        assert (
            one_line_error(proc)
            == "colorgate: x-colorgate.health.web.path: must start with / (got 'healthz')"
        )
    line = one_line_error(missing)
    assert line.startswith("colorgate: the app's compose file ") and line.endswith(
        "does not exist: set COLORGATE_APP to your compose file"
    )


def test_init_writes_a_draft_and_refuses_unreadable_files(tmp_path):
    (tmp_path / "docker-compose.yml").write_text(
        "services:\n  web:\n    build: .\n    ports: ['80:8000']\n"
    )
    proc = cli("init", "--compose", str(tmp_path))
    assert (
        proc.returncode == 0 and "wrote " in proc.stdout and "the contract is valid" in proc.stdout
    )
    # what it will run without
    assert "!! services.web.ports: left out: the edge routes to it" in proc.stderr
    assert (tmp_path / "docker-compose.colorgate.yml").is_file()
    line = one_line_error(cli("init", "--compose", str(tmp_path / "missing.yml")))
    assert "does not exist" in line


def test_switch_without_a_color_is_one_line_and_help_is_help():
    assert (
        one_line_error(cli("switch"))
        == "colorgate: switch needs a color: invoke switch --to blue (or green)"
    )
    helped = cli("switch", "--help")
    assert helped.returncode == 0 and "Move traffic to an already running color" in helped.stdout


def test_help_is_help_for_every_task_even_where_it_takes_an_argument():
    """`-h` is no short flag of an option (it meant --host), and `--help` in the place of a
    positional argument is not taken as its value (a service, a backup): nothing is reached."""
    asked = [
        ("logs", "--help"),
        ("db.restore", "--help"),
        ("db.verify", "-h"),
        ("scale", "--help"),
        ("deploy", "-h"),
        ("exec", "--help"),
    ]
    for args, proc in zip(
        asked,
        at_once(
            *(
                lambda args=args: cli(*args, COLORGATE_DOCKER_HOST="unix:///nonexistent/cg.sock")
                for args in asked
            )
        ),
        strict=True,
    ):
        assert proc.returncode == 0 and "Docstring:" in proc.stdout, (
            args,
            proc.stdout,
            proc.stderr,
        )
        # each option's help too
        assert re.search(r"--host=STRING\s+the Docker host to act on", proc.stdout), proc.stdout
        assert proc.stderr == "", args


def test_the_colorgate_command_runs_the_same_tasks_as_invoke():
    listed, module = at_once(
        lambda: subprocess.run(
            [str(Path(INVOKE).with_name("colorgate")), "--list"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        ),
        # as the renewal's cron line runs it, with only the interpreter's path
        lambda: subprocess.run(
            [sys.executable, "-m", "deploy.cli", "--list"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        ),
    )
    assert listed.returncode == 0
    import tasks

    assert {
        line.split()[0]
        for line in listed.stdout.splitlines()[2:]
        if line.startswith("  ") and not line.startswith("   ")
    } == set(tasks.ns.task_names)
    assert module.returncode == 0 and module.stdout == listed.stdout


def test_every_tasks_line_in_the_list_is_a_whole_sentence():
    """`--list` shows a docstring's first line: it is a sentence of its own (ends with a
    full stop), the detail in a paragraph after it, so no line stops mid-sentence."""
    import tasks

    def every(collection, prefix=""):
        for name, task in collection.tasks.items():
            yield prefix + name, task
        for name, sub in collection.collections.items():
            yield from every(sub, f"{prefix}{name}.")

    cut = {
        name: first
        for name, task in every(tasks.ns)
        if not (first := (task.__doc__ or "").strip().splitlines()[0]).endswith((".", ".)"))
    }
    assert cut == {}, cut


def test_a_bad_ssh_port_for_server_setup_is_one_line(tmp_path):
    key = tmp_path / "k.pub"
    key.write_text(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGNvbG9yZ2F0ZS10ZXN0LWtleS1ub3QtcmVhbC0xMjM0NTY x@y\n"
    )
    line = one_line_error(
        cli(
            "server.setup",
            "--host",
            "ssh://root@192.0.2.1",
            "--key-file",
            str(key),
            "--ssh-port",
            "70000",
        )
    )
    assert line == "colorgate: --ssh-port '70000' should be a port number from 1 to 65535"


def test_the_exit_codes_are_the_readmes_and_usage_errors_are_bad_input():
    """The README's table lists every code errors.py defines, with the same meaning each."""
    table = dict(re.findall(r"^\| (\d) \| ([a-z`]+)", (ROOT / "README.md").read_text(), re.M))
    defined = {
        str(value): name
        for name, value in vars(errors).items()
        if name.isupper() and isinstance(value, int)
    }
    assert set(table) == set(defined) | {"0"}, (table, defined)
    for code, name in defined.items():
        assert name.lower().split("_")[0] == table[code].strip("`"), (code, name, table[code])
    colorgate = str(Path(INVOKE).with_name("colorgate"))
    usage = (["deploy", "--no-such-option"], ["no-such-task"], ["exec"])
    for args, proc in zip(
        usage,
        at_once(
            *(
                lambda args=args: subprocess.run(
                    [colorgate, *args], capture_output=True, text=True, timeout=60, cwd=ROOT
                )
                for args in usage
            )
        ),
        strict=True,
    ):
        assert proc.returncode == errors.BAD_INPUT and proc.stderr.startswith("colorgate: "), (
            args,
            proc.returncode,
            proc.stderr,
        )


@pytest.mark.parametrize(
    "env, coloured",
    [
        ({"FORCE_COLOR": "1"}, True),
        ({"FORCE_COLOR": "1", "NO_COLOR": "1"}, False),
        ({"FORCE_COLOR": "1", "TERM": "dumb"}, False),
        ({}, False),
    ],
)
def test_progress_lines_are_coloured_on_a_terminal_and_plain_when_piped_or_with_no_color(
    env, coloured
):
    """(FORCE_COLOR stands in for a terminal; without it stderr here is a pipe.)"""
    base = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "TERM")}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from deploy.target import runner; runner.say('ok built [b]x[/b] (1.0s)'); runner.say('a line')",
        ],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    if coloured:
        assert proc.stderr == "\x1b[32mok \x1b[0mbuilt [b]x[/b] (1.0s)\na line\n", repr(proc.stderr)
    else:
        assert proc.stderr == "ok built [b]x[/b] (1.0s)\na line\n", repr(proc.stderr)


def test_shell_completion_completes_tasks_and_their_options():
    """The script `colorgate --print-completion-script bash` prints, sourced by bash."""
    script = (
        'source <(colorgate --print-completion-script bash); COMP_WORDS=(colorgate "$@"); '
        '_complete_colorgate colorgate "${@: -1}"; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    path = f"{Path(INVOKE).parent}:{os.environ['PATH']}"

    def complete(*words: str) -> list[str]:
        proc = subprocess.run(
            ["bash", "-c", script, "bash", *words],
            env={**os.environ, "PATH": path},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr
        return sorted(proc.stdout.split())

    tasks, options = at_once(lambda: complete("db.ba"), lambda: complete("deploy", "--k"))
    assert tasks == ["db.backup", "db.backups"] and options == ["--keep-rejected"]


def test_a_number_option_given_text_or_out_of_range_is_one_line_before_anything_runs():
    """No engine is asked: the value is checked first (here no Docker target is set up)."""
    assert (
        one_line_error(cli("history", "--limit", "abc"))
        == "colorgate: --limit takes a whole number from 1 to 100000, got 'abc': e.g. --limit 20"
    )
    from deploy.cli.common import whole

    assert whole(None, "--keep", 7, 1, 1000) == 7 and whole("12", "--keep", 7, 1, 1000) == 12
    for bad in ("-1", "0", "1001", "abc", "2.5", ""):
        with pytest.raises(
            errors.BadInput, match=r"^--keep takes a whole number from 1 to 1000, got "
        ):
            whole(bad, "--keep", 7, 1, 1000)
