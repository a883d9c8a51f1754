"""``/v1/files`` on the mock, through the official SDK over real HTTP."""

from __future__ import annotations

import httpx2
import openai
import pytest

from ferryman.mock import spec
from ferryman.mock.resources import files as files_module
from ferryman.mock.state import now


def upload(client: openai.OpenAI, data: bytes = b"hello", name: str = "notes.txt", purpose: str = "user_data") -> str:
    return client.files.create(file=(name, data), purpose=purpose).id  # type: ignore[arg-type]


def test_upload_retrieve_content_delete(ferryman_mock):
    client = ferryman_mock.client
    raw = client.files.with_raw_response.create(file=("notes.txt", b"hello world"), purpose="user_data")
    body = raw.http_response.json()
    assert spec.response_errors("OpenAIFile", body) == []
    created = raw.parse()
    assert created.id.startswith("file-")
    assert (created.object, created.bytes, created.filename) == ("file", 11, "notes.txt")
    assert (created.purpose, created.status, created.status_details, created.expires_at) == (
        "user_data",
        "processed",
        None,
        None,
    )
    assert abs(created.created_at - now()) <= 2

    fetched = client.files.with_raw_response.retrieve(created.id)
    assert spec.response_errors("OpenAIFile", fetched.http_response.json()) == []
    assert fetched.parse() == created

    content = client.files.content(created.id)
    assert content.read() == b"hello world"
    assert content.text == "hello world"
    assert content.response.headers["content-type"] == "application/octet-stream"

    deleted = client.files.with_raw_response.delete(created.id)
    assert spec.response_errors("DeleteFileResponse", deleted.http_response.json()) == []
    assert deleted.parse().model_dump() == {"id": created.id, "object": "file", "deleted": True}
    with pytest.raises(openai.NotFoundError) as caught:
        client.files.retrieve(created.id)
    assert caught.value.body == {  # type: ignore[comparison-overlap]
        "message": f"No such File object: {created.id}",
        "type": "invalid_request_error",
        "param": "id",
        "code": None,
    }
    assert ferryman_mock.app.store.get_blob(created.id) is None


@pytest.mark.parametrize("action", ["retrieve", "content", "delete"])
def test_unknown_file_is_404(ferryman_mock, action):
    with pytest.raises(openai.NotFoundError, match="No such File object: file-nope"):
        getattr(ferryman_mock.client.files, action)("file-nope")


def test_binary_content_round_trips(ferryman_mock):
    data = bytes(range(256)) * 40
    file_id = upload(ferryman_mock.client, data, "blob.bin", "assistants")
    assert ferryman_mock.client.files.content(file_id).read() == data


def test_list_orders_filters_and_paginates(ferryman_mock):
    client = ferryman_mock.client
    ids = [upload(client, f"file {i}".encode(), f"f{i}.txt") for i in range(5)]
    batch_id = upload(client, b'{"a": 1}\n', "in.jsonl", "batch")

    raw = client.files.with_raw_response.list()
    body = raw.http_response.json()
    assert spec.response_errors("ListFilesResponse", body) == []
    assert [f["id"] for f in body["data"]] == [batch_id, *reversed(ids)]  # newest first by default
    assert (body["first_id"], body["last_id"], body["has_more"]) == (batch_id, ids[0], False)

    assert [f.id for f in client.files.list(purpose="batch")] == [batch_id]
    assert [f.id for f in client.files.list(purpose="user_data", order="asc")] == ids

    page = client.files.list(purpose="user_data", order="asc", limit=2)
    assert [f.id for f in page.data] == ids[:2]
    assert page.has_more is True
    second = client.files.list(purpose="user_data", order="asc", limit=2, after=ids[1])
    assert [f.id for f in second.data] == ids[2:4]
    # The SDK's auto-pagination walks every page through ``after``.
    assert [f.id for f in client.files.list(purpose="user_data", order="asc", limit=2)] == ids
    assert [f.id for f in client.files.list(purpose="user_data", limit=2)] == list(reversed(ids))


@pytest.mark.parametrize(
    ("params", "param"),
    [({"limit": 0}, "limit"), ({"limit": 10_001}, "limit"), ({"limit": "many"}, "limit"), ({"order": "up"}, "order")],
)
def test_list_rejects_bad_parameters(ferryman_mock, params, param):
    with pytest.raises(openai.BadRequestError) as caught:
        ferryman_mock.client.files.list(extra_query=params)
    assert caught.value.param == param


