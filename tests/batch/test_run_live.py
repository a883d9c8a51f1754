"""``ferryman run`` in live mode: the real CLI as a subprocess, against the session's mock.

Each test writes an input, runs the command, and checks the exit code, the results and errors
files, stderr, and what the mock's request log says was sent.
"""

from __future__ import annotations

import collections
import math
import re
from decimal import Decimal
from typing import Any

from ferryman.pricing import PriceTable
from ferryman.tokens import count_request_prompt_tokens
from tests.batch.conftest import Job, batch_line, chat_line, request_line_id

PRICES = PriceTable.default()


def sent_ids(job: Job, since: int = 0) -> list[str]:
    """The lines the chat requests logged by the mock (after ``since``) were sent for."""
    ids = []
    for entry in job.mock.requests(since):
        line_id = request_line_id(entry)
        if line_id is not None:
            ids.append(line_id)
    return ids


def last_seq(job: Job) -> int:
    log = job.mock.requests()
    return log[-1]["seq"] if log else 0


def worst_cost(line: dict[str, Any]) -> Decimal:
    body = line["body"]
    prompt = count_request_prompt_tokens(line["url"], body)
    cost = PRICES.cost_usd(body["model"], {"prompt_tokens": prompt, "completion_tokens": body["max_tokens"]})
    assert cost is not None
    return cost


def test_mixed_endpoints_all_get_results_with_body_status_attempts_tokens_cost_and_a_summary(batch_job: Job) -> None:
    lines = [
        chat_line("chat-1", max_tokens=5),
        batch_line("resp-1", "/v1/responses", {"model": "gpt-4o-mini", "input": "hello", "max_output_tokens": 16}),
        batch_line("emb-1", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "hello there"}),
        batch_line("mod-1", "/v1/moderations", {"model": "omni-moderation-latest", "input": "hello"}),
    ]
    batch_job.write(lines)
    done = batch_job.run()
    assert done.returncode == 0, done.stderr

    results = {r["custom_id"]: r for r in batch_job.results()}
    assert list(results) == ["chat-1", "resp-1", "emb-1", "mod-1"]
    assert [r["line"] for r in results.values()] == [1, 2, 3, 4]
    assert all(r["status"] == 200 and r["attempts"] == 1 and r["error"] is None for r in results.values())
    assert all(r["via"] == "live" for r in results.values())
    assert results["chat-1"]["response"]["object"] == "chat.completion"
    assert results["resp-1"]["response"]["object"] == "response"
    assert results["emb-1"]["response"]["object"] == "list"
    assert "results" in results["mod-1"]["response"]
    # Tokens from each reply's usage; the cost is that usage priced.
    for custom_id, model in (("chat-1", "gpt-4o-mini"), ("resp-1", "gpt-4o-mini"), ("emb-1", "text-embedding-3-small")):
        result = results[custom_id]
        usage = result["response"]["usage"]
        assert result["input_tokens"] == usage.get("prompt_tokens", usage.get("input_tokens")) > 0
        assert result["output_tokens"] == usage.get("completion_tokens", usage.get("output_tokens", 0))
        assert Decimal(result["cost_usd"]) == PRICES.cost_usd(model, usage) > 0
    assert results["chat-1"]["output_tokens"] == 5
    assert Decimal(results["mod-1"]["cost_usd"]) == 0  # moderations are free
    fields = {"custom_id", "line", "status", "response", "error", "attempts", "input_tokens", "output_tokens"}
    assert all(set(r) == {*fields, "cost_usd", "via"} for r in results.values())
    assert all(re.fullmatch(r"\d+(\.\d+)?", r["cost_usd"]) for r in results.values()), "plain decimals, never 2E-8"
    assert batch_job.error_rows() == []
    assert sorted(e["path"] for e in batch_job.mock.requests()) == [
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/moderations",
        "/v1/responses",
    ]
    # The summary at the end.
    total_in = sum(r["input_tokens"] for r in results.values())
    total_out = sum(r["output_tokens"] for r in results.values())
    total_cost = sum(Decimal(r["cost_usd"]) for r in results.values())
    assert re.search(r"done\s+4\b", done.stderr)
    assert re.search(r"failed\s+0\b", done.stderr)
    assert re.search(r"retried\s+0\b", done.stderr)
    assert f"{total_in:,} in, {total_out:,} out" in done.stderr
    assert f"${total_cost:,.4f}" in done.stderr
    assert re.search(r"wall time\s+\d+\.\d s", done.stderr)


