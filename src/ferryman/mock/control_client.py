"""A client for the mock's control API, used by the pytest fixture and by scripts."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

import httpx2

if TYPE_CHECKING:
    import openai

    from ferryman.mock.app import MockApp

TEST_KEY = "sk-ferryman-mock-test"


class MockControlError(RuntimeError):
    pass


class MockControl:
    """Steer and observe a running mock at ``url`` (``http://host:port``)."""

    def __init__(self, url: str, app: MockApp | None = None, api_key: str = TEST_KEY) -> None:
        self.url = url.rstrip("/")
        self.base_url = self.url + "/v1"
        self.api_key = api_key
        self.app = app  # the app itself, when it runs in this process
        self._http = httpx2.Client(base_url=self.url + "/_ferryman", timeout=30)

    def _call(self, method: str, path: str, json: Any = None, **params: Any) -> Any:
        reply = self._http.request(method, path, json=json, params=params or None)
        if reply.status_code >= 400:
            raise MockControlError(reply.json().get("error", {}).get("message", reply.text))
        return reply.json()

    # -- clients ---------------------------------------------------------------------------

    @cached_property
    def client(self) -> openai.OpenAI:
        """An ``openai.OpenAI`` on the mock, with the SDK's retries off (faults stay visible)."""
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0)

    @cached_property
    def async_client(self) -> openai.AsyncOpenAI:
        import openai

        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0)

    # -- steering --------------------------------------------------------------------------

    def reset(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/reset")
        return result

    def settings(self, **changes: Any) -> dict[str, Any]:
        """Read, or change: rpm, tpm, quota_usd, latency_ms, batch_seconds, finetune_seconds, today
        (``"YYYY-MM-DD"``, or None for the real date)."""
        result: dict[str, Any] = (
            self._call("PATCH", "/settings", changes) if changes else self._call("GET", "/settings")
        )
        return result

    def set_limits(self, rpm: int | None = None, tpm: int | None = None, quota_usd: float | None = None) -> None:
        changes: dict[str, Any] = {"rpm": rpm, "tpm": tpm}
        if quota_usd is not None:
            changes["quota_usd"] = quota_usd
        self.settings(**changes)

    def set_today(self, today: str | None) -> None:
        """Act as on this date (``YYYY-MM-DD``; None: the real date) until the next reset."""
        self.settings(today=today)

    def set_shutdown_dates(self, dates: dict[str, str | None]) -> None:
        """Announce shutdown dates (``"YYYY-MM-DD"``, or None for none) over the shipped table's:
        served on ``GET /v1/models`` and enforced from that date, until :meth:`reset`."""
        self._call("PUT", "/shutdown_dates", {"dates": dates})

    def set_faults(self, rules: list[str]) -> None:
        self._call("PUT", "/faults", {"rules": rules})

    def set_fixtures(self, rules: list[dict[str, Any]]) -> None:
        self._call("PUT", "/fixtures", {"rules": rules})

    # -- observing -------------------------------------------------------------------------

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        """Requests received, oldest first: id, time, method, path, key_id, body, status..."""
        data: list[dict[str, Any]] = self._call("GET", "/requests", since=since)["data"]
        return data

    def clear_requests(self) -> None:
        self._call("DELETE", "/requests")

    def close(self) -> None:
        self._http.close()
        for name in ("client", "async_client"):
            if name in self.__dict__:
                client = self.__dict__.pop(name)
                if name == "client":
                    client.close()
