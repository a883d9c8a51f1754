"""``ferryman serve``: the OpenAI-compatible gateway on the pipeline.

- :mod:`.app`: the ASGI app (proxy, admin API, dashboard, metrics, health)
- :mod:`.proxy`: ``/v1/…`` through the pipeline, streams forwarded as they come
- :mod:`.auth`: virtual key → principal; the admin key
- :mod:`.keys`: virtual keys and teams (stored hashed), usage per key
- :mod:`.ownership`: a key sees only its own files, batches, jobs and stored responses
- :mod:`.admin`: the admin HTTP API; :mod:`.access_log`: JSON access lines
- :mod:`.server`: uvicorn, in the foreground or on a thread; :mod:`.cli`: ``serve`` and ``keys``
"""

from ferryman.gateway.app import Gateway

__all__ = ["Gateway"]
