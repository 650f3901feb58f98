"""The fault-injection harness of issue 11: a replaying client that records what happened to every
request (driver), the checks that turn those records into counts (ledger), the faults injected
into a running `lamps up` (injectors), and the overload phases (load).

Used by tests/reliability and benchmarks/reliability.py alike, so the figures in the report and
the assertions of the tests come from one piece of code.
"""
