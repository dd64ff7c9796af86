#!/usr/bin/env python3
"""Regenerates the golden protocol messages in this directory from a real PostgreSQL 15.

Starts a throwaway primary (and a hot standby) under a temporary directory, drives real clients
(psql, pg_receivewal, a walreceiver) through a logging proxy and a few raw sessions straight
to the server, then writes the first message of each kind as `<name>.bin`: the complete message
as sent (type byte, length, body; first packets have no type byte).

Run as root (servers run as the `postgres` user) or as a non-root user:
    python3 tests/data/wire/capture.py
PG_BIN overrides the binary directory (default /usr/lib/postgresql/15/bin).
"""

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
OUT = os.path.dirname(os.path.abspath(__file__))
PRIMARY, PROXY, STANDBY = 56701, 56702, 56703
SSL_CODE, GSS_CODE, CANCEL_CODE = 80877103, 80877104, 80877102

NAMES = {
    "R": "authentication", "S": "parameter_status", "K": "backend_key_data",
    "Z": "ready_for_query", "T": "row_description", "D": "data_row",
    "C": "command_complete", "E": "error_response", "N": "notice_response",
    "W": "copy_both_response", "H": "copy_out_response", "G": "copy_in_response",
    "d": "copy_data", "c": "copy_done", "I": "empty_query_response",
    "v": "negotiate_protocol_version", "Q": "query", "p": "password", "X": "terminate",
}
AUTH = {0: "ok", 3: "cleartext", 5: "md5", 10: "sasl", 11: "sasl_continue", 12: "sasl_final"}


def as_pg(cmd, **kw):
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    return subprocess.run(cmd, check=True, **kw)


class Proxy(threading.Thread):
    """Forwards PROXY to PRIMARY and records every connection's two byte streams."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sessions = []
        self.lsock = socket.create_server(("127.0.0.1", PROXY))

    def run(self):
        while True:
            client, _ = self.lsock.accept()
            server = socket.create_connection(("127.0.0.1", PRIMARY))
            streams = {"c2s": bytearray(), "s2c": bytearray()}
            self.sessions.append(streams)
            for src, dst, key in ((client, server, "c2s"), (server, client, "s2c")):
                threading.Thread(target=pump, args=(src, dst, streams[key]), daemon=True).start()


def pump(src, dst, log):
    try:
        while data := src.recv(65536):
            log.extend(data)
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def split_session(c2s, s2c):
    """Yields (direction, name, message bytes) in stream order per direction."""
    out, pos, negotiations = [], 0, 0
    while pos + 8 <= len(c2s):
        length, code = struct.unpack_from(">ii", c2s, pos)
        packet = bytes(c2s[pos:pos + length])
        pos += length
        if code in (SSL_CODE, GSS_CODE):
            out.append(("c2s", "ssl_request" if code == SSL_CODE else "gssenc_request", packet))
            negotiations += 1
            continue
        out.append(("c2s", "cancel_request" if code == CANCEL_CODE else "startup_message", packet))
        break
    for name, msg in typed(c2s[pos:]):
        out.append(("c2s", name, msg))
    for name, msg in typed(s2c[negotiations:]):
        out.append(("s2c", name, msg))
    return out


def typed(stream):
    pos = 0
    while pos + 5 <= len(stream):
        tag = chr(stream[pos])
        (length,) = struct.unpack_from(">i", stream, pos + 1)
        msg = bytes(stream[pos:pos + 1 + length])
        if len(msg) < 1 + length:
            return
        pos += 1 + length
        name = NAMES.get(tag, "unknown_%02x" % ord(tag))
        if tag == "R":
            name += "_" + AUTH.get(struct.unpack_from(">i", msg, 5)[0], "other")
        if tag == "d" and len(msg) > 5 and chr(msg[5]) in "wkrh":
            name += "_" + chr(msg[5])
        yield name, msg


def save(found, label, messages):
    passwords = 0
    for _, name, msg in messages:
        if name in ("row_description", "data_row", "command_complete", "error_response",
                    "notice_response"):
            if label in ("scram", "receivewal", "walreceiver"):
                continue  # same results as the labelled sessions
            name = f"{name}_{label}"
        if name == "password":
            passwords += 1
            name = "sasl_initial_response" if passwords == 1 else "sasl_response"
        if name == "copy_data_w" and len(msg) > 200:
            continue  # keep only short XLogData as golden bytes
        found.setdefault(name, msg)


def raw_session(startup_params, *messages, read_for=1.0):
    """Sends a startup packet and messages straight to PRIMARY; returns the server's bytes."""
    body = struct.pack(">i", startup_params.pop("_version", 196608))
    for k, v in startup_params.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    sock = socket.create_connection(("127.0.0.1", PRIMARY))
    sock.sendall(struct.pack(">i", len(body) + 4) + body)
    time.sleep(0.2)
    for m in messages:
        sock.sendall(m)
        time.sleep(0.1)
    sock.settimeout(read_for)
    data = bytearray()
    try:
        while chunk := sock.recv(65536):
            data.extend(chunk)
    except OSError:
        pass
    sock.close()
    return data


def msg(tag, body):
    return tag + struct.pack(">i", len(body) + 4) + body