def test_bad_lines_are_reported_by_line_number_and_the_rest_runs(batch_job: Job) -> None:
    batch_job.write(
        [
            chat_line("c1"),  # 1
            "{broken",  # 2
            "[1, 2]",  # 3
            "",  # 4: blank, skipped (the numbering still counts it)
            batch_line("img", "/v1/images/generations", {"model": "gpt-image-1", "prompt": "a cat"}),  # 5
            chat_line("c1"),  # 6: repeats c1
            {"messages": [{"role": "user", "content": "line bare"}]},  # 7: no model, no --model
            chat_line("c2"),  # 8
            batch_line("x", "/v1/nope", {"model": "gpt-4o-mini"}),  # 9: bad, and its id is not yet used...
            chat_line("x"),  # 10: ... so the first runnable line called x runs
        ]
    )
    done = batch_job.run()
    assert done.returncode == 1, done.stderr

    reported = dict(re.findall(r"in\.jsonl:(\d+)(?::\d+)?: (.+)$", done.stderr, re.MULTILINE))  # FILE:LINE[:COL]
    assert sorted(int(n) for n in reported) == [2, 3, 5, 6, 7, 9]
    assert "not valid JSON" in reported["2"]
    assert "JSON object" in reported["3"]
    assert "url must be one of" in reported["5"]
    assert "repeats an earlier line" in reported["6"]
    assert "names no model" in reported["7"]

    errors = batch_job.error_rows()
    assert [e["line"] for e in errors] == [2, 3, 5, 6, 7, 9]
    assert all(e["status"] is None and e["response"] is None for e in errors)
    by_line = {e["line"]: e for e in errors}
    assert "not valid JSON" in by_line[2]["error"]
    assert "JSON object" in by_line[3]["error"]
    assert by_line[5]["custom_id"] == "img" and "url must be one of" in by_line[5]["error"]
    assert "'c1' repeats an earlier line" in by_line[6]["error"]
    assert by_line[7]["custom_id"] == "line-7" and "names no model" in by_line[7]["error"]
    # Line 9's id belongs to line 10, which runs: the bad line is known by its number alone.
    assert by_line[9]["custom_id"] is None and "url must be one of" in by_line[9]["error"]

    results = batch_job.results()
    assert [(r["custom_id"], r["line"], r["status"]) for r in results] == [
        ("c1", 1, 200),
        ("c2", 8, 200),
        ("x", 10, 200),
    ]
    assert sorted(sent_ids(batch_job)) == ["c1", "c2", "x"]
    assert len(batch_job.mock.requests()) == 3
    assert re.search(r"done\s+3\b", done.stderr) and re.search(r"failed\s+6\b", done.stderr)


def test_model_fills_bare_bodies_whose_ids_come_from_line_numbers(batch_job: Job) -> None:
    batch_job.write(
        [
            {"messages": [{"role": "user", "content": "line line-1"}], "max_tokens": 2},
            "",
            {"messages": [{"role": "user", "content": "line line-3"}], "max_tokens": 2, "model": "gpt-4o"},
        ]
    )
    done = batch_job.run("--model", "gpt-4o-mini")
    assert done.returncode == 0, done.stderr
    assert [(r["custom_id"], r["line"]) for r in batch_job.results()] == [("line-1", 1), ("line-3", 3)]
    models = {request_line_id(e): e["body"]["model"] for e in batch_job.mock.requests()}
    assert models == {"line-1": "gpt-4o-mini", "line-3": "gpt-4o"}  # a line's own model wins


def test_endpoint_sets_where_bare_bodies_go_and_the_progress_bar_shows_rates_spend_and_eta(batch_job: Job) -> None:
    batch_job.write([{"model": "text-embedding-3-small", "input": f"text {i}"} for i in range(3)])
    done = batch_job.run("--endpoint", "embeddings", "--progress", TTY_COMPATIBLE="1")
    assert done.returncode == 0, done.stderr
    assert [r["response"]["object"] for r in batch_job.results()] == ["list"] * 3
    assert [e["path"] for e in batch_job.mock.requests()] == ["/v1/embeddings"] * 3
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", done.stderr)  # the terminal's colours and cursor moves
    assert re.search(r"live .*3/3 +[\d.]+ req/s +[\d,]+ tok/s +\$\d+\.\d{4} +eta", shown), shown


