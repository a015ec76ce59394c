"""The small package both daemons and the CLI share: JSON-RPC framing, errors, names, CRI logs.

It imports nothing heavy at package level: the CLI and every shim pay for what they import.
"""
