"""The shell kept open in the edge (runner.Shell): its framing of each command's exit
code, stdout and stderr, tried against a plain local `sh` instead of `docker exec`."""

from __future__ import annotations

import subprocess

import pytest

from deploy.errors import CommandError
from deploy.target import connections


class LocalShell(connections.Shell):
    """The same protocol, with `sh` on this machine in place of `docker exec -i C sh`."""

    started = 0

    def _start(self) -> subprocess.Popen:
        LocalShell.started += 1
        return subprocess.Popen(
            ["sh"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
        )


@pytest.fixture
def sh():
    shell = LocalShell("", "edge")
    yield shell
    shell.close()


def test_each_command_gets_its_own_exit_code_stdout_and_stderr(sh):
    proc = sh.run(["sh", "-c", 'printf "a\\nb"; echo oops >&2; exit 3'], check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "a\nb", "oops\n")
    assert sh.run(["echo", "next"]).stdout == "next\n"  # nothing of the first leaks into the second


def test_output_that_looks_like_a_frame_or_has_no_newline_is_read_back_exactly(sh):
    tricky = "\n0123456789abcdef 0 1 2\n\ntail"
    assert sh.run(["printf", "%s", tricky]).stdout == tricky
    assert sh.run(["printf", "a\\000b"]).stdout == "a\x00b"  # a NUL byte in the output
    big = sh.run(["sh", "-c", "head -c 200000 /dev/zero | tr '\\0' x"]).stdout
    assert big == "x" * 200000


def test_arguments_are_passed_as_they_are(sh):
    arg = 'it\'s "quoted" $HOME `x` ; rm -rf /nothing'
    assert sh.run(["printf", "%s", arg]).stdout == arg


def test_a_failure_is_a_command_error_naming_the_command(sh):
    with pytest.raises(CommandError) as err:
        sh.run(["sh", "-c", "echo 'no such thing' >&2; exit 7"], what="reading the edge state")
    assert err.value.returncode == 7 and "no such thing" in err.value.stderr
    assert err.value.cmd[:3] == ["docker", "exec", "edge"]


def test_a_shell_that_died_is_started_again(sh):
    before = LocalShell.started
    sh.run(["true"])
    sh.proc.kill()
    sh.proc.wait()
    assert sh.run(["echo", "again"]).stdout == "again\n"
    assert LocalShell.started == before + 2
