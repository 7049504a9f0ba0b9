"""A certificate provider for the tests (tls.on_demand.provider): serves `<name>.pem` and
`<name>.key` from its configured directory, fails for names starting "boom.", and counts the
names it was asked for in `<directory>/asked.log` (one line per call)."""

from __future__ import annotations

from pathlib import Path

import trio

from proxy.network.tls_dynamic import CertificateProvider


class DirectoryProvider(CertificateProvider):
    async def certificate(self, server_name: str) -> tuple[bytes, bytes] | None:
        directory = Path(self.config["directory"])
        with open(directory / "asked.log", "a") as log:
            log.write(server_name + "\n")
        await trio.sleep(float(self.config.get("delay", 0)))  # a slow store
        if server_name.startswith("boom."):
            raise RuntimeError("the store is down")
        cert, key = directory / f"{server_name}.pem", directory / f"{server_name}.key"
        if not cert.exists():
            return None
        return cert.read_bytes(), key.read_bytes()


class NotAProvider:
    pass
