"""Certificate rotation: a listener's TLS files watched on disk and re-read when they change.

Every `tls.watch_interval` the files (certificates, keys, the client CA bundle) are stat'ed; a
change in any one's (mtime, size, inode, device) reads them all again once they have stayed
the same for a moment (a writer that copies in place is not read half-written), in a thread
(parsing and checking a key takes milliseconds no handshake should wait for), builds new
contexts and swaps them in at once: new handshakes take them, open connections keep theirs.
A tool that writes a new file and renames it over the old changes the inode: seen the same.

A set that cannot be used (a file unreadable, no PEM, a key that is not the certificate's)
leaves the old contexts serving, logs one error with the file and why (never the key), counts
it, and is shown by `proxy ctl status` until good files replace it. Polling, not inotify: it
needs no dependency, sees a renamed-over file and a changed symlink (a Kubernetes secret
volume) alike, and a stat of a few files every few seconds costs nothing.
"""

from __future__ import annotations

import os
import time
from typing import Any

import trio

from proxy.log import get_logger
from proxy.network.tls import ServerTls, TlsConfigError, load_files, watched_paths

log = get_logger("tls")

# How long files must stay unchanged before they are read (a copy in progress).
SETTLE = 0.2
SETTLE_TRIES = 10

Signature = tuple[Any, ...]


def signature(paths: list[str]) -> Signature:
    """What identifies the current content of `paths` without reading it."""
    out: list[Any] = []
    for path in paths:
        try:
            st = os.stat(path)  # (follows symlinks: a re-pointed link is a change)
        except OSError as exc:
            out.append(exc.errno)
            continue
        out.append((st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev))
    return tuple(out)


class CertificateWatcher:
    """Keeps one listener's ServerTls in step with its files on disk."""

    def __init__(self, listener: str, server: ServerTls, config: Any, stats: Any, seen: Signature) -> None:
        self.listener = listener
        self.server = server
        self.config = config  # the listener's ListenerTls
        self.stats = stats
        self.paths = watched_paths(config)
        self.interval = None if config.watch_interval is None else float(config.watch_interval)
        self.seen = seen  # the signature of what the contexts in use were read from (or tried)
        # The last set of files that could not be used, while it is the newest on disk.
        self.error: dict[str, Any] | None = None

    async def run(self) -> None:
        if self.interval is None:
            return
        while True:
            await trio.sleep(self.interval)
            await self.check()

    async def check(self) -> None:
        """Reload if the files changed since last looked at."""
        now = signature(self.paths)
        if now == self.seen:
            return
        for _ in range(SETTLE_TRIES):  # (files that never stop changing are read all the same)
            await trio.sleep(SETTLE)
            again = signature(self.paths)
            if again == now:
                break
            now = again
        self.seen = now
        try:
            contexts = await trio.to_thread.run_sync(self._load)
        except Exception as exc:  # a bad file, or anything else: never the worker's end
            # (a TlsConfigError's text names the file, never the key; another's text might
            # quote what it read, so only its kind is told)
            reason = str(exc) if isinstance(exc, TlsConfigError) else f"the files cannot be used ({type(exc).__name__})"
            self.stats.ssl_certificate_rotation_failed += 1
            self.error = {"listener": self.listener, "error": reason, "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            log.error("tls.rotation_failed", listener=self.listener, error=reason, message="the certificates in use serve on")
            return
        self.server.install(contexts)
        self.stats.ssl_certificate_rotated += 1
        self.error = None
        log.info("tls.certificates_rotated", listener=self.listener, files=len(self.paths))
        for cert in contexts.certificates:
            if cert.world_readable_key:  # (the path only: never the key)
                log.warning("tls.key_readable_by_others", listener=self.listener, key=cert.key_path)

    def _load(self) -> Any:
        return self.server.build(load_files(self.config))
