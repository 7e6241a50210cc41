"""Settings validation: every bad input stops with one line naming key, file and fix."""

from pathlib import Path

import pytest

from deploy import config, keys, profiles, urls
from deploy.errors import ConfigError
from deploy.target import runner

GOOD = """\
COLORGATE_HTTP_PORT=8080
COLORGATE_HTTPS_PORT=8443
POSTGRES_DB=app
POSTGRES_USER=app
POSTGRES_PASSWORD=s3cret-value-42
"""


def write(root: Path, name: str, text: str) -> None:
    (root / name).write_text(text)


def load(root: Path, profile: str = "development", environ=None):
    return profiles.load(profile, root=root, environ=environ or {})


def test_good_profile_loads_with_defaults(tmp_path):
    write(tmp_path, ".env.development", GOOD)
    s = load(tmp_path)
    assert (s.http_port, s.https_port, s.bind, s.domain, s.initial_color) == (
        8080,
        8443,
        "127.0.0.1",
        "localhost",
        "blue",
    )
    assert s.https_url == "https://localhost:8443"
    assert s.sources["POSTGRES_USER"] == ".env.development"


def test_the_project_and_image_names_default_to_the_apps_name(tmp_path):
    """Two apps on one engine never share a project (its volumes), nor image names."""
    write(tmp_path, ".env.development", GOOD)
    s = load(tmp_path)
    # the sample's directory
    assert (s.project, s.image_prefix) == (
        "spa-api-postgres",
        "spa-api-postgres/",
    )
    app = tmp_path / "My_Shop.v2"
    app.mkdir()
    compose = (
        config.project_root() / "examples" / "static-site" / "docker-compose.yml"
    ).read_text()
    (app / "compose.yaml").write_text(compose)
    # as compose makes a project name
    assert load(tmp_path, environ={"COLORGATE_APP": str(app)}).project == "my_shopv2"
    (app / "compose.yaml").write_text("name: shop\n" + compose)
    named = load(tmp_path, environ={"COLORGATE_APP": str(app)})
    assert (named.project, named.image_prefix) == ("shop", "shop/")
    given = load(
        tmp_path,
        environ={
            "COLORGATE_APP": str(app),
            "COLORGATE_PROJECT": "shop-eu",
            "COLORGATE_IMAGE_PREFIX": "acme/",
        },
    )
    assert (given.project, given.image_prefix) == ("shop-eu", "acme/")


def test_local_file_then_environment_override(tmp_path):
    write(tmp_path, ".env.development", GOOD)
    write(
        tmp_path, ".env.development.local", "COLORGATE_HTTPS_PORT=9443\nCOLORGATE_DOMAIN=app.test\n"
    )
    s = load(tmp_path, environ={"COLORGATE_HTTPS_PORT": "10443"})
    assert s.https_port == 10443 and s.domain == "app.test"
    assert s.sources["COLORGATE_HTTPS_PORT"] == "the environment"
    assert s.sources["COLORGATE_DOMAIN"] == ".env.development.local"


def test_missing_required_key_names_key_and_file(tmp_path):
    write(
        tmp_path,
        ".env.staging",
        GOOD.replace("POSTGRES_PASSWORD=s3cret-value-42\n", "COLORGATE_DOMAIN=app.example.org\n"),
    )
    with pytest.raises(
        ConfigError,
        match=r"^POSTGRES_PASSWORD is missing: the app's database 'postgres' \(x-colorgate.database\) needs it; set it in \.env\.staging\.local",
    ):
        load(tmp_path, "staging")


def test_placeholder_secret_refused_in_staging_without_showing_it(tmp_path):
    write(
        tmp_path,
        ".env.staging",
        GOOD.replace("s3cret-value-42", "change-me") + "COLORGATE_DOMAIN=app.example.org\n",
    )
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "staging")
    message = str(err.value)
    assert message.startswith("POSTGRES_PASSWORD in .env.staging is a placeholder")
    assert ".env.staging.local" in message and "change-me" not in message


