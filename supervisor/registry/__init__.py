"""The OCI distribution client: pull and push of manifests and blobs over HTTP(S), on
``httpx.AsyncClient`` (so on asyncio and trio alike, through anyio).

What it does, as the distribution spec and docker's client do:

- Authentication: anonymous first; on ``401`` the ``WWW-Authenticate`` challenge decides:
  ``Basic`` (saved credentials sent on every request) or ``Bearer`` (a token fetched from the
  challenge's ``realm`` for ``service`` and the scope we need, with the saved credentials as basic
  auth when there are any, cached per scope, fetched before the request once the realm is known).
- Retries with exponential backoff (0.2 s, doubling, at most 5 attempts) on connection errors,
  ``429`` and ``5xx``; a blob download broken mid-stream resumes with ``Range``.
- Manifests with ``Accept`` for OCI and docker schema 2 manifests and indexes, verified against
  the digest asked for (or the ``Docker-Content-Digest`` the registry states).
- Uploads: ``HEAD`` first (a blob the repository has is never sent again), then a cross-repository
  mount from a repository of the same registry we know holds it, then a monolithic ``PUT`` (the
  body streamed from the store) or, for blobs over the chunk size, ``PATCH`` chunks with
  ``Content-Range`` and a closing ``PUT ?digest=``.
- Transfers run concurrently, at most ``concurrency`` at a time.

httpx is imported lazily (57 ms): only a pull, push or login pays for it.

The package, bottom up: :mod:`.session` (HTTP, auth flow, retries), :mod:`.transfer` (a
repository as an image source and as a push target), :mod:`.service` (pull, push, login, logout
for the front doors).
"""

from __future__ import annotations

from .service import (
    LoginRequest,
    PullAuth,
    PulledImage,
    PullRequest,
    PushedImage,
    PushRequest,
    RegistryService,
    Transfer,
    run_transfer,
)
from .session import (
    ACCEPT,
    DEFAULT_CHUNK_SIZE,
    MANIFEST_TYPES,
    MAX_MANIFEST,
    MEDIA_DOCKER_LIST,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    PROGRESS_STEP,
    READ_CHUNK,
    RETRYABLE_STATUS,
    BlobSink,
    DigestMismatch,
    Progress,
    RetryPolicy,
    Session,
    Unauthorized,
    make_http_client,
    sha256_digest,
)
from .transfer import PushBlob, PushResult, RegistrySource, RegistryTarget, run_all

__all__ = [
    "ACCEPT",
    "DEFAULT_CHUNK_SIZE",
    "MANIFEST_TYPES",
    "MAX_MANIFEST",
    "MEDIA_DOCKER_LIST",
    "MEDIA_DOCKER_MANIFEST",
    "MEDIA_OCI_INDEX",
    "MEDIA_OCI_MANIFEST",
    "PROGRESS_STEP",
    "READ_CHUNK",
    "RETRYABLE_STATUS",
    "BlobSink",
    "DigestMismatch",
    "LoginRequest",
    "Progress",
    "PullAuth",
    "PullRequest",
    "PulledImage",
    "PushBlob",
    "PushRequest",
    "PushResult",
    "PushedImage",
    "RegistryService",
    "RegistrySource",
    "RegistryTarget",
    "RetryPolicy",
    "Session",
    "Transfer",
    "Unauthorized",
    "make_http_client",
    "run_all",
    "run_transfer",
    "sha256_digest",
]
