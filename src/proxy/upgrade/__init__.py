"""Hot reload and upgrade: the keeper, worker generations, and the handover between them.

    protocol.py   sans-IO control-channel frames and message names (no trio)
    fdpass.py     one frame plus its fds over an AF_UNIX SOCK_SEQPACKET socket (trio edge)
    migration.py  the interface data-plane handlers use to hand a live connection over
    handoff.py    the old worker's sender and the new worker's adopter of live connections
    control.py    a worker's side of its control channel to the keeper
    keeper.py     the keeper process: listeners, generations, reload/upgrade, admin

The design and why: docs/upgrade.md and docs/architecture.md; the acceptance tests (T1-T22):
tests/integration/test_upgrade.py.
"""
