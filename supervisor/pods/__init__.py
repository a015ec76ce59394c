"""Pods: the CRI's sandboxes in tugd's core (docs/api.md, "Pods")."""

from .records import DnsConfig, PodCreateRequest, PodRecord, PortMapping
from .service import Pods

__all__ = ["DnsConfig", "PodCreateRequest", "PodRecord", "Pods", "PortMapping"]
