"""Pulling and pushing over a :class:`~.session.Session`: a registry repository as an image
source (manifests and blobs, verified; a download broken mid-stream resumes with ``Range``) and
as a push target (``HEAD`` first, then a cross-repository mount, then a monolithic ``PUT`` or
``PATCH`` chunks), transfers running concurrently."""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from tugwire.errors import InvalidArgument, NotFound, TugError, Unavailable

from .session import (
    ACCEPT,
    DEFAULT_CHUNK_SIZE,
    MANIFEST_TYPES,
    MAX_MANIFEST,
    MEDIA_OCI_MANIFEST,
    PROGRESS_STEP,
    READ_CHUNK,
    BlobSink,
    DigestMismatch,
    Progress,
    Session,
    check_name,
    error_text,
    no_progress,
    sha256_digest,
)

log = logging.getLogger("supervisor.registry")
T = TypeVar("T")


# ---------------------------------------------------------------------------------- pulling


class RegistrySource:
    """An ``ImageSource`` on one repository of a registry: manifests and blobs, verified."""

    def __init__(self, session: Session, repository: str, progress: Progress | None = None) -> None:
        self.session = session
        self.repository = check_name(repository)
        self.progress = progress or no_progress
        self.scope = f"repository:{repository}:pull"

    def __repr__(self) -> str:
        return f"<RegistrySource {self.session.host}/{self.repository}>"

    async def get_manifest(self, reference: str) -> tuple[bytes, str]:
        """The bytes and media type of the manifest or index named by a tag or a digest; its
        digest is checked against the one asked for, else against ``Docker-Content-Digest``."""
        resp = await self.session.request(
            "GET",
            f"/v2/{self.repository}/manifests/{reference}",
            scope=self.scope,
            headers={"Accept": ACCEPT},
        )
        if resp.status_code == 404:
            raise NotFound(
                f"{self.session.host}/{self.repository}:{reference}: manifest unknown ({error_text(resp)})",
                field="image",
            )
        if resp.status_code != 200:
            raise Unavailable(
                f"{self.session.host}: GET manifest {reference} answered HTTP {resp.status_code} "
                f"({error_text(resp)})",
                registry=self.session.host,
            )
        body = resp.content
        if len(body) > MAX_MANIFEST:
            raise InvalidArgument(f"the manifest of {reference} is over {MAX_MANIFEST} bytes")
        actual = sha256_digest(body)
        expected = reference if reference.startswith("sha256:") else resp.headers.get("docker-content-digest")
        if expected and expected.startswith("sha256:") and expected != actual:
            raise DigestMismatch(
                f"{self.session.host}/{self.repository}: manifest {reference} has digest {actual}, "
                f"expected {expected}"
            )
        media = resp.headers.get("content-type", "").split(";")[0].strip()
        if media not in MANIFEST_TYPES:
            try:
                declared = json.loads(body).get("mediaType")
            except (ValueError, AttributeError):
                declared = None
            media = declared if isinstance(declared, str) and declared else MEDIA_OCI_MANIFEST
        return body, media

    async def fetch_blob(self, desc: dict[str, Any], writer: BlobSink) -> None:
        """Stream the blob ``desc`` into ``writer``; a connection broken midway resumes with a
        ``Range`` request. The size is checked here; the digest by the writer as it commits."""
        import httpx

        digest = str(desc["digest"])
        size = int(desc.get("size", -1))
        written = 0
        last_report = 0
        event = {"id": digest[7:19], "digest": digest, "action": "downloading", "current": 0, "total": size}
        self.progress(dict(event))
        resumes = 0
        while True:
            headers = {"Range": f"bytes={written}-"} if written else {}
            resp = await self.session.request(
                "GET", f"/v2/{self.repository}/blobs/{digest}", scope=self.scope, headers=headers, stream=True
            )
            try:
                if resp.status_code == 404:
                    raise NotFound(f"{self.session.host}/{self.repository}: blob {digest} unknown")
                if written and resp.status_code != 206:
                    raise Unavailable(f"{self.session.host} cannot resume blob {digest} (no Range support)")
                if resp.status_code not in (200, 206):
                    await resp.aread()
                    raise Unavailable(
                        f"{self.session.host}: GET blob {digest} answered HTTP {resp.status_code} "
                        f"({error_text(resp)})"
                    )
                try:
                    async for chunk in resp.aiter_raw(READ_CHUNK):
                        written += len(chunk)
                        if size >= 0 and written > size:
                            raise DigestMismatch(f"blob {digest} is larger than its stated {size} bytes")
                        await writer.write(chunk)
                        if written - last_report >= PROGRESS_STEP:
                            last_report = written
                            self.progress({**event, "current": written})
                except httpx.TransportError as exc:
                    resumes += 1
                    if resumes >= self.session.retry.attempts:
                        raise Unavailable(f"{self.session.host}: blob {digest}: {exc}") from exc
                    log.info("blob %s broke after %d bytes (%s): resuming", digest, written, exc)
                    await anyio.sleep(self.session.retry.delay(resumes - 1))
                    continue
            finally:
                await resp.aclose()
            break
        if size >= 0 and written != size:
            raise DigestMismatch(f"blob {digest} has {written} bytes, expected {size}")
        self.progress({**event, "action": "downloaded", "current": written})


