"""Fine-tuning jobs against the mock, through the official SDK over real HTTP."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from ferryman.mock import spec
from ferryman.mock.app import MockApp
from ferryman.mock.control_client import TEST_KEY
from ferryman.mock.server import BackgroundServer
from ferryman.mock.settings import MockSettings
from ferryman.tokens import count_chat_messages

FAST = 0.3  # finetune_seconds for jobs a test waits out
SLOW = 60.0  # for jobs a test must catch before they finish


def chat_example(i: int) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": "You are Marv, a sarcastic assistant."},
            {"role": "user", "content": f"What is {i} plus {i}?"},
            {"role": "assistant", "content": f"{2 * i}. Groundbreaking maths, I know.", "weight": 1},
        ]
    }


def dpo_example(i: int) -> dict[str, Any]:
    return {
        "input": {"messages": [{"role": "user", "content": f"Name a prime above {i}."}]},
        "preferred_output": [{"role": "assistant", "content": "Here is one: 101."}],
        "non_preferred_output": [{"role": "assistant", "content": "No."}],
    }


def jsonl(examples: list[Any]) -> bytes:
    return "".join(json.dumps(e) + "\n" for e in examples).encode()


def upload(client: openai.OpenAI, data: bytes, purpose: str = "fine-tune", name: str = "train.jsonl") -> str:
    return client.files.create(file=(name, data), purpose=purpose).id  # type: ignore[arg-type]


def wait_until(client: openai.OpenAI, job_id: str, done: Callable[[Any], bool], deadline: float = 10.0) -> Any:
    """Poll the job until ``done(job)`` or the deadline passes."""
    end = time.monotonic() + deadline
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if done(job):
            return job
        assert time.monotonic() < end, f"job stayed {job.status}"
        time.sleep(0.02)


def finished(client: openai.OpenAI, job_id: str) -> Any:
    return wait_until(client, job_id, lambda j: j.status in ("succeeded", "failed", "cancelled"))


def raw_json(client: openai.OpenAI, path: str, **params: Any) -> Any:
    return client.get(path, cast_to=object, options={"params": params})


def assert_valid(schema: str, body: Any) -> None:
    assert spec.response_errors(schema, body) == []


# -- the happy paths ------------------------------------------------------------------------------


def test_supervised_job_trains_and_its_model_is_served(ferryman_mock):
    ferryman_mock.settings(finetune_seconds=FAST)
    client = ferryman_mock.client
    examples = [chat_example(i) for i in range(12)]
    training = upload(client, jsonl(examples))
    validation = upload(client, jsonl([chat_example(i) for i in range(20, 23)]), name="valid.jsonl")

    raw = client.fine_tuning.jobs.with_raw_response.create(
        model="gpt-4o-mini", training_file=training, validation_file=validation, suffix="marv", metadata={"team": "a"}
    )
    body = raw.http_response.json()
    assert_valid("FineTuningJob", body)
    assert body["status"] == "validating_files"
    assert body["model"] == "gpt-4o-mini-2024-07-18"
    assert body["hyperparameters"] == {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"}
    assert body["method"]["type"] == "supervised"
    assert body["fine_tuned_model"] is None and body["trained_tokens"] is None

    job = finished(client, body["id"])
    assert job.status == "succeeded", job.error
    done = raw_json(client, f"/fine_tuning/jobs/{job.id}")
    assert_valid("FineTuningJob", done)
    assert re.fullmatch(r"ft:gpt-4o-mini-2024-07-18:ferryman-mock:marv:[A-Za-z0-9]{8}", job.fine_tuned_model)
    assert job.hyperparameters.n_epochs == 3 and job.hyperparameters.batch_size == 1
    assert job.method.supervised.hyperparameters.n_epochs == 3
    per_epoch = sum(count_chat_messages(e["messages"], "gpt-4o-mini-2024-07-18") for e in examples)
    assert job.trained_tokens == per_epoch * 3
    assert job.finished_at is not None and job.error is None

    events = raw_json(client, f"/fine_tuning/jobs/{job.id}/events", limit=100)
    assert_valid("ListFineTuningJobEventsResponse", events)
    messages = [e["message"] for e in events["data"]]
    assert messages[0] == "The job has successfully completed"  # newest first
    assert messages[-1] == f"Created fine-tuning job: {job.id}"
    assert f"Validating training file: {training} and validation file: {validation}" in messages
    assert "Files validated, moving job to queued state" in messages
    assert "Fine-tuning job started" in messages
    assert f"New fine-tuned model created: {job.fine_tuned_model}" in messages
    steps = [e for e in events["data"] if e["type"] == "metrics"]
    assert steps and steps[0]["message"].startswith("Step 36/36: training loss=")
    assert "full validation loss=" in steps[0]["message"]
    assert steps[0]["data"]["total_steps"] == 36 and steps[0]["data"]["train_loss"] > 0

    checkpoints = raw_json(client, f"/fine_tuning/jobs/{job.id}/checkpoints")
    assert_valid("ListFineTuningJobCheckpointsResponse", checkpoints)
    assert [c["step_number"] for c in checkpoints["data"]] == [36, 24, 12]
    assert checkpoints["data"][0]["fine_tuned_model_checkpoint"] == f"{job.fine_tuned_model}:ckpt-step-36"
    assert {"train_loss", "valid_loss", "full_valid_loss"} <= set(checkpoints["data"][0]["metrics"])
    assert checkpoints["first_id"] == checkpoints["data"][0]["id"]

    results = client.files.retrieve(job.result_files[0])
    assert results.purpose == "fine-tune-results" and results.filename == "step_metrics.csv"
    csv = base64.b64decode(client.files.content(results.id).content).decode().splitlines()
    assert csv[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    assert len(csv) == 37

    reply = client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "Hi"}])
    assert reply.model == job.fine_tuned_model and reply.choices[0].message.content
    assert client.models.retrieve(job.fine_tuned_model).id == job.fine_tuned_model
    assert job.fine_tuned_model in {m.id for m in client.models.list()}


def test_dpo_job_succeeds(ferryman_mock):
    ferryman_mock.settings(finetune_seconds=FAST)
    client = ferryman_mock.client
    training = upload(client, jsonl([dpo_example(i) for i in range(10)]))
    job = client.fine_tuning.jobs.create(
        model="gpt-4.1-mini",
        training_file=training,
        seed=42,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}},
    )
    assert job.method.dpo.hyperparameters.beta == 0.2 and job.seed == 42
    job = finished(client, job.id)
    assert job.status == "succeeded", job.error
    assert_valid("FineTuningJob", raw_json(client, f"/fine_tuning/jobs/{job.id}"))
    assert job.model == "gpt-4.1-mini-2025-04-14"
    assert job.fine_tuned_model.startswith("ft:gpt-4.1-mini-2025-04-14:ferryman-mock::")
    assert job.method.dpo.hyperparameters.beta == 0.2
    assert job.method.dpo.hyperparameters.n_epochs == 3
    assert job.trained_tokens > 0


def test_legacy_completion_model_with_deprecated_hyperparameters(ferryman_mock):
    ferryman_mock.settings(finetune_seconds=FAST)
    client = ferryman_mock.client
    training = upload(client, jsonl([{"prompt": f"{i} + 1 =", "completion": f" {i + 1}"} for i in range(10)]))
    job = client.fine_tuning.jobs.create(model="babbage-002", training_file=training, hyperparameters={"n_epochs": 2})
    job = finished(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.hyperparameters.n_epochs == 2
    assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)] == [20, 10]
    assert client.completions.create(model=job.fine_tuned_model, prompt="1 + 1 =").model == job.fine_tuned_model


# -- data problems fail the job while validating ---------------------------------------------------


def _bad_role(lines: list[str]) -> None:
    lines[2] = json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "bob", "content": "y"}]})


def _no_assistant(lines: list[str]) -> None:
    lines[4] = json.dumps({"messages": [{"role": "user", "content": "x"}]})


@pytest.mark.parametrize(
    ("break_it", "code", "expected"),
    [
        (
            lambda lines: lines.__delitem__(slice(9, None)),
            "invalid_n_examples",
            "Training file has 9 example(s), but must have at least 10 examples",
        ),
        (
            lambda lines: lines.__setitem__(3, '{"messages": [oops'),
            "invalid_training_file",
            "Example 4 cannot be parsed",
        ),
        (_bad_role, "invalid_training_file", "Example 3, message 2 Input tag 'bob'"),
        (_no_assistant, "invalid_training_file", "Example 5 has no assistant message"),
        (
            lambda lines: lines.__setitem__(0, '{"prompt": "a", "completion": "b"}'),
            "invalid_training_file",
            "Example 1 is missing key 'messages'",
        ),
    ],
)
def test_bad_training_data_fails_the_job_naming_the_problem(ferryman_mock, break_it, code, expected):
    ferryman_mock.settings(finetune_seconds=FAST)
    client = ferryman_mock.client
    lines = [json.dumps(chat_example(i)) for i in range(12)]
    break_it(lines)
    training = upload(client, ("\n".join(lines) + "\n").encode())
    job = finished(client, client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training).id)
    assert job.status == "failed"
    assert job.error.code == code and job.error.param == "training_file"
    assert expected in job.error.message
    if code == "invalid_training_file":
        assert job.error.message.startswith("The job failed due to an invalid training file. Invalid file format.")
    if "cannot be parsed" in expected:
        assert "(line 4)" in job.error.message
    assert job.fine_tuned_model is None and job.trained_tokens is None
    assert_valid("FineTuningJob", raw_json(client, f"/fine_tuning/jobs/{job.id}"))
    newest = client.fine_tuning.jobs.list_events(job.id, limit=1).data[0]
    assert newest.level == "error" and expected in newest.message


def test_dpo_method_needs_preference_data(ferryman_mock):
    ferryman_mock.settings(finetune_seconds=FAST)
    client = ferryman_mock.client
    training = upload(client, jsonl([chat_example(i) for i in range(10)]))
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training, method={"type": "dpo"})
    job = finished(client, job.id)
    assert job.status == "failed" and "Example 1 is missing key 'input'" in job.error.message


# -- refused at create -------------------------------------------------------------------------------


def test_training_file_must_exist_with_purpose_fine_tune(ferryman_mock):
    client = ferryman_mock.client
    wrong = upload(client, jsonl([chat_example(i) for i in range(10)]), purpose="assistants")
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=wrong)
    assert refused.value.body["param"] == "training_file"
    assert "'fine-tune'" in refused.value.body["message"]
    with pytest.raises(openai.BadRequestError) as missing:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file="file-nope")
    assert missing.value.body["message"] == "invalid training_file: file-nope"
    assert client.fine_tuning.jobs.list().data == []


@pytest.mark.parametrize(
    ("model", "method", "param"),
    [
        ("gpt-4o", None, "model"),
        ("gpt-5.5", None, "model"),
        ("ft:gpt-4o-mini-2024-07-18:ferryman-mock::nothere1", None, "model"),
        ("gpt-3.5-turbo", {"type": "dpo"}, "method.type"),
        ("o4-mini", None, "method.type"),
    ],
)
def test_model_and_method_must_be_fine_tunable(ferryman_mock, model, method, param):
    client = ferryman_mock.client
    training = upload(client, jsonl([chat_example(i) for i in range(10)]))
    extra = {"method": method} if method else {}
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model=model, training_file=training, **extra)
    assert refused.value.body["param"] == param
    if param == "model":
        assert refused.value.body["message"] == f"Model {model} is not available for fine-tuning or does not exist."


def test_request_schema_is_enforced(ferryman_mock):
    client = ferryman_mock.client
    training = upload(client, jsonl([chat_example(i) for i in range(10)]))
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training, suffix="x" * 65)
    assert refused.value.body["param"] == "suffix"


# -- control: cancel, pause, resume, list, unknown ids ---------------------------------------------------


def test_cancel_stops_a_job_and_only_once(ferryman_mock):
    ferryman_mock.settings(finetune_seconds=SLOW)
    client = ferryman_mock.client
    training = upload(client, jsonl([chat_example(i) for i in range(10)]))
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training)
    raw = client.fine_tuning.jobs.with_raw_response.cancel(job.id)
    body = raw.http_response.json()
    assert_valid("FineTuningJob", body)
    assert body["status"] == "cancelled" and body["fine_tuned_model"] is None
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert client.fine_tuning.jobs.list_events(job.id).data[0].message == "Fine-tuning job cancelled"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)


def test_pause_and_resume(ferryman_mock):
    ferryman_mock.settings(finetune_seconds=SLOW)
    client = ferryman_mock.client
    training = upload(client, jsonl([chat_example(i) for i in range(10)]))
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training)
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.pause(job.id)
    ferryman_mock.settings(finetune_seconds=0)  # an unpaused job would now finish at once
    # (Not read back with retrieve: OpenAI's spec and SDK leave "paused" out of the status enum.)
    newest = [client.fine_tuning.jobs.list_events(job.id, limit=1).data[0].message for _ in range(5)]
    assert newest == ["Fine-tuning job paused"] * 5
    ferryman_mock.settings(finetune_seconds=FAST)
    assert client.fine_tuning.jobs.resume(job.id).status == "validating_files"
    job = finished(client, job.id)
    assert job.status == "succeeded"
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert "Fine-tuning job paused" in messages and "Fine-tuning job resumed" in messages
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.resume(job.id)


def test_list_pages_newest_first_and_filters_by_metadata(ferryman_mock):
    ferryman_mock.settings(finetune_seconds=SLOW)
    client = ferryman_mock.client
    training = upload(client, jsonl([chat_example(i) for i in range(10)]))
    ids = [
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training, metadata={"team": team}).id
        for team in ("a", "b", "a")
    ]
    first = raw_json(client, "/fine_tuning/jobs", limit=2)
    assert_valid("ListPaginatedFineTuningJobsResponse", first)
    assert [j["id"] for j in first["data"]] == ids[::-1][:2] and first["has_more"] is True
    rest = raw_json(client, "/fine_tuning/jobs", limit=2, after=first["data"][-1]["id"])
    assert [j["id"] for j in rest["data"]] == [ids[0]] and rest["has_more"] is False
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1)] == ids[::-1]  # the SDK follows the cursor
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "a"})] == [ids[2], ids[0]]

    events = client.fine_tuning.jobs.list_events(ids[0], limit=1)
    assert len(events.data) == 1 and events.has_more
    assert [e.message for e in events][-1] == f"Created fine-tuning job: {ids[0]}"
    assert client.fine_tuning.jobs.checkpoints.list(ids[0]).data == []


def test_unknown_job_is_404(ferryman_mock):
    client = ferryman_mock.client
    for call in (
        client.fine_tuning.jobs.retrieve,
        client.fine_tuning.jobs.cancel,
        client.fine_tuning.jobs.list_events,
        client.fine_tuning.jobs.checkpoints.list,
    ):
        with pytest.raises(openai.NotFoundError) as missing:
            call("ftjob-nope")
        assert missing.value.body["message"] == "Could not find fine tune: ftjob-nope"


# -- restart ----------------------------------------------------------------------------------------------


def test_unfinished_job_resumes_after_restart(tmp_path: Path):
    def client_for(server: BackgroundServer) -> openai.OpenAI:
        return openai.OpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)

    with BackgroundServer(MockApp(MockSettings(state_dir=tmp_path, finetune_seconds=4.0))) as server:
        client = client_for(server)
        training = upload(client, jsonl([chat_example(i) for i in range(10)]))
        job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training)
        wait_until(client, job.id, lambda j: j.status == "running")
        client.close()
    with BackgroundServer(MockApp(MockSettings(state_dir=tmp_path, finetune_seconds=FAST))) as server:
        client = client_for(server)
        done = finished(client, job.id)
        assert done.status == "succeeded"
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
        assert messages.count("Fine-tuning job started") == 1
        assert client.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "Hi"}])
        client.close()
