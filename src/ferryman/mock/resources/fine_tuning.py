"""``/v1/fine_tuning/jobs``: create, list, retrieve, cancel, pause, resume, events, checkpoints.

A job runs in the background over ``settings.finetune_seconds`` (read live):
``validating_files`` → ``queued`` → ``running`` → ``succeeded``, emitting the events OpenAI
emits (including ``metrics`` events per step), checkpoints for the last three epochs, a
results file (base64 CSV, as OpenAI sends it) and a fine-tuned model that chat completions
then serve. A data problem fails the job at ``validating_files`` with an ``error`` naming the
example. With ``--state DIR`` unfinished jobs resume after a restart.

Events, checkpoints and progress live inside the stored job under ``_ferryman`` so they
persist with it; they are stripped from every reply.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import random
from typing import TYPE_CHECKING, Any

from ferryman.catalogue import base_model
from ferryman.errors import invalid_request, not_found
from ferryman.mock.call import Call, Endpoint, json_response
from ferryman.mock.finetune_data import (
    ALIASES,
    HYPERPARAMETERS,
    SNAPSHOTS,
    DataProblem,
    Plan,
    check_file,
    data_kind,
    method_for,
    metrics,
    resolve_hyperparameters,
    results_csv,
)
from ferryman.mock.resources.files import create_file, get_file, list_page
from ferryman.mock.state import new_id, now

if TYPE_CHECKING:
    from ferryman.mock.app import MockApp

log = logging.getLogger("ferryman.mock")

KIND = "fine_tuning_jobs"
ORG = "ferryman-mock"
ORGANIZATION_ID = "org-ferryman-mock"
TERMINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("validating_files", "queued", "running")

TICK_SECONDS = 0.05  # how often a waiting job looks at its status and the settings
# Share of finetune_seconds spent in each phase.
VALIDATING, QUEUED, RUNNING, FINISHING = 0.15, 0.1, 0.7, 0.05


# -- create -----------------------------------------------------------------------------------------


def _base_for(app: MockApp, model: str) -> str:
    """The model a job records: a snapshot, or a fine-tuned model to continue training."""
    if model.startswith("ft:") and any(j.get("fine_tuned_model") == model for j in app.store.all(KIND)):
        return model
    snapshot = ALIASES.get(model, model)
    if snapshot in SNAPSHOTS:
        return snapshot
    raise invalid_request(
        f"Model {model} is not available for fine-tuning or does not exist.", "model", "model_not_available"
    )


def _check_file(app: MockApp, file_id: Any, param: str) -> None:
    obj = get_file(app, file_id) if isinstance(file_id, str) else None
    if obj is None:
        raise invalid_request(f"invalid {param}: {file_id}", param)
    if obj.get("purpose") != "fine-tune":
        raise invalid_request(
            f"Invalid file purpose for {param} {file_id}: expected 'fine-tune', got '{obj.get('purpose')}'.", param
        )


def _check_metadata(metadata: Any) -> None:
    if not metadata:
        return
    if len(metadata) > 16:
        raise invalid_request("Invalid 'metadata': too many keys (at most 16).", "metadata", "invalid_value")
    for key, value in metadata.items():
        if len(key) > 64 or len(value) > 512:
            raise invalid_request(
                "Invalid 'metadata': keys are at most 64 characters and values at most 512.",
                "metadata",
                "invalid_value",
            )


def _public(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if not k.startswith("_")}


def _event(
    job: dict[str, Any], message: str, *, level: str = "info", data: dict[str, Any] | None = None, kind: str = "message"
) -> None:
    """Log an event on the job. (OpenAI has sent ``data: null`` on some; the spec says object, so ``{}``.)"""
    job["_ferryman"]["events"].append(
        {
            "object": "fine_tuning.job.event",
            "id": new_id("ftevent-"),
            "created_at": now(),
            "level": level,
            "message": message,
            "data": data or {},
            "type": kind,
        }
    )


async def create(call: Call) -> Any:
    app, body = call.app, call.body
    base = _base_for(app, body["model"])
    method = method_for(body, base)
    _check_file(app, body["training_file"], "training_file")
    if body.get("validation_file") is not None:
        _check_file(app, body["validation_file"], "validation_file")
    _check_metadata(body.get("metadata"))
    suffix = body.get("suffix")
    seed = body.get("seed")
    job_id = new_id("ftjob-")
    hyper = method[method["type"]]["hyperparameters"]
    job: dict[str, Any] = {
        "object": "fine_tuning.job",
        "id": job_id,
        "model": base,
        "created_at": now(),
        "finished_at": None,
        "fine_tuned_model": None,
        "organization_id": ORGANIZATION_ID,
        "result_files": [],
        "status": "validating_files",
        "validation_file": body.get("validation_file"),
        "training_file": body["training_file"],
        "hyperparameters": {k: hyper[k] for k in HYPERPARAMETERS["supervised"]},
        "method": method,
        "metadata": body.get("metadata"),
        "error": None,
        "estimated_finish": None,
        "integrations": body.get("integrations") or [],
        "seed": seed if isinstance(seed, int) else random.randrange(2**31),
        "trained_tokens": None,
        "user_provided_suffix": suffix,
        "_ferryman": {
            "events": [],
            "checkpoints": [],
            "model_name": f"ft:{base_model(base)}:{ORG}:{suffix or ''}:{new_id('', 8)}",
        },
    }
    _event(job, f"Created fine-tuning job: {job_id}")
    files = f"training file: {job['training_file']}"
    if job["validation_file"]:
        files += f" and validation file: {job['validation_file']}"
    _event(job, f"Validating {files}")
    app.store.put(KIND, job)
    app.tasks.spawn(run(app, job_id))
    return json_response(_public(job))


# -- the lifecycle ----------------------------------------------------------------------------------


async def _wait(app: MockApp, job_id: str, share: float) -> dict[str, Any] | None:
    """Spend ``share`` of finetune_seconds, standing still while the job is paused; None if it ended.

    Sleeps in short ticks and re-reads the setting each tick, so changing ``finetune_seconds``
    at run time speeds up or slows down jobs already under way.
    """
    done = 0.0  # of this wait, as a fraction
    while True:
        job = app.store.get(KIND, job_id)
        if job is None or job["status"] in TERMINAL:
            return None
        if job["status"] == "paused":
            await asyncio.sleep(TICK_SECONDS)
            continue
        length = app.settings.finetune_seconds * share
        if length <= 0 or done >= 1 - 1e-9:
            return job
        tick = min(length * (1 - done), TICK_SECONDS)
        await asyncio.sleep(tick)
        done += tick / length


def _validate(app: MockApp, job: dict[str, Any]) -> None:
    kind, model = data_kind(job["method"]["type"], job["model"]), job["model"]
    try:
        datasets = {}
        for param in ("training_file", "validation_file"):
            file_id = job[param]
            if file_id is None:
                continue
            data = app.store.get_blob(file_id) if get_file(app, file_id) is not None else None
            if data is None:
                gone = f"The job failed because {param} {file_id} no longer exists."
                raise DataProblem(f"invalid_{param}", gone, param)
            datasets[param] = check_file(data, kind, model, param)
    except DataProblem as problem:
        job.update(status="failed", error=problem.as_error())
        _event(job, problem.message, level="error")
        return
    train = datasets["training_file"]
    hyper = job["method"][job["method"]["type"]]["hyperparameters"]
    resolve_hyperparameters(hyper, train.n_examples)
    job["hyperparameters"] = {k: hyper[k] for k in HYPERPARAMETERS["supervised"]}
    plan = Plan.of(train.n_examples, hyper["batch_size"], hyper["n_epochs"])
    job["_ferryman"].update(
        n_examples=train.n_examples,
        tokens=train.tokens,
        total_steps=plan.total_steps,
        step=0,
        checkpoint_steps=plan.checkpoint_steps,
        validation="validation_file" in datasets,
    )
    job["status"] = "queued"
    _event(job, "Files validated, moving job to queued state")


def _train_step(job: dict[str, Any], step: int) -> None:
    state = job["_ferryman"]
    total = state["total_steps"]
    checkpoint = step in state["checkpoint_steps"]
    numbers = metrics(job["id"], step, total, state["validation"], checkpoint)
    message = f"Step {step}/{total}: training loss={numbers['train_loss']:.2f}"
    if "valid_loss" in numbers:
        message += f", validation loss={numbers['valid_loss']:.2f}"
    if "full_valid_loss" in numbers:
        message += f", full validation loss={numbers['full_valid_loss']:.2f}"
    data = {k: v for k, v in numbers.items() if k != "step"} | {"step": step, "total_steps": total}
    _event(job, message, data=data, kind="metrics")
    if checkpoint:
        state["checkpoints"].append(
            {
                "object": "fine_tuning.job.checkpoint",
                "id": new_id("ftckpt_"),
                "created_at": now(),
                "fine_tuned_model_checkpoint": f"{state['model_name']}:ckpt-step-{step}",
                "fine_tuning_job_id": job["id"],
                "step_number": step,
                "metrics": numbers,
            }
        )
        _event(job, f"Checkpoint created at step {step}")
    state["step"] = step


def _results_file(app: MockApp, job: dict[str, Any]) -> str:
    state = job["_ferryman"]
    csv = results_csv(job["id"], state["total_steps"], state["validation"])
    # OpenAI serves fine-tuning results base64-encoded; clients decode them.
    return str(create_file(app, base64.b64encode(csv), "step_metrics.csv", "fine-tune-results")["id"])


def _succeed(app: MockApp, job: dict[str, Any]) -> None:
    state = job["_ferryman"]
    name = state["model_name"]
    _event(job, f"New fine-tuned model created: {name}")
    _event(job, "Evaluating model against our usage policies")
    _event(job, "Usage policy evaluations completed, model is now enabled for sampling")
    job.update(
        status="succeeded",
        fine_tuned_model=name,
        finished_at=now(),
        estimated_finish=None,
        trained_tokens=state["tokens"] * job["hyperparameters"]["n_epochs"],
        result_files=[_results_file(app, job)],
    )
    _event(job, "The job has successfully completed")


async def _advance(app: MockApp, job_id: str) -> bool:
    """Move the job one phase on; False once it has ended (or vanished)."""
    job = app.store.get(KIND, job_id)
    if job is None or job["status"] in TERMINAL:
        return False
    status = job["status"]
    if status == "paused":
        job = await _wait(app, job_id, 0)
    elif status == "validating_files":
        job = await _wait(app, job_id, VALIDATING)
        if job is not None:
            _validate(app, job)
    elif status == "queued":
        job = await _wait(app, job_id, QUEUED)
        if job is not None:
            job.update(status="running", estimated_finish=now() + math.ceil(app.settings.finetune_seconds * RUNNING))
            _event(job, "Fine-tuning job started")
    else:  # running: train up to the end, then publish the model
        state = job["_ferryman"]
        total, done = state["total_steps"], state["step"]
        plan = Plan(total, state["checkpoint_steps"])
        for step in (s for s in plan.report_steps() if s > done):
            job = await _wait(app, job_id, RUNNING * (step - done) / total)
            if job is None:
                return False
            _train_step(job, step)
            app.store.put(KIND, job)
            done = step
        job = await _wait(app, job_id, FINISHING)
        if job is not None:
            _succeed(app, job)
    if job is not None:
        app.store.put(KIND, job)
    return job is not None


async def run(app: MockApp, job_id: str) -> None:
    try:
        while await _advance(app, job_id):
            pass
    except asyncio.CancelledError:
        raise
    except Exception:  # a bug in the mock: fail the job as OpenAI does on an internal error, keep serving
        log.exception("fine-tuning job %s crashed", job_id)
        job = app.store.get(KIND, job_id)
        if job is not None and job["status"] not in TERMINAL:
            job.update(
                status="failed",
                error={"code": "internal_error", "param": None, "message": "The job failed due to an internal error."},
            )
            app.store.put(KIND, job)


async def on_startup(app: MockApp) -> None:
    """Resume jobs that were still running when the mock stopped (``--state DIR``)."""
    for job in app.store.all(KIND):
        if job["status"] not in TERMINAL:
            app.tasks.spawn(run(app, job["id"]))


def serves(app: MockApp, model: str) -> bool:
    """Whether ``model`` is a fine-tuned model or checkpoint made here (OpenAI serves both)."""
    for job in app.store.all(KIND):
        checkpoints = job.get("_ferryman", {}).get("checkpoints", [])
        if job.get("fine_tuned_model") == model or any(c["fine_tuned_model_checkpoint"] == model for c in checkpoints):
            return True
    return False


# -- the other endpoints ----------------------------------------------------------------------------


def _job_or_404(call: Call) -> dict[str, Any]:
    job_id = call.path_params["fine_tuning_job_id"]
    job = call.app.store.get(KIND, job_id)
    if job is None:
        raise not_found(f"Could not find fine tune: {job_id}", "fine_tune_id", "fine_tune_not_found")
    return job


def _page(items: list[dict[str, Any]], call: Call, default: int, cursors: bool = False) -> dict[str, Any]:
    page = list_page(items, call.query, default_limit=default, max_limit=10_000)
    if not cursors:
        page.pop("first_id", None)
        page.pop("last_id", None)
    return page


async def list_jobs(call: Call) -> Any:
    jobs = call.app.store.all(KIND)
    pairs = call.query.multi_items()
    wanted = {k[len("metadata[") : -1]: v for k, v in pairs if k.startswith("metadata[") and k.endswith("]")}
    if call.query.get("metadata") == "null":
        jobs = [j for j in jobs if not j.get("metadata")]
    if wanted:
        jobs = [j for j in jobs if all((j.get("metadata") or {}).get(k) == v for k, v in wanted.items())]
    page = _page([_public(j) for j in jobs], call, 20)
    return json_response(page)


async def retrieve(call: Call) -> Any:
    return json_response(_public(_job_or_404(call)))


def _change(call: Call, allowed: tuple[str, ...], verb: str) -> dict[str, Any]:
    job = _job_or_404(call)
    if job["status"] not in allowed:
        message = f"Cannot {verb} a job with status '{job['status']}'."
        raise invalid_request(message, "fine_tuning_job_id", "invalid_state")
    return job


async def cancel(call: Call) -> Any:
    job = _change(call, (*ACTIVE, "paused"), "cancel")
    job.update(status="cancelled", estimated_finish=None)
    _event(job, "Fine-tuning job cancelled")
    call.app.store.put(KIND, job)
    return json_response(_public(job))


async def pause(call: Call) -> Any:
    job = _change(call, ACTIVE, "pause")
    job["_ferryman"]["paused_from"] = job["status"]
    job["status"] = "paused"
    _event(job, "Fine-tuning job paused")
    call.app.store.put(KIND, job)
    return json_response(_public(job))


async def resume(call: Call) -> Any:
    job = _change(call, ("paused",), "resume")
    job["status"] = job["_ferryman"].pop("paused_from", "running")
    _event(job, "Fine-tuning job resumed")
    call.app.store.put(KIND, job)
    return json_response(_public(job))


async def list_events(call: Call) -> Any:
    return json_response(_page(_job_or_404(call)["_ferryman"]["events"], call, 20))


async def list_checkpoints(call: Call) -> Any:
    return json_response(_page(_job_or_404(call)["_ferryman"]["checkpoints"], call, 10, cursors=True))


_JOB = "/v1/fine_tuning/jobs/{fine_tuning_job_id}"
ENDPOINTS = [
    Endpoint("POST", "/v1/fine_tuning/jobs", create, body="json", schema="CreateFineTuningJobRequest"),
    Endpoint("GET", "/v1/fine_tuning/jobs", list_jobs),
    Endpoint("GET", _JOB, retrieve),
    Endpoint("POST", f"{_JOB}/cancel", cancel),
    Endpoint("POST", f"{_JOB}/pause", pause),
    Endpoint("POST", f"{_JOB}/resume", resume),
    Endpoint("GET", f"{_JOB}/events", list_events),
    Endpoint("GET", f"{_JOB}/checkpoints", list_checkpoints),
]
