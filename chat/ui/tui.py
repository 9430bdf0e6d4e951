"""The terminal interface (Textual), used when stdin and stdout are a terminal.

Layout: a status line (connection state, nickname, fingerprint), the message
pane, the peer list (each peer with its verification state: verified,
unverified or CHANGED), and the input line. `/keys` opens the security panel
with the live session statistics: epoch, messages in this epoch, rekeys,
rejected frames by reason, fingerprint and safety numbers, and the steps
that established each session (the --show-handshake steps: public values and
short hashes); never a key.

Text from the network is made safe to show first (chat.ui.display), as in
the plain mode: a message's further lines are marked continuation lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any, ClassVar

from rich.markup import escape
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Input, RichLog, Static

from chat.client import ChatClient, ClientEvent
from chat.commands import handle_line
from chat.ui.display import clean_line
from chat.ui.plain import describe, handshake_lines, message_lines

__all__ = ["SaltchatApp", "TuiBridge", "run_tui"]

_TRUST_STYLE = {
    "verified": "[b green]verified[/]",
    "unverified": "[yellow]unverified[/]",
    "changed": "[b reverse red] CHANGED [/]",
    "unknown": "[dim]handshaking[/]",
}


class TuiBridge:
    """Renderer for the client's events: buffers them until the app runs."""

    def __init__(self) -> None:
        """Create a bridge with no app attached yet."""
        self.app: SaltchatApp | None = None
        self._early: list[ClientEvent] = []

    def attach(self, app: SaltchatApp) -> None:
        """Deliver buffered and future events to `app`."""
        self.app = app
        early, self._early = self._early, []
        for event in early:
            app.show(event)

    def __call__(self, event: ClientEvent) -> None:
        """Show one event (or keep it until the app is attached)."""
        if self.app is None:
            self._early.append(event)
        else:
            self.app.show(event)


