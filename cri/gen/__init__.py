"""Generated code only: the CRI stubs made by scripts/gen-cri.sh from cri/proto/api.proto.

Never edited by hand; tests/test_cri_stubs.py fails when they differ from what the script makes.
"""
