"""Database URLs: one validated (PostgreSQL's schemes, its parts, TLS parameters), the URL a
client is given (its CA carried as text, verify-full by default for a managed database),
the app's URL, and one shown without its password."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from deploy import contract


def database_url(value: str) -> str:
    """postgresql://USER:PASSWORD@HOST[:PORT]/DB[?sslmode=...], or empty (the stack's own)."""
    if not value:
        return value
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("postgres", "postgresql") or not parts.hostname or port == -1:
        raise ValueError(
            "should be a URL like postgresql://USER:PASSWORD@HOST:5432/DB, or empty for the stack's own PostgreSQL"
        )
    if not parts.username or not parts.password:
        raise ValueError("needs a user and a password: postgresql://USER:PASSWORD@HOST:5432/DB")
    if not parts.path.strip("/") or "/" in parts.path.strip("/"):
        raise ValueError("needs a database name: postgresql://USER:PASSWORD@HOST:5432/DB")
    query = dict(parse_qsl(parts.query))
    if query.get("sslmode", "verify-full") not in SSLMODES:
        raise ValueError(
            f"has sslmode={query['sslmode']}: use one of {', '.join(SSLMODES)} (default verify-full)"
        )
    root = query.get("sslrootcert")
    if root and not Path(root).expanduser().is_file():
        raise ValueError(
            f"names sslrootcert={root}, which is not a file here: give the path of the database's CA certificate "
            "on this machine (Colorgate sends it to the containers)"
        )
    return value


# libpq's sslmode values; a managed database's URL without one is verify-full: TLS, the
# server's certificate checked against the CA (the URL's sslrootcert, else the system's)
# and its name against the host. A weaker one is used only when the URL says so.
SSLMODES = ("verify-full", "verify-ca", "require", "prefer", "allow", "disable")


def tls_params(url: str) -> tuple[str, str]:
    """(sslmode, sslrootcert path on this machine or "") of a managed database's URL."""
    query = dict(parse_qsl(urlsplit(url).query))
    root = query.get("sslrootcert", "")
    return query.get("sslmode", "verify-full"), str(Path(root).expanduser()) if root else ""


def ca_file(url: str) -> str:
    """The CA file (on this machine) a managed database's certificate is checked with:
    the URL's sslrootcert, else, for a checking sslmode (verify-full, the default, or
    verify-ca), this machine's system CAs; "" for a URL that asks for no check."""
    sslmode, root = tls_params(url)
    if root or sslmode not in ("verify-full", "verify-ca"):
        return root
    import ssl

    found = ssl.get_default_verify_paths().cafile
    if found and Path(found).is_file():
        return found
    import certifi  # where the system's are not a file (macOS): Mozilla's, as httpx uses

    return certifi.where()


def client_url(url: str, managed: bool = True) -> str:
    """The URL as the app's containers get it. A `managed` database's is checked as
    Colorgate checks it (libpq's own default, sslmode=prefer, checks nothing and falls
    back to plaintext): sslmode=verify-full unless the URL names a mode, and for a
    checking mode sslrootcert is the copy of ca_file Colorgate puts in their `dbca`
    volume. The stack's own database (on its internal network), or a URL that asks for
    no check, as written."""
    if not url or not managed or not ca_file(url):
        return url
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not any(k == "sslrootcert" for k, _ in query):
        query.append(("sslrootcert", ""))
    query = [(k, f"{contract.DB_CA_DIR}/root.crt" if k == "sslrootcert" else v) for k, v in query]
    if not any(k == "sslmode" for k, _ in query):
        query.append(("sslmode", "verify-full"))
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


def app_url(url: str, scheme: str = "postgresql", managed: bool = True) -> str:
    """The URL as the app's driver reads it: client_url, with the contract's scheme
    (`postgres://`, SQLAlchemy's `postgresql+psycopg://`, ...)."""
    url = client_url(url, managed)
    return f"{scheme}:{url.partition(':')[2]}" if url and scheme != url.partition(":")[0] else url


def url_parts(url: str) -> dict[str, str]:
    """host, port, name, user and password of a database URL (x-colorgate.database.parts)."""
    parts = urlsplit(url)
    return {
        "host": parts.hostname or "",
        "port": str(parts.port or 5432),
        "name": unquote(parts.path.lstrip("/")),
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
    }


def shown_url(url: str) -> str:
    """A database URL fit to print: no password, no query. `local` for the stack's own."""
    if not url:
        return "local"
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"postgresql://{parts.username}@{parts.hostname}{port}{parts.path}"
