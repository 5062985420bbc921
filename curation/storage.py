"""Where a finished run (or a snapshot) is read from: a local directory, or an object-store URL such as
`s3://bucket/prefix`.

Local paths go through pathlib exactly as before; only URLs go through fsspec (s3fs for `s3://`). A URL's endpoint
and credentials come from its filesystem's standard configuration alone (for S3: AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/config, read by botocore): nothing here takes, stores
or logs them, so the only thing a caller can record about a URL run is its URL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem
from fsspec.registry import known_implementations

Location = str | Path  # a local path, or a URL (always a str)

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_ENDPOINT = re.compile(r"\bhttps?://[^\s\"']+")


class StorageError(ValueError):
    """A URL that cannot be read: its filesystem package is missing, or the store refused the request."""


def is_url(location: Location) -> bool:
    """A `scheme://...` string. Path objects are always local (pathlib would have folded `//` anyway)."""
    return isinstance(location, str) and bool(_URL.match(location))


def location(where: Location) -> Location:
    """A run or snapshot location in canonical form: a URL without trailing slashes, else a Path."""
    if not is_url(where):
        return Path(where)
    url = str(where).rstrip("/")
    if "@" in urlsplit(url).netloc:
        # Only the URL is ever recorded (snapshot lineage, logs): it must not be able to carry a secret.
        raise StorageError(f"{_scheme(url)}:// URL with credentials in it: give them through the environment instead")
    return url


def key(where: Location) -> str:
    """The string that names a location in query results (the views' `run` column) and snapshot lineage: the
    resolved absolute path of a local directory, the canonical URL of a remote one."""
    where = location(where)
    return where if isinstance(where, str) else str(where.resolve())


def join(base: Location, *parts: str) -> Location:
    """`base / part / ...`: a Path for a local base, a URL string for a URL."""
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return Path(base).joinpath(*parts)


def filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """(fsspec filesystem, path inside it) of a URL. StorageError naming the package when the protocol's
    implementation is not installed (s3fs for s3://)."""
    scheme = _scheme(url)
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        package = _package(scheme)
        raise StorageError(f"reading {scheme}:// URLs needs the {package} package (pip install {package})") from e
    except ValueError as e:  # fsspec's "Protocol not known"
        raise StorageError(f"{url}: no filesystem implementation for {scheme}:// URLs ({e})") from e


def exists(where: Location) -> bool:
    if not is_url(where):
        return Path(where).exists()
    fs, path = filesystem(str(where))
    with store_errors(str(where)):
        return fs.exists(path)


def is_dir(where: Location) -> bool:
    """A directory; on an object store, a prefix that holds at least one object."""
    if not is_url(where):
        return Path(where).is_dir()
    fs, path = filesystem(str(where))
    with store_errors(str(where)):
        return fs.isdir(path)


def size(where: Location) -> int:
    """Bytes of a file; FileNotFoundError when there is none."""
    if not is_url(where):
        return Path(where).stat().st_size
    fs, path = filesystem(str(where))
    with store_errors(str(where)):
        return int(fs.size(path))


def read_text(where: Location) -> str:
    if not is_url(where):
        return Path(where).read_text()
    with open_input(where) as f:
        return f.read().decode()


def read_json(where: Location) -> Any:
    return json.loads(read_text(where))


def glob(base: Location, pattern: str) -> list[Location]:
    """The files under `base` that match `pattern` (e.g. `*.parquet`), sorted; none when `base` does not exist."""
    if not is_url(base):
        return sorted(Path(base).glob(pattern))
    fs, path = filesystem(str(base))
    with store_errors(str(base)):
        found = fs.glob(f"{path.rstrip('/')}/{pattern}")
    # fsspec returns paths without the protocol: put it back so each one is a URL again.
    return sorted(fs.unstrip_protocol(p) for p in found)


@contextmanager
def open_input(where: Location) -> Iterator[IO[bytes]]:
    """A binary file opened for reading; FileNotFoundError when there is none."""
    if not is_url(where):
        with Path(where).open("rb") as f:
            yield f
        return
    fs, path = filesystem(str(where))
    with store_errors(str(where)), fs.open(path, "rb") as f:
        yield f


def parquet_file(where: Location, **kwargs: Any) -> pq.ParquetFile:
    """`pq.ParquetFile` of a local path or a URL (kwargs as for it; memory mapping is local only)."""
    if not is_url(where):
        return pq.ParquetFile(where, **kwargs)
    kwargs.pop("memory_map", None)
    fs, path = filesystem(str(where))
    with store_errors(str(where)):
        return pq.ParquetFile(path, filesystem=fs, **kwargs)


def read_table(where: Location, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file as a table."""
    if not is_url(where):
        return pq.read_table(where, columns=columns)
    return parquet_file(where).read(columns=columns)


def read_schema(where: Location) -> pa.Schema:
    return pq.read_schema(where) if not is_url(where) else parquet_file(where).schema_arrow


def read_metadata(where: Location) -> pq.FileMetaData:
    return pq.read_metadata(where) if not is_url(where) else parquet_file(where).metadata


def filesystems(locations: list[Location]) -> list[AbstractFileSystem]:
    """The distinct fsspec filesystems behind the URLs among `locations` (none for local paths)."""
    found: dict[int, AbstractFileSystem] = {}
    for where in locations:
        if is_url(where):
            fs, _ = filesystem(str(where))
            found.setdefault(id(fs), fs)
    return list(found.values())


@contextmanager
def store_errors(url: str) -> Iterator[None]:
    """A refused or failed store request as a one-line StorageError; a missing file stays FileNotFoundError (callers
    turn that into their own message)."""
    try:
        yield
    except FileNotFoundError:
        raise
    except Exception as e:
        # s3fs maps denied, unreachable and bad-credential responses to OSError; botocore raises its own classes
        # for some (no credentials, an endpoint it cannot reach). Anything else is a bug: keep its traceback.
        if not isinstance(e, OSError) and type(e).__module__.split(".")[0] not in _STORE_PACKAGES:
            raise
        raise StorageError(f"{url}: {type(e).__name__}: {_first_line(e)}") from e


def _first_line(error: Exception) -> str:
    """The error's first line, any endpoint URL in it masked: like the credentials, the endpoint comes from the
    environment and stays out of what is printed or logged."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return _ENDPOINT.sub("<endpoint>", first)


_STORE_PACKAGES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "fsspec")


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower()


def _package(scheme: str) -> str:
    """The package that implements a protocol for fsspec (s3 -> s3fs, gs -> gcsfs)."""
    known = known_implementations.get(scheme, {})
    return str(known.get("class", scheme)).split(".")[0] or scheme
