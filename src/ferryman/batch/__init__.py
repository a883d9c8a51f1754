"""``ferryman run``: a resumable batch runner, live at the rate limit's edge or through the Batch API.

- :mod:`.inputs`: the JSONL input (Batch API lines or bare bodies), bad lines with their numbers
- :mod:`.journal`: the SQLite journal that makes a job exactly-once across kills and restarts
- :mod:`.estimate`: exact prompt tokens, worst-case output and cost, live vs. Batch API
- :mod:`.live`: the live runner on the pipeline (pacing, retries, accounting)
- :mod:`.batch_api`: the Batch API driver (split, upload, create, poll, download, merge)
- :mod:`.output`: the results and errors files, written whole from the journal
- :mod:`.disk`: a full disk: the named stop (exit 4) and the reserve that keeps the replies in flight
- :mod:`.cli`: the ``ferryman run`` command
"""
