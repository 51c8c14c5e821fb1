"""The seed's ShareVec tutorial as a nodemanager app (plain lists: no numpy in a component).

Every cycle: multiply the vector by the matrix, send it to a random neighbour.
On receipt: average the received vector with ours.
Config (optional JSON): {"vector": [5 numbers], "matrix": [[5 numbers] x 5]}.
"""

import json
import random
from dataclasses import asdict, dataclass

from nodemanager_app import INFO, App, log, serve


@dataclass
class Message:
    sender: str  # Peer id of the sender
    receiver: str  # Peer id of the receiver
    data: list  # The vector (5 floats)


class ShareVec(App):
    def __init__(self, config: str = "") -> None:
        super().__init__(config)
        settings = json.loads(config) if config.strip() else {}
        unknown = set(settings) - {"vector", "matrix"}
        if unknown:
            raise ValueError(f"unknown share_vec config fields {sorted(unknown)}")
        vector = settings.get("vector") or [random.randint(1, 9) / 10 for _ in range(5)]
        matrix = settings.get("matrix") or [[random.randint(1, 9) / 10 for _ in range(5)] for _ in range(5)]
        if len(vector) != 5 or len(matrix) != 5 or any(len(row) != 5 for row in matrix):
            raise ValueError("share_vec needs a 5-vector and a 5x5 matrix")
        self.vector = [float(x) for x in vector]
        self.matrix = [[float(x) for x in row] for row in matrix]
        log(INFO, "START vector=%s", json.dumps(self.vector))

    def handle_message(self, message: str, sender: str) -> None:
        log(INFO, "received %s bytes from %s", len(message.encode()), sender)
        log(INFO, "BEFORE vector=%s", json.dumps(self.vector))
        msg = Message(**json.loads(message))
        if len(msg.data) != len(self.vector):
            raise ValueError(f"message carries {len(msg.data)} numbers, not {len(self.vector)}")
        self.vector = [(mine + theirs) / 2 for mine, theirs in zip(self.vector, msg.data)]
        log(INFO, "AFTER vector=%s", json.dumps(self.vector))

    def snapshot(self) -> bytes:
        """The vector, so a replaced ShareVec keeps averaging from where it was."""
        return json.dumps(self.vector).encode()

    def restore(self, state: bytes) -> None:
        vector = json.loads(state)
        if len(vector) != len(self.vector):
            raise ValueError(f"state has {len(vector)} numbers, not {len(self.vector)}")
        self.vector = [float(x) for x in vector]
        log(INFO, "RESTORED vector=%s", json.dumps(self.vector))

    def periodic_run(self, view: list, node_id: str) -> None:
        log(INFO, "periodic_run BEFORE vector=%s", json.dumps(self.vector))
        n = len(self.vector)
        self.vector = [sum(self.vector[i] * self.matrix[i][j] for i in range(n)) for j in range(n)]
        if not view:
            log(INFO, "no neighbours yet, skipping send")
            return
        receiver = random.choice(view)
        msg = Message(sender=self.id, receiver=receiver, data=self.vector)
        self.send_message(json.dumps(asdict(msg)), destination=receiver, timeout=30)
        log(INFO, "periodic_run AFTER vector=%s sent to %s", json.dumps(self.vector), receiver)


WitWorld = serve(ShareVec)
