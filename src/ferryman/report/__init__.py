"""``ferryman report``: usage and cost analysis over the audit log, and what to change, in dollars.

- :mod:`.query`: the aggregation, in SQL (GROUP BY and window functions; SQLite and PostgreSQL)
- :mod:`.model`: the report as dataclasses, and its versioned JSON contract
- :mod:`.build`: the report from the queries (month projection, spikes, advice)
- :mod:`.advice`: what to change (so far: ``deprecated_model``)
- :mod:`.reconcile`: ``--reconcile``, the upstream's bill (read by :mod:`.billed`) against the audit
- :mod:`.render`: table, Markdown and JSON; :mod:`.cli`: the command
"""