def test_placeholder_domain_refused_in_production(tmp_path):
    write(tmp_path, ".env.production", GOOD + "COLORGATE_DOMAIN=change-me.example.com\n")
    with pytest.raises(
        ConfigError,
        match=r"COLORGATE_DOMAIN in \.env\.production is a placeholder \('change-me\.example\.com'\)",
    ):
        load(tmp_path, "production")


def test_placeholder_allowed_in_development(tmp_path):
    write(tmp_path, ".env.development", GOOD.replace("s3cret-value-42", "change-me"))
    assert load(tmp_path).postgres_password == "change-me"


def test_unknown_profile_lists_the_valid_ones(tmp_path):
    with pytest.raises(
        ConfigError, match=r"^unknown profile 'prod': use one of development, staging, production$"
    ):
        load(tmp_path, "prod")


def test_a_profile_without_its_env_file_starts_from_colorgates_defaults(tmp_path):
    """An app's repository may hold only .env.<profile>.local (secrets, its domain)."""
    s = load(tmp_path)
    assert (s.http_port, s.https_port, s.bind, s.domain) == (8080, 8443, "127.0.0.1", "localhost")
    assert s.sources["COLORGATE_HTTP_PORT"] == "Colorgate's development defaults"
    # staging and production are public, judged after each switch, and need a real domain and password
    with pytest.raises(
        ConfigError,
        match=r"^COLORGATE_DOMAIN in Colorgate's staging defaults is a placeholder \('change-me.example.com'\): "
        r"set a real value in \.env\.staging\.local or the environment$",
    ):
        load(tmp_path, "staging")
    write(
        tmp_path,
        ".env.production.local",
        "COLORGATE_DOMAIN=shop.example.org\nPOSTGRES_PASSWORD=a-real-secret-42\n",
    )
    prod = load(tmp_path, "production")
    assert (prod.bind, prod.http_port, prod.https_port, prod.analysis_intervals, prod.domain) == (
        "0.0.0.0",
        80,
        443,
        3,
        "shop.example.org",
    )


def test_settings_are_read_from_the_apps_directory_found_as_compose_finds_its_file(
    tmp_path, monkeypatch
):
    """Run in an app's directory (or below it), Colorgate reads the settings and the
    compose file there, not in its own checkout."""
    app = tmp_path / "shop"
    (app / "src").mkdir(parents=True)
    (app / "compose.yaml").write_text(
        (config.project_root() / "examples" / "static-site" / "docker-compose.yml").read_text()
    )
    write(app, ".env.development.local", "COLORGATE_HTTPS_PORT=9443\n")
    assert profiles.settings_dir(app / "src", "development") == app
    s = profiles.load(
        "development", root=profiles.settings_dir(app / "src", "development"), environ={}
    )
    assert (s.root, s.app.file, s.project, s.https_port) == (
        app,
        app / "compose.yaml",
        "shop",
        9443,
    )
    # a directory with neither settings nor a compose file above it, where no sample ships
    # (an installed package): one line saying where to run
    empty = tmp_path / "empty"
    empty.mkdir()
    assert profiles.settings_dir(empty, "development") == empty
    monkeypatch.setattr(profiles, "SAMPLE", "no-such-sample")
    with pytest.raises(
        ConfigError,
        match=r"^no compose file in .*empty: run colorgate in your app's directory \(the one holding its "
        r"compose file\) or set COLORGATE_APP$",
    ):
        profiles.load("development", root=empty, environ={})


@pytest.mark.parametrize("port", ["0", "65536", "http", "-1", "80.5"])
def test_bad_port(tmp_path, port):
    write(
        tmp_path,
        ".env.development",
        GOOD.replace("COLORGATE_HTTPS_PORT=8443", f"COLORGATE_HTTPS_PORT={port}"),
    )
    with pytest.raises(
        ConfigError,
        match=rf"^COLORGATE_HTTPS_PORT '{port}' in \.env\.development should be a port number from 1 to 65535$",
    ):
        load(tmp_path)


