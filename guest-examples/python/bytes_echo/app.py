"""Takes every message as bytes, UTF-8 or not, and sends it back reversed: the bytes
side of the Python SDK (`handle_bytes` / `send_bytes`)."""

from nodemanager_app import INFO, App, log, serve


class BytesEcho(App):
    def periodic_run(self, view, node_id):
        pass

    def handle_bytes(self, payload: bytes, sender: str) -> None:
        log(INFO, "got %d bytes from %s: %s", len(payload), sender, payload.hex())
        self.send_bytes(payload[::-1], sender, timeout=5)


WitWorld = serve(BytesEcho)
