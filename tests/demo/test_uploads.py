"""Uploads are deleted from disk when read, and only uploads can be named."""

import time

import pytest

from demo.uploads import Uploads, uploaded_path


def upload(root, name="cup.png", data=b"pixels", folder="3f2a"):
    path = root / folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"path": str(path), "orig_name": name}


def test_uploaded_path_only_inside_the_upload_folder(tmp_path):
    root = tmp_path / "uploads"
    inside = upload(root)["path"]
    outside = tmp_path / "secret.txt"
    outside.write_text("keep me")
    (root / "3f2a" / "link.png").symlink_to(outside)
    assert str(uploaded_path({"path": inside}, root)) == inside
    for path in [str(outside), str(root / "3f2a" / ".." / ".." / "secret.txt"), str(root / "3f2a" / "link.png")]:
        with pytest.raises(ValueError, match="not a file of this server's upload folder"):
            uploaded_path({"path": path}, root)
    with pytest.raises(ValueError, match="carries no file"):
        uploaded_path({"url": "http://x"}, root)
    assert outside.read_text() == "keep me"


def test_take_deletes_the_file_and_its_folder(tmp_path):
    uploads = Uploads(tmp_path, ttl_s=60, delete_after_s=0)
    assert uploads.take(upload(tmp_path)) == (b"pixels", "cup.png")
    assert list(tmp_path.iterdir()) == []
    later = Uploads(tmp_path, ttl_s=60, delete_after_s=0.2)  # the page may still be showing it
    later.take(upload(tmp_path))
    assert (tmp_path / "3f2a" / "cup.png").is_file()
    time.sleep(0.5)
    assert list(tmp_path.iterdir()) == []


def test_the_same_upload_named_again_comes_from_memory_until_it_expires(tmp_path):
    uploads = Uploads(tmp_path, ttl_s=0.3, delete_after_s=0)
    payload = upload(tmp_path)
    uploads.take(payload)
    assert uploads.take(payload) == (b"pixels", "cup.png")  # a second waiting request, same content
    time.sleep(0.4)
    with pytest.raises(ValueError, match="cup.png: the upload is no longer on the server"):
        uploads.take(payload)


def test_memory_is_bounded_oldest_dropped_first(tmp_path):
    uploads = Uploads(tmp_path, ttl_s=60, max_bytes=10, delete_after_s=0)
    first, second = upload(tmp_path, "a.png", b"123456", "a"), upload(tmp_path, "b.png", b"abcdef", "b")
    uploads.take(first)
    uploads.take(second)
    assert uploads.take(second)[0] == b"abcdef"
    with pytest.raises(ValueError, match="send it again"):
        uploads.take(first)
