"""The one sha256 helper module: file digests (one file or several in order) and JSON-value digests."""

import hashlib
import json

from bertrt.digest import sha256_file, sha256_json


def test_file_digest_is_the_sha256_of_the_bytes_and_several_files_hash_as_their_concatenation(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(bytes(range(256)) * 5000)  # 1.28 MB: more than one 1 MiB block
    b.write_bytes(b"tail")
    assert sha256_file(a) == hashlib.sha256(a.read_bytes()).hexdigest()
    assert sha256_file(a, b) == hashlib.sha256(a.read_bytes() + b"tail").hexdigest()
    assert sha256_file(b, a) != sha256_file(a, b)


def test_json_digest_ignores_key_order_and_matches_the_sorted_dump():
    value = {"b": [1, 2, {"y": 1, "x": 2}], "a": "é"}
    assert sha256_json(value) == sha256_json({"a": "é", "b": [1, 2, {"x": 2, "y": 1}]})
    assert sha256_json(value) == hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
    assert sha256_json([1, 2]) != sha256_json([2, 1])