# ---------------------------------------------------------------------------------- pushing


@dataclass(frozen=True)
class PushBlob:
    """A blob to push: its descriptor and where its bytes are on disk."""

    digest: str
    size: int
    path: str
    media_type: str = "application/octet-stream"


@dataclass(frozen=True)
class PushResult:
    digest: str
    uploaded: list[str]
    existing: list[str]
    mounted: list[str]


def _file_body(path: str, start: int = 0, length: int | None = None) -> Callable[[], AsyncIterator[bytes]]:
    """A factory of async iterators over (part of) a file, for a request body that a retry can
    send again."""

    async def body() -> AsyncIterator[bytes]:
        left = length
        with open(path, "rb") as f:
            f.seek(start)
            while left is None or left > 0:
                n = READ_CHUNK if left is None else min(READ_CHUNK, left)
                chunk = f.read(n)
                if not chunk:
                    break
                if left is not None:
                    left -= len(chunk)
                yield chunk
                await anyio.lowlevel.checkpoint()

    return body


class RegistryTarget:
    """Pushing to one repository of a registry."""

    def __init__(
        self,
        session: Session,
        repository: str,
        *,
        progress: Progress | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        if chunk_size < 1024:
            raise InvalidArgument("chunk_size must be at least 1024 bytes", field="chunk_size")
        self.session = session
        self.repository = check_name(repository)
        self.progress = progress or no_progress
        self.chunk_size = chunk_size
        self.scope = f"repository:{repository}:pull,push"

    def __repr__(self) -> str:
        return f"<RegistryTarget {self.session.host}/{self.repository}>"

    def _blob_path(self, digest: str) -> str:
        return f"/v2/{self.repository}/blobs/{digest}"

    async def has_blob(self, digest: str) -> bool:
        resp = await self.session.request("HEAD", self._blob_path(digest), scope=self.scope)
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise Unavailable(f"{self.session.host}: HEAD blob {digest} answered HTTP {resp.status_code}")

    async def push_blob(self, blob: PushBlob, mount_from: Iterable[str] = ()) -> str:
        """Make the repository hold ``blob``: ``exists``, ``mounted`` or ``uploaded``."""
        event = {"id": blob.digest[7:19], "digest": blob.digest, "current": 0, "total": blob.size}
        if await self.has_blob(blob.digest):
            self.progress({**event, "action": "exists", "current": blob.size})
            return "exists"
        location: str | None = None
        for source in mount_from:
            if source == self.repository:
                continue
            q = urllib.parse.urlencode({"mount": blob.digest, "from": source})
            scope = f"{self.scope} repository:{source}:pull"
            resp = await self.session.request(
                "POST", f"/v2/{self.repository}/blobs/uploads/?{q}", scope=scope
            )
            if resp.status_code == 201:
                self.progress({**event, "action": "mounted", "current": blob.size})
                return "mounted"
            if resp.status_code == 202:
                location = resp.headers.get("location")  # no mount: an upload session instead
                break
        for attempt in range(self.session.retry.attempts):
            try:
                await self._upload(blob, location, event)
                break
            except (Unavailable, UploadFailed) as exc:
                location = None
                if attempt + 1 >= self.session.retry.attempts:
                    if isinstance(exc, TugError):
                        raise
                    raise Unavailable(str(exc)) from exc
                log.info("upload of %s failed (%s); starting it again", blob.digest, exc)
                await anyio.sleep(self.session.retry.delay(attempt))
        self.progress({**event, "action": "pushed", "current": blob.size})
        return "uploaded"

    async def _start_upload(self) -> str:
        resp = await self.session.request("POST", f"/v2/{self.repository}/blobs/uploads/", scope=self.scope)
        if resp.status_code != 202 or "location" not in resp.headers:
            raise UploadFailed(f"POST blobs/uploads answered HTTP {resp.status_code} ({error_text(resp)})")
        return resp.headers["location"]

    async def _upload(self, blob: PushBlob, location: str | None, event: dict[str, Any]) -> None:
        if location is None:
            location = await self._start_upload()
        self.progress({**event, "action": "uploading"})
        if blob.size > self.chunk_size:
            offset = 0
            while offset < blob.size:
                n = min(self.chunk_size, blob.size - offset)
                resp = await self.session.request(
                    "PATCH",
                    location,
                    scope=self.scope,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{offset + n - 1}",
                        "Content-Length": str(n),
                    },
                    content=_file_body(blob.path, offset, n),
                )
                if resp.status_code != 202 or "location" not in resp.headers:
                    raise UploadFailed(
                        f"PATCH chunk {offset}-{offset + n - 1} of {blob.digest} answered HTTP "
                        f"{resp.status_code} ({error_text(resp)})"
                    )
                location = resp.headers["location"]
                offset += n
                self.progress({**event, "action": "uploading", "current": offset})
            body: bytes | Callable[[], AsyncIterator[bytes]] | None = b""
            length = 0
        else:
            body = _file_body(blob.path)
            length = blob.size
        sep = "&" if "?" in location else "?"
        resp = await self.session.request(
            "PUT",
            f"{location}{sep}{urllib.parse.urlencode({'digest': blob.digest})}",
            scope=self.scope,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)},
            content=body,
        )
        if resp.status_code != 201:
            text = error_text(resp)
            if "DIGEST_INVALID" in text:
                raise DigestMismatch(
                    f"the registry says blob {blob.digest} does not match its digest: {text}"
                )
            raise UploadFailed(f"PUT blob {blob.digest} answered HTTP {resp.status_code} ({text})")

    async def put_manifest(self, reference: str, body: bytes, media_type: str) -> str:
        """PUT the manifest under a tag (or its digest); returns its digest, checked against the
        one the registry states."""
        digest = sha256_digest(body)
        resp = await self.session.request(
            "PUT",
            f"/v2/{self.repository}/manifests/{reference}",
            scope=self.scope,
            headers={"Content-Type": media_type},
            content=body,
        )
        if resp.status_code not in (200, 201):
            raise Unavailable(
                f"{self.session.host}: PUT manifest {reference} answered HTTP {resp.status_code} "
                f"({error_text(resp)})",
                registry=self.session.host,
            )
        stated = resp.headers.get("docker-content-digest")
        if stated and stated != digest:
            raise DigestMismatch(f"the registry stored manifest {stated}, we sent {digest}")
        return digest

    async def push(
        self,
        tag: str,
        manifest: bytes,
        media_type: str,
        blobs: list[PushBlob],
        *,
        concurrency: int = 3,
        mount_from: Iterable[str] = (),
    ) -> PushResult:
        """Push the blobs (at most ``concurrency`` at a time), then the manifest under ``tag``."""
        if concurrency < 1:
            raise InvalidArgument("concurrency must be at least 1", field="concurrency")
        sources = list(mount_from)
        outcome: dict[str, str] = {}
        limiter = anyio.CapacityLimiter(concurrency)
        unique = list({b.digest: b for b in blobs}.values())

        async def one(blob: PushBlob) -> None:
            async with limiter:
                outcome[blob.digest] = await self.push_blob(blob, sources)

        await run_all(one, unique)
        digest = await self.put_manifest(tag, manifest, media_type)
        return PushResult(
            digest=digest,
            uploaded=[d for d, o in outcome.items() if o == "uploaded"],
            existing=[d for d, o in outcome.items() if o == "exists"],
            mounted=[d for d, o in outcome.items() if o == "mounted"],
        )


class UploadFailed(Exception):
    """An upload session went wrong in a way that starting it again may fix."""


async def run_all(fn: Callable[[T], Awaitable[None]], items: Iterable[T]) -> None:
    """``fn(item)`` for every item, concurrently in a task group; the first TugError cancels the
    others and is raised as itself (not wrapped in an exception group)."""
    failure: list[TugError] = []
    async with anyio.create_task_group() as tg:

        async def guarded(item: T) -> None:
            try:
                await fn(item)
            except TugError as exc:
                if not failure:
                    failure.append(exc)
                tg.cancel_scope.cancel()

        for item in items:
            tg.start_soon(guarded, item)
    if failure:
        raise failure[0]