def test_same_port_twice(tmp_path):
    write(tmp_path, ".env.development", GOOD.replace("8443", "8080"))
    with pytest.raises(ConfigError, match="both 8080: give them different ports"):
        load(tmp_path)


def test_unknown_key_suggests_the_close_one(tmp_path):
    write(tmp_path, ".env.development", GOOD + "COLORGATE_HTTPS_PROT=1\n")
    with pytest.raises(
        ConfigError,
        match=r"\.env\.development: unknown key COLORGATE_HTTPS_PROT: did you mean COLORGATE_HTTPS_PORT\?",
    ):
        load(tmp_path)


@pytest.mark.parametrize(
    "line, message",
    [
        (
            "COLORGATE_BIND=localhost",
            "COLORGATE_BIND 'localhost' in .env.development should be an IP address",
        ),
        (
            "COLORGATE_INITIAL_COLOR=purple",
            "COLORGATE_INITIAL_COLOR 'purple' in .env.development should be one of blue, green",
        ),
        (
            "COLORGATE_DOMAIN=bad_domain!",
            "COLORGATE_DOMAIN 'bad_domain!' in .env.development should be a host name",
        ),
        (
            "COLORGATE_PROJECT=Has Space",
            "COLORGATE_PROJECT 'Has Space' in .env.development should be lowercase",
        ),
        (
            "COLORGATE_DOCKER_HOST=myhost",
            "COLORGATE_DOCKER_HOST 'myhost' in .env.development should be empty",
        ),
        (
            "COLORGATE_MOVE_RELAY_ALLOW=203.0.113.7,10.1.2.3/8",
            "COLORGATE_MOVE_RELAY_ALLOW '203.0.113.7,10.1.2.3/8' in .env.development "
            "should list IPv4 addresses or networks such as 203.0.113.7,198.51.100.0/24 (not '10.1.2.3/8')",
        ),
        (
            "COLORGATE_MOVE_RELAY_ALLOW=relay.example.com",
            "COLORGATE_MOVE_RELAY_ALLOW 'relay.example.com' in .env.development should list IPv4",
        ),
    ],
)
def test_malformed_values(tmp_path, line, message):
    write(tmp_path, ".env.development", GOOD + line + "\n")
    with pytest.raises(ConfigError) as err:
        load(tmp_path)
    assert str(err.value).startswith(message)


def test_the_relays_certificate_and_key_go_together_and_it_is_checked_unless_told_otherwise(
    tmp_path,
):
    write(tmp_path, ".env.development", GOOD)
    assert load(tmp_path).move_relay_sslmode == "verify-full"
    write(
        tmp_path, ".env.development", GOOD + "COLORGATE_MOVE_RELAY_CERT=/etc/relay/fullchain.pem\n"
    )
    with pytest.raises(
        ConfigError,
        match="^COLORGATE_MOVE_RELAY_CERT and COLORGATE_MOVE_RELAY_KEY go together: set both",
    ):
        load(tmp_path)
    write(tmp_path, ".env.development", GOOD + "COLORGATE_MOVE_RELAY_SSLMODE=prefer\n")
    with pytest.raises(
        ConfigError,
        match="^COLORGATE_MOVE_RELAY_SSLMODE 'prefer' in .env.development should be verify-full or require",
    ):
        load(tmp_path)


def test_the_relays_allow_list_is_a_list_of_ipv4_networks(tmp_path):
    write(
        tmp_path,
        ".env.development",
        GOOD + "COLORGATE_MOVE_RELAY_ALLOW= 203.0.113.7, 198.51.100.0/24,\n",
    )
    assert load(tmp_path).move_relay_allow == ("203.0.113.7/32", "198.51.100.0/24")
    write(tmp_path, ".env.development", GOOD)
    assert load(tmp_path).move_relay_allow == ()