class SaltchatApp(App[int]):
    """The saltchat terminal interface over one ChatClient."""

    TITLE = "saltchat"
    CSS = """
    #status { height: 1; background: $boost; padding: 0 1; }
    #main { height: 1fr; }
    #messages { width: 1fr; border: round $primary; }
    #peers { width: 34; border: round $secondary; padding: 0 1; }
    #keys-box { display: none; height: auto; max-height: 50%;
                border: double $warning; padding: 0 1; }
    #keys-box.shown { display: block; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+c", "quit_chat", "Quit", priority=True),
        Binding("ctrl+q", "quit_chat", "Quit", priority=True),
        Binding("escape", "hide_keys", "Hide panel"),
    ]

    def __init__(self, client: ChatClient, *, run_client: bool = True) -> None:
        """Create the app; it runs `client` while mounted."""
        super().__init__()
        self.client = client
        self._run_client = run_client
        self._client_task: asyncio.Task[None] | None = None
        self.undelivered: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._mounted = False

    def compose(self) -> ComposeResult:
        """Status line, messages and peers, security panel, input."""
        yield Static("connecting...", id="status")
        with Horizontal(id="main"):
            yield RichLog(id="messages", wrap=True, markup=True, min_width=20)
            with Vertical(id="peers"):
                yield Static("[b]peers[/]\n(nobody yet)", id="peer-list")
        with VerticalScroll(id="keys-box"):
            yield Static("", id="keys")
        yield Input(placeholder="message, or /help", id="input")

    def on_mount(self) -> None:
        """Start the client and the once-a-second refresh."""
        log = self.query_one("#messages", RichLog)
        for line in self.lines:
            log.write(line)
        self._mounted = True
        if self._run_client:
            self._client_task = asyncio.create_task(self.client.run())
        self.set_interval(1.0, self.refresh_panels)
        self.refresh_panels()
        self.query_one("#input", Input).focus()

    def show(self, event: ClientEvent) -> None:
        """Add one client event to the message pane."""
        if event.event == "message":
            line = _message(event.fields["from"], event.fields["text"], "b")
        elif event.event == "sent":
            line = _message("you", event.fields["text"], "dim")
        elif event.event == "alert":
            line = f"[b reverse red] ALERT [/] {escape(describe(event))}"
        elif event.event == "keys" and self._mounted:
            self._show_keys()
            return
        else:
            line = f"[dim]* {escape(describe(event))}[/]"
        self.lines.append(line)
        if self._mounted:
            self.query_one("#messages", RichLog).write(line)
            self.refresh_panels()

    def refresh_panels(self) -> None:
        """Redraw the status line, the peer list and (if open) the keys panel."""
        client = self.client
        with contextlib.suppress(Exception):
            fingerprint = client.keys()["fingerprint"]
            self.query_one("#status", Static).update(
                f"{client.connection}  |  {escape(clean_line(client.nick))}  |  "
                f"fingerprint {fingerprint}"
            )
            rows = ["[b]peers[/]"]
            for peer in client.who():
                here = "" if peer["present"] else " [dim](away)[/]"
                rows.append(f"{escape(clean_line(peer['peer']))}{here}")
                rows.append("  " + _TRUST_STYLE.get(peer["trust"], peer["trust"]))
            if len(rows) == 1:
                rows.append("(nobody yet)")
            self.query_one("#peer-list", Static).update("\n".join(rows))
            if self.query_one("#keys-box").has_class("shown"):
                self.query_one("#keys", Static).update(_keys_text(client.keys()))

    def _show_keys(self) -> None:
        self.query_one("#keys-box").add_class("shown")
        self.query_one("#keys", Static).update(_keys_text(self.client.keys()))

    def action_hide_keys(self) -> None:
        """Close the security panel."""
        self.query_one("#keys-box").remove_class("shown")

    async def on_input_submitted(self, submitted: Input.Submitted) -> None:
        """A line from the input: a message or a command."""
        submitted.input.value = ""
        if not submitted.value.strip():
            return
        outcome = handle_line(self.client, submitted.value)
        for event in outcome.events:
            self.show(event)
        if outcome.quit:
            await self.action_quit_chat()

    async def action_quit_chat(self) -> None:
        """Close the client cleanly, then leave the app."""
        self.undelivered = await self.client.close()
        if self._client_task is not None:
            with contextlib.suppress(Exception):
                await self._client_task
        self.exit(0)


def _message(sender: str, text: str, style: str) -> str:
    # The sender's name styled; further lines stay continuation lines.
    first, *rest = message_lines(sender, text)
    name, _, said = first.partition(": ")
    rows = [f"[{style}]{escape(name)}[/]: {escape(said)}"]
    return "\n".join(rows + [escape(line) for line in rest])


def _keys_text(panel: dict[str, Any]) -> str:
    rows = [
        "[b]security panel[/] (Esc to close) - no key is ever shown here",
        f"your fingerprint: {panel['fingerprint']}",
        f"relay connection: {panel['connection']}",
    ]
    for session in panel["sessions"]:
        rejected = ", ".join(f"{k}: {v}" for k, v in session["rejected"].items())
        rows += [
            f"[b]{escape(clean_line(session['peer']))}[/]  {session['state']}  "
            + _TRUST_STYLE.get(session["trust"], session["trust"]),
            f"  epoch {session['epoch']}  sent {session['sent_in_epoch']} / "
            f"received {session['received_in_epoch']} in this epoch  "
            f"rekeys {session['rekeys']}",
            f"  rejected frames: {rejected or 'none'}",
            f"  safety number: {session['safety_number']}",
        ]
        steps = handshake_lines(session.get("handshake", []), width=74)
        rows += ["  " + escape(line) for line in steps]
    if not panel["sessions"]:
        rows.append("no session yet")
    return "\n".join(rows)


async def run_tui(client: ChatClient, bridge: Any) -> int:
    """Run the terminal interface until the user quits.

    Returns:
        The exit status; undelivered messages are listed on stderr after the
        screen is restored.
    """
    app = SaltchatApp(client)
    if isinstance(bridge, TuiBridge):
        bridge.attach(app)
    await app.run_async()
    if app.undelivered:
        print(
            describe(ClientEvent("closed", {"undelivered": app.undelivered})),
            file=sys.stderr,
        )
    return 0