def capture(tmp):
    data, standby = os.path.join(tmp, "primary"), os.path.join(tmp, "standby")
    as_pg([f"{PG_BIN}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
          stdout=subprocess.DEVNULL)
    with open(os.path.join(data, "postgresql.conf"), "a") as f:
        f.write(f"port={PRIMARY}\nlisten_addresses='127.0.0.1'\nwal_level=replica\n"
                "wal_sender_timeout='2s'\nunix_socket_directories=''\n"
                "password_encryption='scram-sha-256'\n")
    hba = os.path.join(data, "pg_hba.conf")
    with open(hba) as f:
        rest = f.read()
    with open(hba, "w") as f:
        f.write("host replication scram 127.0.0.1/32 scram-sha-256\n"
                "host all md5user 127.0.0.1/32 md5\n"
                "host all pwuser 127.0.0.1/32 password\n" + rest)
    as_pg([f"{PG_BIN}/pg_ctl", "-D", data, "-l", os.path.join(tmp, "log"), "-w", "start"],
          stdout=subprocess.DEVNULL)
    try:
        run_sessions(data, standby)
    finally:
        as_pg([f"{PG_BIN}/pg_ctl", "-D", data, "-m", "immediate", "stop"], stdout=subprocess.DEVNULL)
        if os.path.exists(os.path.join(standby, "postmaster.pid")):
            as_pg([f"{PG_BIN}/pg_ctl", "-D", standby, "-m", "immediate", "stop"],
                  stdout=subprocess.DEVNULL)


def psql(conninfo, sql, env=None, check=True):
    return subprocess.run([f"{PG_BIN}/psql", conninfo, "-Atc", sql], env=env, check=check,
                          capture_output=True)


def run_sessions(data, standby):
    direct = f"host=127.0.0.1 port={PRIMARY} user=postgres dbname=postgres"
    psql(direct, "CREATE ROLE scram LOGIN REPLICATION PASSWORD 'pw'; CREATE TABLE t(a int); "
         "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD 'pw';")
    proxy = Proxy()
    proxy.start()
    via = f"host=127.0.0.1 port={PROXY} user=postgres replication=true application_name=capture"
    labelled = []
    for label, sql in (("identify_system", "IDENTIFY_SYSTEM"), ("sql", "SELECT 1"),
                       ("timeline_history", "TIMELINE_HISTORY 1"), ("show", "SHOW wal_segment_size")):
        psql(via, sql, check=False)
        labelled.append(label)
    env = dict(os.environ, PGPASSWORD="pw")
    psql(f"host=127.0.0.1 port={PROXY} user=scram dbname=postgres replication=true",
         "IDENTIFY_SYSTEM", env=env)
    labelled.append("scram")
    receivewal(data)
    labelled.append("receivewal")
    walreceiver(data, standby)
    labelled.append("walreceiver")
    found = {}
    for label, s in zip(labelled, proxy.sessions):
        save(found, label, split_session(s["c2s"], s["s2c"]))
    for label, server_bytes in raw_sessions():
        save(found, label, [("s2c", n, m) for n, m in typed(server_bytes)])
    for name, m in sorted(found.items()):
        with open(os.path.join(OUT, name + ".bin"), "wb") as f:
            f.write(m)
        print(f"{name}: {len(m)} bytes")


def receivewal(data):
    wal_dir = os.path.join(os.path.dirname(data), "receivewal")
    os.mkdir(wal_dir)
    proc = subprocess.Popen(
        [f"{PG_BIN}/pg_receivewal", "-d", f"host=127.0.0.1 port={PROXY} user=postgres",
           "-D", wal_dir, "--status-interval=0", "-n"])
    time.sleep(1.0)
    psql(f"host=127.0.0.1 port={PRIMARY} user=postgres dbname=postgres", "INSERT INTO t VALUES (1)")
    time.sleep(2.5)  # long enough for a keepalive ping at wal_sender_timeout/2
    proc.send_signal(2)
    proc.wait(timeout=10)


def walreceiver(data, standby):
    as_pg([f"{PG_BIN}/pg_basebackup", "-h", "127.0.0.1", "-p", str(PRIMARY), "-U", "postgres",
           "-D", standby, "-X", "none", "--no-sync", "-c", "fast"])
    with open(os.path.join(standby, "postgresql.conf"), "a") as f:
        f.write(f"port={STANDBY}\nhot_standby_feedback=on\nwal_receiver_status_interval=1\n"
                f"primary_conninfo='host=127.0.0.1 port={PROXY} user=postgres "
                "application_name=sbcluster'\n")
    open(os.path.join(standby, "standby.signal"), "w").close()
    logfile = os.path.join(os.path.dirname(standby), "standby.log")
    as_pg([f"{PG_BIN}/pg_ctl", "-D", standby, "-l", logfile, "-w", "start"], stdout=subprocess.DEVNULL)
    psql(f"host=127.0.0.1 port={PRIMARY} user=postgres dbname=postgres", "INSERT INTO t VALUES (2)")
    time.sleep(2.5)
    as_pg([f"{PG_BIN}/pg_ctl", "-D", standby, "-m", "fast", "stop"], stdout=subprocess.DEVNULL)


def raw_sessions():
    user = {"user": "postgres", "database": "postgres"}
    yield "empty", raw_session(dict(user), msg(b"Q", b"\0"))
    yield "notice", raw_session(dict(user), msg(b"Q", b"DO $$BEGIN RAISE NOTICE 'hi'; END$$\0"))
    yield "copy", raw_session(dict(user), msg(b"Q", b"COPY (SELECT 1) TO STDOUT\0"),
                              msg(b"Q", b"COPY t FROM STDIN\0"), msg(b"c", b""))
    yield "negotiate", raw_session(dict(user, _version=196608 + 99, **{"_pq_.x": "1"}))
    yield "bad_type", raw_session(dict(user, replication="true"), msg(b"\x99", b""))
    yield "md5", raw_session({"user": "md5user"})
    yield "cleartext", raw_session({"user": "pwuser"})


def main():
    tmp = tempfile.mkdtemp(prefix="walrelay-capture-")
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres")
    try:
        capture(tmp)
    finally:
        if not os.environ.get("KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