def test_malformed_line_names_file_and_line(tmp_path):
    write(tmp_path, ".env.development", GOOD + "just words\n")
    with pytest.raises(ConfigError, match=r"^\.env\.development:6: expected KEY=value"):
        load(tmp_path)


def test_parse_env_text_quotes_comments_export():
    text = "# c\n\nexport A=1\nB=\"two words\"\nC='x #y'\nD=v # trailing\nE=\n"
    assert profiles.parse_env_text(text, "f") == {
        "A": "1",
        "B": "two words",
        "C": "x #y",
        "D": "v",
        "E": "",
    }


def test_loading_registers_the_password_for_masking(tmp_path):
    write(tmp_path, ".env.development", GOOD)
    load(tmp_path)
    assert runner.redact("password=s3cret-value-42;") == "password=********;"


def test_shipped_profiles_are_valid_or_refused_for_the_right_reason():
    root = config.project_root()
    assert profiles.load("development", root=root, environ={}).bind == "127.0.0.1"
    for profile in ("staging", "production"):
        with pytest.raises(ConfigError, match="is a placeholder"):
            profiles.load(profile, root=root, environ={})
    example = profiles.parse_env_text((root / ".env.example").read_text(), ".env.example")
    assert set(example) == set(keys.KEYS), "every key is documented in .env.example"


@pytest.mark.parametrize(
    "url, message",
    [
        ("mysql://u:p@h/db", "should be a URL like postgresql://USER:PASSWORD@HOST:5432/DB"),
        ("postgresql://u:p@h:99999/db", "should be a URL like"),
        ("postgresql://u@h/db", "needs a user and a password"),
        ("postgresql://u:p@h/", "needs a database name"),
        (
            "postgresql://u:p@h/db?sslmode=sometimes",
            "has sslmode=sometimes: use one of verify-full, verify-ca",
        ),
        (
            "postgresql://u:p@h/db?sslrootcert=/nonexistent/ca.pem",
            "names sslrootcert=/nonexistent/ca.pem, which is not a file here",
        ),
    ],
)
def test_database_url_is_checked_without_showing_it(tmp_path, url, message):
    write(tmp_path, ".env.development", GOOD + f"DATABASE_URL={url}\n")
    with pytest.raises(ConfigError) as err:
        load(tmp_path)
    assert str(err.value).startswith(
        f"DATABASE_URL in .env.development {message}"
    ) and url not in str(err.value)


def test_database_url_password_is_masked_and_shown_without_it(tmp_path):
    write(
        tmp_path,
        ".env.development",
        GOOD + "DATABASE_URL=postgresql://app:Very-Secret-77@db.example.com:6543/shop\n",
    )
    s = load(tmp_path)
    assert urls.shown_url(s.database_url) == "postgresql://app@db.example.com:6543/shop"
    assert urls.shown_url("") == "local"
    assert runner.redact("conninfo password=Very-Secret-77") == "conninfo password=********"
    assert "Very-Secret" not in repr(s)


@pytest.mark.parametrize(
    "key,value",
    [
        ("COLORGATE_DOMAIN", "app.example.com\n"),
        ("COLORGATE_PROJECT", "colorgate\n"),
        ("COLORGATE_DOCKER_HOST", "ssh://deploy@host\n"),
        ("COLORGATE_TLS_CA", "local\n"),
    ],
)
def test_a_trailing_newline_is_not_a_valid_value(tmp_path, key, value):
    """(`$` in a pattern accepts a trailing newline: every check matches the whole value.)"""
    write(tmp_path, ".env.development", GOOD)
    with pytest.raises(ConfigError, match=rf"^{key} '.*' in the environment should be"):
        load(tmp_path, environ={key: value})