def test_dry_run_sends_nothing_and_prints_exact_tokens_and_both_costs_per_model(batch_job: Job) -> None:
    lines: list[dict[str, Any] | str] = [
        *(chat_line(f"big-{i}", model="gpt-4o", max_tokens=4000) for i in range(3)),
        *(chat_line(f"small-{i}", model="gpt-4o-mini", max_tokens=1000) for i in range(2)),
        batch_line("emb", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "some words to embed"}),
        batch_line("mod", "/v1/moderations", {"model": "omni-moderation-latest", "input": "hello"}),
        "not json",
    ]
    batch_job.write(lines)
    done = batch_job.run("--dry-run")
    assert done.returncode == 0, done.stderr
    assert batch_job.mock.requests() == []
    assert not batch_job.output.exists() and not batch_job.journal.exists()
    assert "in.jsonl:8:1: not valid JSON" in done.stderr
    assert "7 lines to send, 1 unreadable; nothing was sent" in done.stderr

    rows = {}
    for text in done.stdout.splitlines():
        cells = [c.strip() for c in text.strip().strip("│┃").split("│")]
        if len(cells) == 6:
            rows[cells[0]] = cells[1:]
    expected: dict[str, list[Any]] = {}
    for line in lines:
        if not isinstance(line, dict):
            continue
        body = line["body"]
        prompt = count_request_prompt_tokens(line["url"], body)
        output = body.get("max_tokens", 0)
        usage = {"prompt_tokens": prompt, "completion_tokens": output}
        free = line["url"] == "/v1/moderations"
        live = Decimal(0) if free else PRICES.cost_usd(body["model"], usage)
        batch = Decimal(0) if free else PRICES.cost_usd(body["model"], usage, tier="batches")
        assert live is not None and batch is not None
        entry = expected.setdefault(body["model"], [0, 0, 0, Decimal(0), Decimal(0)])
        for i, value in enumerate((1, prompt, output, live, batch)):
            entry[i] += value
    expected["total"] = [sum(column) for column in zip(*expected.values(), strict=True)]
    assert set(rows) == set(expected)
    for model, (count, prompt, output, live, batch) in expected.items():
        assert rows[model] == [str(count), f"{prompt:,}", f"{output:,}", f"${live:,.4f}", f"${batch:,.4f}"], model
    assert expected["gpt-4o"][4] * 2 == expected["gpt-4o"][3]  # the Batch API at half price
    assert expected["total"][3] > Decimal("0.12")  # 12,000 gpt-4o output tokens at least


def test_max_cost_stops_cleanly_and_a_rerun_with_a_higher_cap_finishes(batch_job: Job) -> None:
    lines = [chat_line(f"c{i:02d}", model="gpt-4o", max_tokens=50) for i in range(30)]
    batch_job.write(lines)
    worst = worst_cost(lines[0])
    cap = worst * Decimal("10.5")
    stopped = batch_job.run("--max-cost", str(cap))
    assert stopped.returncode == 3, stopped.stderr
    assert "stopped at --max-cost" in stopped.stderr

    results = batch_job.results()
    spent = sum(Decimal(r["cost_usd"]) for r in results)
    assert math.floor(cap / worst) <= len(results) < len(lines)  # at least what the worst case affords
    assert spent <= cap
    assert all(r["status"] == 200 for r in results)
    states = batch_job.states()
    left = sum(1 for s in states.values() if s == "pending")
    assert left == len(lines) - len(results) > 0
    assert f"{left} lines left" in stopped.stderr
    assert sorted(sent_ids(batch_job)) == sorted(r["custom_id"] for r in results)

    mark = last_seq(batch_job)
    finished = batch_job.run("--max-cost", "5")
    assert finished.returncode == 0, finished.stderr
    assert [r["custom_id"] for r in batch_job.results()] == [line["custom_id"] for line in lines]
    assert sorted(sent_ids(batch_job, mark)) == sorted(i for i, s in states.items() if s == "pending")


def test_order_completion_writes_results_as_they_finished(batch_job: Job) -> None:
    batch_job.mock.set_faults(["model=gpt-4o;delay_ms=800"])  # the first line is the slowest
    batch_job.write([chat_line("slow", model="gpt-4o")] + [chat_line(f"fast-{i}") for i in range(4)])
    done = batch_job.run("--order", "completion")
    assert done.returncode == 0, done.stderr
    by_completion = [r["custom_id"] for r in batch_job.results()]
    assert by_completion[-1] == "slow"
    assert sorted(by_completion[:-1]) == [f"fast-{i}" for i in range(4)]

    # The results are written from the journal: the no-op re-run in input order reorders them.
    again = batch_job.run()
    assert again.returncode == 0 and "nothing to send" in again.stderr
    assert [r["custom_id"] for r in batch_job.results()] == ["slow"] + [f"fast-{i}" for i in range(4)]
    assert len(batch_job.mock.requests()) == 5


