"""tug-cri: the Kubernetes CRI (``runtime.v1`` over gRPC) as a front door to tugd.

A separate asyncio process (grpc.aio runs on asyncio only) that translates each CRI call into
tugd's JSON-RPC API (``tugwire.jsonrpc``) and keeps no state of its own: whatever a restart of
tug-cri could lose lives in tugd. It imports ``tugwire`` and grpc, never ``supervisor``.
"""