def test_a_managed_database_is_verified_by_default_and_its_ca_travels_as_text(tmp_path):
    from deploy.data import dbtools

    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    plain = dbtools.url_env("postgresql://app:pw@db.example.com/shop")
    # no downgrade unless the URL says so
    assert plain["PGSSLMODE"] == "verify-full" and plain["PGSSLROOTCERT"] == dbtools.SYSTEM_CAS
    assert (
        dbtools.url_env("postgresql://app:pw@db.example.com/shop?sslmode=require")["PGSSLMODE"]
        == "require"
    )
    with_ca = dbtools.url_env(
        f"postgresql://app:pw@db.example.com/shop?sslrootcert={ca}", prefix="T_"
    )
    assert (
        with_ca["T_PGSSLMODE"] == "verify-full"
        and with_ca["CG_T_PGSSLROOTCERT_PEM"] == ca.read_text()
    )
    assert "T_PGSSLROOTCERT" not in with_ca  # the dbtools entrypoint writes the file and sets it
    # the app's containers get the copy Colorgate puts in their volume; other URLs as written
    url = f"postgresql://app:pw@db.example.com:6543/shop?sslrootcert={ca}&application_name=web"
    assert urls.client_url(url) == (
        "postgresql://app:pw@db.example.com:6543/shop?sslrootcert=/run/colorgate-db/root.crt"
        "&application_name=web&sslmode=verify-full"
    )
    assert urls.client_url(url + "&sslmode=verify-ca").endswith("&sslmode=verify-ca")
    # without a CA of its own a managed URL is checked against this machine's system CAs (libpq's default,
    # sslmode=prefer, would check nothing and fall back to plaintext); a URL that asks for no check is left so
    assert (
        urls.client_url("postgresql://app:pw@db.example.com/shop")
        == "postgresql://app:pw@db.example.com/shop?sslrootcert=/run/colorgate-db/root.crt&sslmode=verify-full"
    )
    assert urls.ca_file("postgresql://app:pw@db.example.com/shop").endswith((".crt", ".pem"))
    for unchecked in (
        "postgresql://app:pw@db.example.com/shop?sslmode=require",
        "postgresql://app:pw@db.example.com/shop?sslmode=disable",
    ):
        assert urls.client_url(unchecked) == unchecked and urls.ca_file(unchecked) == ""
    assert (
        urls.client_url("postgresql://app:pw@postgres:5432/shop", managed=False)
        == "postgresql://app:pw@postgres:5432/shop"
    )


def test_the_app_reaches_the_stacks_database_as_a_role_of_its_own():
    s = profiles.load(
        "development",
        root=config.project_root(),
        environ={"POSTGRES_USER": "shop", "POSTGRES_PASSWORD": "pw-1-of-the-db"},
    )
    assert s.app_db_user == "shop_app"
    password = s.app_db_password()
    assert len(password) == 64 and "pw-1-of-the-db" not in password
    assert (
        password
        == profiles.load(
            "development",
            root=config.project_root(),
            environ={"POSTGRES_USER": "shop", "POSTGRES_PASSWORD": "pw-1-of-the-db"},
        ).app_db_password()
    )
    assert (
        password
        != profiles.load(
            "development",
            root=config.project_root(),
            environ={"POSTGRES_USER": "shop", "POSTGRES_PASSWORD": "pw-2-of-the-db"},
        ).app_db_password()
    )
    assert s.local_database_url().startswith(f"postgresql://shop_app:{password}@postgres:5432/")
    with pytest.raises(ConfigError, match="at most 59"):
        profiles.load(
            "development", root=config.project_root(), environ={"POSTGRES_USER": "u" * 60}
        )


def _with_secret(tmp_path: Path) -> Path:
    app = tmp_path / "shop"
    app.mkdir()
    compose = (
        config.project_root() / "examples" / "static-site" / "docker-compose.yml"
    ).read_text()
    (app / "compose.yaml").write_text(
        compose.replace("x-colorgate:\n", "x-colorgate:\n  secrets:\n    stripe_key: [site]\n", 1)
    )
    return app


