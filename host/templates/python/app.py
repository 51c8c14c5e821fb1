"""{{name}}: a nodemanager app in Python.

Build it with `nodemanager build`, run it with
`nodemanager run --app build/{{name}}.wasm` (or `nodemanager simulate --app ...`).
The SDK (`nodemanager_app`) is supplied by `nodemanager build`; its page is
docs/python-sdk.md in the nodemanager repository.
"""

from nodemanager_app import App, INFO, log, serve


class {{class}}(App):
    def __init__(self, config: str = "") -> None:
        super().__init__(config)
        self.rounds = 0
        self.heard = 0

    def periodic_run(self, view, node_id):
        """Called every period with the node's view (peer ids) and its own id."""
        self.rounds += 1
        for peer in view:
            self.send_message(f"round {self.rounds} from {node_id}", peer)

    def handle_message(self, message, sender):
        """Called with each text message the same app on `sender` sent here."""
        self.heard += 1
        log(INFO, "%s says %r (%d heard)", sender, message, self.heard)

    def snapshot(self) -> bytes:
        """Handed to the next version when the app is replaced."""
        return f"{self.rounds} {self.heard}".encode()

    def restore(self, state: bytes) -> None:
        """Takes over what the previous version's snapshot returned."""
        rounds, heard = state.decode().split()
        self.rounds, self.heard = int(rounds), int(heard)


WitWorld = serve({{class}})
