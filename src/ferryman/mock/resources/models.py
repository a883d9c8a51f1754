"""``/v1/models``: the catalogue with shutdown dates, plus fine-tuned models the mock made."""

from __future__ import annotations

from typing import Any

from ferryman import errors
from ferryman.catalogue import lookup, models
from ferryman.mock.call import Call, Endpoint, json_response


def _fine_tuned(call: Call) -> list[dict[str, Any]]:
    out = []
    for job in call.app.store.all("fine_tuning_jobs"):
        name = job.get("fine_tuned_model")
        if name:
            out.append(
                {
                    "id": name,
                    "object": "model",
                    "created": job.get("finished_at") or job["created_at"],
                    "owned_by": "user-ferryman-mock",
                    "shutdown_date": None,
                }
            )
    return out


def _dated(call: Call, entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` with a shutdown date announced at run time (``PUT /_ferryman/shutdown_dates``)."""
    announced = call.app.settings.shutdown_dates
    if entry["id"] in announced:
        date = announced[entry["id"]]
        return {**entry, "shutdown_date": date.isoformat() if date else None}
    return entry


async def list_models(call: Call) -> Any:
    data = [_dated(call, info.as_openai()) for info in models().values()] + _fine_tuned(call)
    return json_response({"object": "list", "data": data})


async def retrieve(call: Call) -> Any:
    model = call.path_params["model"]
    for entry in _fine_tuned(call):
        if entry["id"] == model:
            return json_response(_dated(call, entry))
    info = lookup(model)
    if info is None or model.startswith("ft:"):
        raise errors.model_not_found(model)
    return json_response(_dated(call, info.as_openai()))


async def delete(call: Call) -> Any:
    model = call.path_params["model"]
    for job in call.app.store.all("fine_tuning_jobs"):
        if job.get("fine_tuned_model") == model:
            job["fine_tuned_model"] = None
            call.app.store.put("fine_tuning_jobs", job)
            return json_response({"id": model, "object": "model", "deleted": True})
    if lookup(model) is not None:
        raise errors.OpenAIError(
            403, "You do not have permission to delete this model.", "invalid_request_error", "model"
        )
    raise errors.model_not_found(model)


ENDPOINTS = [
    Endpoint("GET", "/v1/models", list_models),
    Endpoint("GET", "/v1/models/{model:path}", retrieve),
    Endpoint("DELETE", "/v1/models/{model:path}", delete),
]