def test_a_changed_input_with_the_same_output_is_refused_until_restart(batch_job: Job) -> None:
    batch_job.write([chat_line(f"c{i}") for i in range(3)])
    assert batch_job.run().returncode == 0
    before = batch_job.output.read_bytes()

    batch_job.write([chat_line(f"c{i}") for i in range(4)])
    refused = batch_job.run()
    assert refused.returncode == 2
    assert "different input file" in refused.stderr and "--restart" in refused.stderr
    assert batch_job.output.read_bytes() == before
    assert len(batch_job.mock.requests()) == 3

    mark = last_seq(batch_job)
    restarted = batch_job.run("--restart")
    assert restarted.returncode == 0, restarted.stderr
    assert [r["custom_id"] for r in batch_job.results()] == [f"c{i}" for i in range(4)]
    assert sorted(sent_ids(batch_job, mark)) == [f"c{i}" for i in range(4)]  # started over: all sent again


def test_a_rerun_of_a_finished_job_is_a_no_op_and_retry_failed_resends_only_the_failed_lines(batch_job: Job) -> None:
    mock = batch_job.mock
    mock.set_faults(["model=gpt-4o;status=400;code=invalid_value;message=refused for the test"])
    batch_job.write(
        [chat_line("ok-1"), chat_line("bad-1", model="gpt-4o"), chat_line("ok-2"), chat_line("bad-2", model="gpt-4o")]
    )
    first = batch_job.run()
    assert first.returncode == 1, first.stderr
    results = {r["custom_id"]: r for r in batch_job.results()}
    for custom_id in ("bad-1", "bad-2"):  # a 400 is not retried: one attempt, failed with its reason
        assert results[custom_id]["status"] == 400
        assert results[custom_id]["attempts"] == 1
        assert results[custom_id]["error"] == "HTTP 400 invalid_value: refused for the test"
    assert [(e["custom_id"], e["status"], e["error"]) for e in batch_job.error_rows()] == [
        ("bad-1", 400, "HTTP 400 invalid_value: refused for the test"),
        ("bad-2", 400, "HTTP 400 invalid_value: refused for the test"),
    ]
    assert sorted(sent_ids(batch_job)) == ["bad-1", "bad-2", "ok-1", "ok-2"]  # once each
    results_file, errors_file = batch_job.output.read_bytes(), batch_job.errors.read_bytes()
    ok_lines = [line for line in results_file.splitlines() if b'"ok-' in line]

    # The job is finished (failed lines have results): a plain re-run is a no-op.
    mark = last_seq(batch_job)
    plain = batch_job.run()
    assert plain.returncode == 1 and "nothing to send" in plain.stderr
    assert batch_job.mock.requests(mark) == []
    assert batch_job.output.read_bytes() == results_file
    assert batch_job.errors.read_bytes() == errors_file

    mock.set_faults([])
    again = batch_job.run("--retry-failed")
    assert again.returncode == 0, again.stderr
    assert sorted(sent_ids(batch_job, mark)) == ["bad-1", "bad-2"]
    assert [r["status"] for r in batch_job.results()] == [200] * 4
    assert batch_job.error_rows() == []
    assert [line for line in batch_job.output.read_bytes().splitlines() if b'"ok-' in line] == ok_lines


def test_a_4xx_line_fails_at_once_and_one_with_no_reply_after_the_retries_each_with_its_reason(
    batch_job: Job,
) -> None:
    batch_job.mock.set_faults(["model=gpt-4o;reset"])
    batch_job.write([chat_line("cut", model="gpt-4o"), chat_line("nope", model="gpt-no-such-model"), chat_line("fine")])
    done = batch_job.run(FERRYMAN_RETRY__MAX_ATTEMPTS="2", FERRYMAN_RETRY__BASE_DELAY_S="0.05")
    assert done.returncode == 1, done.stderr
    results = {r["custom_id"]: r for r in batch_job.results()}
    assert results["fine"]["status"] == 200
    assert results["nope"]["status"] == 404 and results["nope"]["attempts"] == 1
    assert results["nope"]["error"].startswith("HTTP 404 model_not_found:")
    assert results["cut"]["status"] is None and results["cut"]["response"] is None
    assert results["cut"]["attempts"] == 2
    assert results["cut"]["error"].startswith("no reply:")
    errors = batch_job.error_rows()
    assert [(e["custom_id"], e["error"]) for e in errors] == [(i, results[i]["error"]) for i in ("cut", "nope")]
    statuses = collections.Counter(str(e["status"]) for e in batch_job.mock.requests())
    assert statuses == {"200": 1, "404": 1, "reset": 2}
