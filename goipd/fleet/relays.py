"""The SMS Server pages goipd uses besides the JSON API, one client each per server: USSD
(`en/ussd.php`) and remote commands (`api.php`). Both are relayed by the server's engine to the
GoIP and must not overlap on one server or line: each client serialises its own, so there is
exactly one of each per configured server, rebuilt when the server's settings change."""

from __future__ import annotations

from collections.abc import Mapping

from goipd.config import Server
from goipd.upstream.goip_commands import CommandClient
from goipd.upstream.goip_ussd import UssdClient


class Relays:
    def __init__(self) -> None:
        self.ussd: dict[str, UssdClient] = {}
        self.commands: dict[str, CommandClient] = {}
        self._configured: dict[str, Server] = {}

    def configure(
        self, servers: Mapping[str, Server], answer_timeout: float
    ) -> list[UssdClient | CommandClient]:
        """Clients for `servers`; returns the ones retired (to close once what uses them is
        done). A server whose settings did not change keeps its clients, and with them the
        spacing of its sessions."""
        retired: list[UssdClient | CommandClient] = []
        replaced: dict[str, tuple[UssdClient, CommandClient]] = {}
        for name in list(self._configured):
            server = servers.get(name)
            kept = self.ussd.get(name)
            if server == self._configured[name] and kept and kept.timeout == answer_timeout:
                continue
            old = (self.ussd.pop(name), self.commands.pop(name))
            if server is not None and server.url == self._configured[name].url:
                replaced[name] = old
            retired.extend(old)
            del self._configured[name]
        for name, server in servers.items():
            if name in self._configured:
                continue
            escape = server.escape_text
            self.ussd[name] = UssdClient(
                name,
                server.url,
                server.username,
                server.password,
                timeout=answer_timeout,
                escape_line=escape,
                # A session the old client opened may still run on the same server.
                succeeds=replaced[name][0] if name in replaced else None,
            )
            self.commands[name] = CommandClient(
                name,
                server.url,
                server.username,
                server.password,
                escape_line=escape,
                succeeds=replaced[name][1] if name in replaced else None,
            )
            self._configured[name] = server
        return retired

    async def close(self) -> None:
        for ussd in self.ussd.values():
            await ussd.close()
        for commands in self.commands.values():
            await commands.close()
