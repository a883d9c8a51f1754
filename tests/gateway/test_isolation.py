"""Isolation between virtual keys: a key sees only its own files, batches, fine-tuning jobs and
stored responses. Another key's id answers 404 exactly as an id that does not exist, for every
way of naming it (retrieve, content, delete, cancel, events, input items, lists, and as a field
of a new request), and the refused request never reaches the upstream. Objects a batch or a job
produces (output and result files) belong to the key that owns the batch or job.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

MESSAGES = [{"role": "user", "content": "Say hello."}]
FT_MODEL = "gpt-4o-mini-2024-07-18"


def batch_input(n: int = 2) -> bytes:
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 5}}
        for i in range(n)
    ]  # fmt: skip
    return "\n".join(json.dumps(line) for line in lines).encode()


def training_data(n: int = 10) -> bytes:
    examples = [
        {"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]}
        for i in range(n)
    ]
    return "\n".join(json.dumps(e) for e in examples).encode()


def upload(client: openai.OpenAI, data: bytes, purpose: Any, name: str = "data.jsonl") -> Any:
    return client.files.create(file=(name, io.BytesIO(data)), purpose=purpose)


def not_found(call: Callable[[], Any]) -> openai.NotFoundError:
    with pytest.raises(openai.NotFoundError) as caught:
        call()
    return caught.value


def wait_for(fetch: Callable[[], Any], done: Callable[[Any], bool], seconds: float = 15) -> Any:
    """Poll ``fetch`` until ``done`` holds (the mock runs batches and jobs in the background)."""
    deadline = time.monotonic() + seconds
    while True:
        value = fetch()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"not done after {seconds}s: {value}"
        time.sleep(0.05)  # polling towards a deadline, not ordering


def upstream_calls(mock: Any, object_id: str) -> list[str]:
    """The requests the mock received that named ``object_id`` (in the path or the body)."""
    return [f"{r['method']} {r['path']}" for r in mock.requests() if object_id in json.dumps(r)]


@pytest.fixture
def two_keys(gateway: Callable[..., Any]) -> tuple[openai.OpenAI, openai.OpenAI]:
    """Alice's and Bob's clients, each with its own virtual key on one gateway."""
    gw = gateway()
    return gw.client(gw.new_key("alice")), gw.client(gw.new_key("bob"))


def test_files_are_invisible_to_other_keys(two_keys, ferryman_mock):
    """Bob cannot retrieve, download or delete Alice's file, nor see it listed; his 404 is the one
    for a file that does not exist; Alice's file is untouched and the mock never saw Bob ask."""
    alice, bob = two_keys
    file = upload(alice, b"alice's private data", "user_data", "notes.txt")
    own = upload(bob, b"bob's data", "user_data", "mine.txt")
    before = len(upstream_calls(ferryman_mock, file.id))

    refused = not_found(lambda: bob.files.retrieve(file.id))
    assert refused.body == {
        "message": f"No such File object: {file.id}",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    missing = not_found(lambda: bob.files.retrieve("file-doesnotexist"))
    assert missing.body["message"].replace("file-doesnotexist", file.id) == refused.body["message"]
    not_found(lambda: bob.files.content(file.id))
    not_found(lambda: bob.files.delete(file.id))
    assert [f.id for f in bob.files.list()] == [own.id]
    assert upstream_calls(ferryman_mock, file.id)[before:] == []  # refused at the gateway

    assert alice.files.content(file.id).content == b"alice's private data"
    assert [f.id for f in alice.files.list()] == [file.id]
    assert alice.files.delete(file.id).deleted


def test_batches_are_isolated_and_their_output_belongs_to_the_owner(two_keys, ferryman_mock):
    """Bob cannot make a batch from Alice's input file, nor retrieve, cancel or list her batch;
    once it completes, its output file is Alice's to read and a 404 for Bob."""
    alice, bob = two_keys
    ferryman_mock.settings(batch_seconds=0.4)
    file = upload(alice, batch_input(), "batch")
    stolen = not_found(
        lambda: bob.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    )
    assert stolen.param == "input_file_id" and file.id in stolen.message
    batch = alice.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    not_found(lambda: bob.batches.retrieve(batch.id))
    not_found(lambda: bob.batches.cancel(batch.id))
    assert bob.batches.list().data == []
    assert [b.id for b in alice.batches.list()] == [batch.id]

    done = wait_for(lambda: alice.batches.retrieve(batch.id), lambda b: b.status in ("completed", "failed"))
    assert done.status == "completed" and done.output_file_id
    lines = alice.files.content(done.output_file_id).text.splitlines()
    assert sorted(json.loads(line)["custom_id"] for line in lines) == ["r0", "r1"]
    not_found(lambda: bob.files.retrieve(done.output_file_id))
    not_found(lambda: bob.files.content(done.output_file_id))
    assert [r for r in upstream_calls(ferryman_mock, batch.id) if "cancel" in r] == []
    assert upstream_calls(ferryman_mock, file.id).count("POST /v1/batches") == 1  # Alice's alone


def test_fine_tuning_jobs_are_isolated(two_keys, ferryman_mock):
    """Bob cannot train on Alice's file (as training or validation file), nor retrieve, cancel,
    list or read the events of her job; its result file is hers alone."""
    alice, bob = two_keys
    ferryman_mock.settings(finetune_seconds=0.5)
    training = upload(alice, training_data(), "fine-tune")
    bobs = upload(bob, training_data(), "fine-tune")
    stolen = not_found(lambda: bob.fine_tuning.jobs.create(model=FT_MODEL, training_file=training.id))
    assert stolen.param == "training_file"
    stolen = not_found(
        lambda: bob.fine_tuning.jobs.create(model=FT_MODEL, training_file=bobs.id, validation_file=training.id)
    )
    assert stolen.param == "validation_file"
    job = alice.fine_tuning.jobs.create(model=FT_MODEL, training_file=training.id)
    not_found(lambda: bob.fine_tuning.jobs.retrieve(job.id))
    not_found(lambda: bob.fine_tuning.jobs.list_events(job.id))
    not_found(lambda: bob.fine_tuning.jobs.cancel(job.id))
    assert bob.fine_tuning.jobs.list().data == []
    assert [j.id for j in alice.fine_tuning.jobs.list()] == [job.id]
    assert alice.fine_tuning.jobs.list_events(job.id).data  # her own job's events

    done = wait_for(lambda: alice.fine_tuning.jobs.retrieve(job.id), lambda j: j.status in ("succeeded", "failed"))
    assert done.status == "succeeded" and done.result_files
    assert alice.files.content(done.result_files[0]).content
    not_found(lambda: bob.files.content(done.result_files[0]))
    assert upstream_calls(ferryman_mock, training.id).count("POST /v1/fine_tuning/jobs") == 1  # Alice's alone
    assert [r for r in upstream_calls(ferryman_mock, job.id) if "cancel" in r] == []


def test_stored_responses_are_isolated(two_keys, ferryman_mock):
    """Bob cannot retrieve, delete or list the input items of Alice's stored responses (plain or
    streamed), nor continue them with previous_response_id; Alice can."""
    alice, bob = two_keys
    first = alice.responses.create(model="gpt-4o-mini", input="Remember the word 'otter'.")
    with alice.responses.stream(model="gpt-4o-mini", input="Write a haiku.") as stream:
        for _ in stream:
            pass
        streamed = stream.get_final_response()
    for response_id in (first.id, streamed.id):
        not_found(lambda rid=response_id: bob.responses.retrieve(rid))
        not_found(lambda rid=response_id: bob.responses.input_items.list(rid))
        not_found(lambda rid=response_id: bob.responses.delete(rid))
    stolen = not_found(
        lambda: bob.responses.create(model="gpt-4o-mini", input="What was the word?", previous_response_id=first.id)
    )
    assert stolen.param == "previous_response_id"
    assert upstream_calls(ferryman_mock, first.id) == upstream_calls(ferryman_mock, streamed.id) == []

    follow_up = alice.responses.create(model="gpt-4o-mini", input="What was the word?", previous_response_id=first.id)
    assert follow_up.previous_response_id == first.id
    assert alice.responses.retrieve(streamed.id).id == streamed.id
    assert alice.responses.input_items.list(first.id).data
    alice.responses.delete(first.id)


def test_files_named_inside_inputs_are_checked_too(two_keys, ferryman_mock):
    """A file id inside a message (a Responses ``input_file`` part, a chat ``file`` part) is
    another way to read a file: Bob naming Alice's file there gets the same 404."""
    alice, bob = two_keys
    file = upload(alice, b"%PDF-1.4 alice's contract", "user_data", "contract.pdf")
    before = len(upstream_calls(ferryman_mock, file.id))
    part = {"type": "input_file", "file_id": file.id}
    not_found(
        lambda: bob.responses.create(
            model="gpt-4o-mini", input=[{"role": "user", "content": [part, {"type": "input_text", "text": "Sum up."}]}]
        )
    )
    not_found(
        lambda: bob.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": [{"type": "file", "file": {"file_id": file.id}}]}],
        )
    )
    assert upstream_calls(ferryman_mock, file.id)[before:] == []
    reply = alice.responses.create(
        model="gpt-4o-mini", input=[{"role": "user", "content": [part, {"type": "input_text", "text": "Sum up."}]}]
    )
    assert reply.output_text


def test_stored_chat_completions_are_isolated(two_keys, ferryman_mock):
    """A chat completion made with ``store: true`` belongs to its key: another key's retrieve,
    messages or delete answers 404 at the gateway, and a plain (unstored) call records nothing."""
    alice, bob = two_keys
    stored = alice.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, store=True)
    unstored = alice.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    for call in (
        lambda: bob.chat.completions.retrieve(stored.id),
        lambda: bob.chat.completions.messages.list(stored.id),
        lambda: bob.chat.completions.delete(stored.id),
        lambda: alice.chat.completions.retrieve(unstored.id),
    ):
        assert "not found" in not_found(call).message
    assert upstream_calls(ferryman_mock, stored.id) == []
    assert upstream_calls(ferryman_mock, unstored.id) == []
