#!/usr/bin/env python3
"""One OpAMP agent built on the published Python client (opentelemetry-opamp-client),
driven for opampd's interoperability tests.

    py_agent.py --url URL --name SERVICE --events FILE [--seconds N] [--heartbeat S]
                [--uid HEX] [--header 'K: V'] [--reject-config]

Appends one JSON object per line to --events: started, exchange, config_received,
config_applied, config_failed, server_error, library_error, stopped. Exits 0 after --seconds.
"""
import argparse
import logging
import json
import sys
import threading
import time

from opentelemetry._opamp.agent import OpAMPAgent
from opentelemetry._opamp.callbacks import OpAMPCallbacks
from opentelemetry._opamp.client import _DEFAULT_CAPABILITIES, OpAMPClient
from opentelemetry._opamp.proto import opamp_pb2 as pb


class Log:
    def __init__(self, path, name):
        self.f = open(path, "a", buffering=1, encoding="utf-8")
        self.name = name
        self.lock = threading.Lock()

    def __call__(self, event, **kw):
        with self.lock:
            self.f.write(json.dumps({"t": time.time(), "agent": self.name, "event": event, **kw}, default=str) + "\n")


class LibraryErrors(logging.Handler):
    """Errors the library logs (e.g. exceptions it swallows in callbacks) become events."""

    def __init__(self, log):
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record):
        self.log("library_error", level=record.levelname, message=record.getMessage()[:500])


class Client(OpAMPClient):
    """Adds health to full-state messages and logs every exchange."""

    def __init__(self, log, **kw):
        super().__init__(**kw)
        self.log = log

    def build_full_state_message(self):
        msg = pb.AgentToServer.FromString(super().build_full_state_message())
        msg.health.healthy = True
        msg.health.status = "running"
        return msg.SerializeToString()

    def send(self, data):
        sent = pb.AgentToServer.FromString(data)
        reply = super().send(data)
        self.log("exchange", seq=sent.sequence_num, sent=[f.name for f, _ in sent.ListFields()],
                 flags=reply.flags, capabilities=reply.capabilities,
                 uid_echoed=reply.instance_uid == sent.instance_uid)
        return reply


class Callbacks(OpAMPCallbacks):
    def __init__(self, log, reject):
        self.log = log
        self.reject = reject
        self.last = None

    def on_error(self, agent, client, error_response):
        self.log("server_error", type=error_response.type, message=error_response.error_message)

    def on_message(self, agent, client, message):
        # The library passes its MessageData: remote_config is None when absent.
        rc = message.remote_config
        if rc is None:
            return
        files = {name: f.body.decode() for name, f in rc.config.config_map.items()}
        self.log("config_received", hash=rc.config_hash.hex(), files=files, duplicate=rc.config_hash == self.last)
        if rc.config_hash == self.last:
            return
        self.last = rc.config_hash
        if self.reject:
            status, err = pb.RemoteConfigStatuses_FAILED, "rejected by test agent"
            self.log("config_failed", hash=rc.config_hash.hex())
        else:
            status, err = pb.RemoteConfigStatuses_APPLIED, ""
            client.update_effective_config(files, "text/yaml")
            self.log("config_applied", hash=rc.config_hash.hex())
        if client.update_remote_config_status(rc.config_hash, status, err) is not None:
            agent.send(client.build_full_state_message())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--events", required=True)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--heartbeat", type=float, default=1)
    ap.add_argument("--uid")
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--reject-config", action="store_true")
    a = ap.parse_args()
    log = Log(a.events, a.name)
    logging.getLogger("opentelemetry._opamp").addHandler(LibraryErrors(log))
    headers = dict((k.strip(), v.strip()) for k, _, v in (h.partition(":") for h in a.header))
    client = Client(log, endpoint=a.url, headers=headers,
                    capabilities=_DEFAULT_CAPABILITIES | pb.AgentCapabilities_ReportsHealth,
                    agent_identifying_attributes={"service.name": a.name, "service.version": "1.0.0"},
                    agent_non_identifying_attributes={"host.name": "interop-host", "os.type": "linux"})
    if a.uid:
        client._instance_uid = bytes.fromhex(a.uid.replace("-", ""))
    client.update_effective_config({"": "receivers: {}"}, "text/yaml")
    agent = OpAMPAgent(interval=a.heartbeat, callbacks=Callbacks(log, a.reject_config), client=client)
    log("started", uid=client._instance_uid.hex())
    agent.start()
    time.sleep(a.seconds)
    agent.stop(timeout=5)
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