def test_batch_files_expire_after_30_days_and_expires_after_is_honoured(ferryman_mock):
    client = ferryman_mock.client
    batch_file = client.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")
    assert batch_file.expires_at == batch_file.created_at + 30 * 24 * 3600
    short = client.files.create(
        file=("a.txt", b"x"), purpose="user_data", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert short.expires_at == short.created_at + 3600
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(
            file=("a.txt", b"x"), purpose="user_data", expires_after={"anchor": "created_at", "seconds": 60}
        )
    assert caught.value.param == "expires_after.seconds"


def test_an_expired_file_is_gone(ferryman_mock):
    file_id = upload(ferryman_mock.client)
    stored = ferryman_mock.app.store.get("files", file_id)
    stored["expires_at"] = now() - 1
    empty = ferryman_mock.client.files.with_raw_response.list()
    assert empty.http_response.json() == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }
    with pytest.raises(openai.NotFoundError):
        ferryman_mock.client.files.retrieve(file_id)


def test_evals_files_are_accepted(ferryman_mock):
    # ``evals`` is an upload purpose (CreateFileRequest, the SDK's FilePurpose) that the spec's
    # OpenAIFile.purpose enum does not list; the vendored spec adds it.
    raw = ferryman_mock.client.files.with_raw_response.create(file=("set.jsonl", b"{}\n"), purpose="evals")
    assert raw.http_response.json()["purpose"] == "evals"


def test_upload_errors_name_the_parameter(ferryman_mock):
    client = ferryman_mock.client
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("a.txt", b"x"), purpose="homework")  # type: ignore[arg-type]
    assert caught.value.param == "purpose"
    assert "Supported values are" in caught.value.message

    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("empty.txt", b""), purpose="user_data")
    assert (caught.value.param, caught.value.code) == ("file", "empty_file")

    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("in.csv", b"a,b\n"), purpose="batch")
    assert (caught.value.param, caught.value.code) == ("file", "invalid_file_format")


FILE_PART = ("file", "a.txt", "x")


@pytest.mark.parametrize(
    ("parts", "param"),
    [
        ([FILE_PART], "purpose"),
        ([("purpose", None, "user_data")], "file"),
        ([("purpose", None, "user_data"), ("file", None, "not a file part")], "file"),
        ([FILE_PART, ("purpose", None, "user_data"), ("colour", None, "red")], "colour"),
        (
            [FILE_PART, ("purpose", None, "user_data"), ("expires_after[anchor]", None, "last_used_at")],
            "expires_after.anchor",
        ),
    ],
)
def test_malformed_forms_are_400s(ferryman_mock, parts, param):
    reply = httpx2.post(
        ferryman_mock.base_url + "/files",
        headers={"Authorization": f"Bearer {ferryman_mock.api_key}", "Content-Type": "multipart/form-data; boundary=b"},
        content=_form(parts),
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == param


def _form(parts: list[tuple[str, str | None, str]]) -> bytes:
    out = ""
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--b\r\nContent-Disposition: {disposition}\r\n\r\n{value}\r\n"
    return (out + "--b--\r\n").encode()


def test_json_body_is_refused(ferryman_mock):
    reply = httpx2.post(
        ferryman_mock.base_url + "/files",
        headers={"Authorization": f"Bearer {ferryman_mock.api_key}"},
        json={"purpose": "user_data"},
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "invalid_request_error"


def test_size_limits(ferryman_mock, monkeypatch):
    ferryman_mock.app.settings.max_file_bytes = 100
    client = ferryman_mock.client
    assert client.files.create(file=("ok.txt", b"x" * 100), purpose="user_data").bytes == 100
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("big.txt", b"x" * 101), purpose="user_data")
    assert (caught.value.param, caught.value.code) == ("file", "file_too_large")

    ferryman_mock.app.settings.max_file_bytes = 10_000
    monkeypatch.setattr(files_module, "MAX_BATCH_FILE_BYTES", 50)
    with pytest.raises(openai.BadRequestError, match="File is too large"):
        client.files.create(file=("in.jsonl", b"{}\n" * 20), purpose="batch")
    assert client.files.create(file=("a.txt", b"{}\n" * 20), purpose="user_data").bytes == 60


def test_upload_without_content_length_is_capped_while_streaming(ferryman_mock):
    ferryman_mock.app.settings.max_file_bytes = 10

    def body():
        yield b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n\r\n'
        for _ in range(100):
            yield b"x" * 65_536  # 6.5 MB, far past the cap and the front door's 1 MB form allowance
        yield b"\r\n--b--\r\n"

    reply = httpx2.post(
        ferryman_mock.base_url + "/files",
        headers={"Authorization": f"Bearer {ferryman_mock.api_key}", "Content-Type": "multipart/form-data; boundary=b"},
        content=body(),
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "file_too_large"
    assert ferryman_mock.app.store.all("files") == []
