"""The typed requests of the networks service, as a front door reads them from its protocol
(types checked there; the values are checked by :class:`supervisor.network.Networks`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class NetworkCreateRequest:
    """``network.create``: a bridge network."""

    name: str
    driver: str | None = None
    subnet: str | None = None
    ip_range: str | None = None
    gateway: str | None = None
    subnet6: str | None = None
    gateway6: str | None = None
    ipv6: bool = False
    mtu: int | None = None
    internal: bool = False
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EndpointRequest:
    """The network options of ``container.create``."""

    network: str | None = None
    ip: str | None = None
    ip6: str | None = None
    network_aliases: list[str] = field(default_factory=list)
    ports: list[str] = field(default_factory=list)
    publish_all: bool = False
    dns: list[str] = field(default_factory=list)
    add_hosts: list[str] = field(default_factory=list)
