"""Shared by scripts/bench-footprint and scripts/link-order (issue 15, a node's footprint):
the README's ShareVec node as the one measures it and the other profiles it (the profile
must follow the measured run), and the function names of host/link-order.txt and of a
built binary.
"""

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/nodemanager")
GUESTS = os.path.join(ROOT, "build/guests")
LINK_ORDER = os.path.join(ROOT, "host/link-order.txt")


def node_args(binary, guest, sampler, log, cycles, period, linger, bootstrap=()):
    """`nodemanager run` of a ShareVec node on 127.0.0.1: `guest` in build/guests, GBPS
    from the file `sampler`, Kademlia on, mDNS off, `cycles` of `period` ("1000ms")."""
    args = [binary, "run", "--context", "footprint", "--listen", "/ip4/127.0.0.1/tcp/0",
            "--app", f"{os.path.join(GUESTS, guest)}:share_vec", "--sampler-config", sampler,
            "--enable-kad", "true", "--enable-mdns", "false", "--cycles", str(cycles),
            "--period", period, "--linger", linger, "--log-file", log]
    for address in bootstrap:
        args += ["--bootstrap", address]
    return args


def ready_line(path, deadline=60):
    """A node's first line of standard output (its JSON ready line), once written."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        text = open(path).read()
        if "\n" in text:
            return json.loads(text.split("\n", 1)[0])
        time.sleep(0.05)
    sys.exit(f"no ready line in {path} within {deadline} s")


def link_order_names():
    """The function names host/link-order.txt lists, in its order."""
    return [line.strip() for line in open(LINK_ORDER)
            if line.strip() and not line.startswith("#")]


def binary_functions(binary=BIN):
    """The address of each function the binary defines (its symbol table, by `nm`)."""
    listing = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True,
                             check=True).stdout
    functions = {}
    for parts in map(str.split, listing.splitlines()):
        if len(parts) == 3 and parts[1] in "tT":
            functions.setdefault(parts[2], int(parts[0], 16))
    return functions
