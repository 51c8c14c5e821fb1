"""Write a nodemanager app in Python, the way the seed's tutorial does.

Subclass `App`, implement `periodic_run(view, node_id)` and
`handle_message(message, sender)` (text) or `handle_bytes(payload, sender)` (any bytes),
call `self.send_message(...)` or `self.send_bytes(...)`, and export it with
`WitWorld = serve(MyApp)` in the module given to `componentize-py componentize`.
"""

import random
import re
import traceback
from typing import Callable, Dict, List

from componentize_py_types import Err
from wit_world import DeliveryOutcome, DeliveryOutcome_Failed
from wit_world.imports import host

TRACE, DEBUG, INFO, WARNING, ERROR = (
    host.Level.TRACE,
    host.Level.DEBUG,
    host.Level.INFO,
    host.Level.WARN,
    host.Level.ERROR,
)

# The most delivery failures `App.failure_messages` keeps (the oldest go first).
MAX_RECORDED_FAILURES = 1024


def log(level: host.Level, msg: str, *args) -> None:
    """Logs `msg % args` to the node's log, tagged with the app's name (the seed's `log`)."""
    host.log(level, msg % args if args else msg)


class App:
    """Base class of a nodemanager app (the seed's `nodemanager.application.App`)."""

    def __init__(self, config: str = "") -> None:
        self.config = config
        # The module was imported at build time; draw a fresh seed from the node now
        # (reproducible when the node runs with --seed).
        random.seed()
        self.id: str = host.node_id()
        # message id -> failure reason, for messages the network could not deliver.
        self.failure_messages: Dict[int, str] = {}

    def periodic_run(self, view: List[str], node_id: str) -> None:
        """Called every period with the current view and this node's id."""
        raise NotImplementedError

    def handle_message(self, message: str, sender: str) -> None:
        """Called with a message (UTF-8 text) that the same app on `sender` sent."""
        raise NotImplementedError

    def handle_bytes(self, payload: bytes, sender: str) -> None:
        """Called with every message's bytes, as they came: the wire carries bytes,
        whichever language sent them. The default decodes UTF-8 text and calls
        `handle_message`; override it to take any bytes (e.g. from a Rust peer)."""
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            raise ValueError(
                f"a {len(payload)}-byte message from {sender} is not UTF-8 text: "
                "override handle_bytes to take bytes"
            ) from None
        self.handle_message(text, sender)

    def send_message(self, message: str, destination: str, timeout: float = 2) -> int:
        """Queues the text `message` (sent as UTF-8) for `destination`, after this call
        returns; returns its message id. `timeout` is in seconds, as in the seed."""
        return self.send_bytes(message.encode(), destination, timeout)

    def send_bytes(self, payload: bytes, destination: str, timeout: float = 2) -> int:
        """Queues `payload` as it is for `destination` (sent after this call returns);
        returns its message id. `timeout` is in seconds."""
        try:
            return host.send_message(destination, payload, int(timeout * 1000))
        except Err as e:
            raise RuntimeError(f"send to {destination} refused: {e.value}") from None

    def on_message_sent(self, message_id: int, outcome: DeliveryOutcome) -> None:
        """Called with each message's outcome; failures are already recorded."""

    def snapshot(self) -> bytes:
        """The state to hand to the next version of this app when it is replaced;
        the default (empty) hands nothing over."""
        return b""

    def restore(self, state: bytes) -> None:
        """Takes over the state a previous version's `snapshot` returned (called
        right after construction, only with a non-empty state)."""

    def view(self) -> List[str]:
        """The node's current view."""
        return host.view()

    def get_all_nodes(self) -> List[str]:
        """Every peer this node knows of."""
        return host.known_peers()


def _failure(call: str, error: Exception) -> Err:
    """The error a failed call returns to the node: the exception and its traceback
    (file and line of each frame; the component holds no source text), so the node's
    log and the app's `reason` point at the line that raised. componentize-py files
    each source folder under `/N/`: that prefix is dropped (`app.py`, not `/1/app.py`)."""
    trace = "".join(traceback.format_exception(error)).rstrip()
    trace = re.sub(r'File "/\d+/', 'File "', trace)
    return Err(f"{call} failed: {error!r}\n{trace}")


def serve(app_class: Callable[[str], App]):
    """Returns the `WitWorld` class that exports `app_class` to the node."""

    class WitWorld:
        app: App = None

        def init(self, config: str) -> None:
            try:
                WitWorld.app = app_class(config)
            except Exception as e:
                raise _failure("init", e) from None

        def periodic_run(self, view: List[str]) -> None:
            try:
                WitWorld.app.periodic_run(view, WitWorld.app.id)
            except Exception as e:
                raise _failure("periodic_run", e) from None

        def handle_message(self, source: str, payload: bytes) -> None:
            try:
                WitWorld.app.handle_bytes(payload, source)
            except Exception as e:
                raise _failure("handle_message", e) from None

        def snapshot(self) -> bytes:
            return WitWorld.app.snapshot() if WitWorld.app is not None else b""

        def restore(self, state: bytes) -> None:
            try:
                WitWorld.app.restore(state)
            except Exception as e:
                raise _failure("restore", e) from None

        def delivery_report(self, message_id: int, outcome: DeliveryOutcome) -> None:
            app = WitWorld.app
            if isinstance(outcome, DeliveryOutcome_Failed):
                if len(app.failure_messages) >= MAX_RECORDED_FAILURES:
                    app.failure_messages.pop(next(iter(app.failure_messages)))
                app.failure_messages[message_id] = outcome.value
            app.on_message_sent(message_id, outcome)

    return WitWorld
