"""One module per OpenAI API resource; each declares ``ENDPOINTS`` (and may define
``async def on_startup(app)`` to resume background work)."""

from ferryman.mock.resources import (
    batches,
    chat,
    completions,
    embeddings,
    files,
    fine_tuning,
    models,
    moderations,
    organization,
    responses,
)

ALL_MODULES = [chat, responses, embeddings, moderations, completions, models, files, batches, fine_tuning, organization]
