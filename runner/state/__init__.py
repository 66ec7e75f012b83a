"""The state core: what a run knows of its jobs, kept in OUT/.krea-batch.

events.py        the journal's events as types, serialised in one place
run_events.py    what a run notes beside the journal (errors, downloads, jobs left over)
records.py       the finished job's record: its one encoder and decoder
ledger.py        RunLedger.apply: the one fold of both into job states and counts
journal.py       the fsynced, group-committed event log
figures.py       Counts, RunStats (what every view reads), RunResult
"""