def test_the_apps_secrets_come_from_a_setting_or_a_command_and_are_masked(tmp_path):
    from deploy import appsecrets

    app = _with_secret(tmp_path)
    s = profiles.load("development", root=app, environ={})
    assert appsecrets.check(s) == (
        [
            "MISSING  stripe_key: set COLORGATE_SECRET_STRIPE_KEY or COLORGATE_SECRET_STRIPE_KEY_COMMAND in "
            ".env.development.local  -> site as /run/app-secrets/stripe_key"
        ],
        False,
    )
    with pytest.raises(
        ConfigError,
        match=r"^the secret stripe_key \(x-colorgate.secrets\) has no value for development: set COLORGATE_SECRET_STRIPE_KEY",
    ):
        appsecrets.values(s)
    given = profiles.load(
        "development", root=app, environ={"COLORGATE_SECRET_STRIPE_KEY": "sk_test_given_1"}
    )
    assert appsecrets.values(given) == {
        "stripe_key": "sk_test_given_1"
    } and "sk_test_given_1" not in runner.redact("key sk_test_given_1")
    # a command, as a secret manager's CLI: what it prints, one trailing newline dropped, read once
    (tmp_path / "count").write_text("")
    command = f"echo run >> {tmp_path / 'count'}; printf 'sk_live_from_cmd\\n'"
    made = profiles.load(
        "development", root=app, environ={"COLORGATE_SECRET_STRIPE_KEY_COMMAND": command}
    )
    assert appsecrets.values(made) == {"stripe_key": "sk_live_from_cmd"} == appsecrets.values(made)
    assert (tmp_path / "count").read_text() == "run\n" and "sk_live_from_cmd" not in runner.redact(
        "sk_live_from_cmd"
    )
    lines, complete = appsecrets.check(made)
    assert complete and lines[0].startswith(
        "ok       stripe_key: printed by COLORGATE_SECRET_STRIPE_KEY_COMMAND in the environment (16 characters)"
    )
    # a command that fails says its last line of stderr, masked; never its output
    failing = profiles.load(
        "production",
        root=app,
        environ={
            "COLORGATE_DOMAIN": "shop.example.org",
            "COLORGATE_SECRET_STRIPE_KEY_COMMAND": "echo partial-output; echo 'not signed in: run op signin' >&2; exit 4",
        },
    )
    with pytest.raises(
        ConfigError,
        match=r"^COLORGATE_SECRET_STRIPE_KEY_COMMAND in the environment failed \(exit 4\): not signed in: run op signin$",
    ):
        appsecrets.values(failing)


def test_a_secret_setting_the_contract_does_not_name_or_a_placeholder_is_refused(tmp_path):
    app = _with_secret(tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"^COLORGATE_SECRET_STRIPE in the environment: the contract names no secret 'stripe' "
        r"\(x-colorgate.secrets names stripe_key\): add it there, or remove the key$",
    ):
        profiles.load("development", root=app, environ={"COLORGATE_SECRET_STRIPE": "x"})
    with pytest.raises(
        ConfigError,
        match=r"^COLORGATE_SECRET_STRIPE_KEY and COLORGATE_SECRET_STRIPE_KEY_COMMAND are both set",
    ):
        profiles.load(
            "development",
            root=app,
            environ={
                "COLORGATE_SECRET_STRIPE_KEY": "x",
                "COLORGATE_SECRET_STRIPE_KEY_COMMAND": "echo x",
            },
        )
    write(
        app,
        ".env.staging.local",
        "COLORGATE_DOMAIN=shop.example.org\nCOLORGATE_SECRET_STRIPE_KEY=change-me\n",
    )
    with pytest.raises(
        ConfigError, match=r"^COLORGATE_SECRET_STRIPE_KEY in \.env\.staging\.local is a placeholder"
    ):
        profiles.load("staging", root=app, environ={})
