#!/usr/bin/env python3
"""Writes the fuzz seed corpora under fuzz/seeds/<target>/ from the golden captures in
tests/data/ (real PostgreSQL 15 frames and WAL) and a few hand-written text forms.

The wire targets read their first byte as the chunk size in which the rest is delivered.
Run from anywhere: python3 fuzz/seeds/generate.py
"""
import base64
import hashlib
import hmac
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WIRE = ROOT / "tests" / "data" / "wire"
WAL = ROOT / "tests" / "data" / "wal"
SEEDS = ROOT / "fuzz" / "seeds"

BACKEND = [
    "authentication_ok", "authentication_cleartext", "authentication_md5",
    "authentication_sasl", "authentication_sasl_continue", "authentication_sasl_final",
    "parameter_status", "backend_key_data", "ready_for_query", "negotiate_protocol_version",
    "row_description_identify_system", "data_row_identify_system",
    "command_complete_identify_system", "row_description_show", "data_row_show",
    "command_complete_show", "row_description_timeline_history", "copy_both_response",
    "copy_out_response", "copy_in_response", "copy_data_w", "copy_data_k", "copy_data",
    "copy_done", "command_complete_copy", "empty_query_response", "error_response_sql",
    "error_response_bad_type", "error_response_timeline_history", "notice_response_notice",
]
FRONTEND = [
    "query", "sasl_initial_response", "sasl_response", "copy_data_r", "copy_data_h",
    "copy_done", "terminate",
]
REPLICATION = ["copy_data_w", "copy_data_k", "copy_data_r", "copy_data_h"]


def wire(name):
    return (WIRE / f"{name}.bin").read_bytes()


def write(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def framed(target, names, session):
    for name in names:
        write(target, name, b"\xff" + wire(name))
    # A whole conversation, delivered three bytes at a time.
    write(target, "session", b"\x03" + b"".join(wire(n) for n in session))


def startup():
    gss = struct.pack("!II", 8, 80877104)
    cancel = struct.pack("!IIII", 16, 80877102, 4242, 0x5EC0DE)
    write("startup", "startup_message", b"\xff" + wire("startup_message"))
    write("startup", "ssl_request", b"\xff" + wire("ssl_request"))
    write("startup", "gssenc_request", b"\xff" + gss)
    write("startup", "cancel_request", b"\xff" + cancel)
    write("startup", "ssl_then_startup", b"\x05" + wire("ssl_request") + wire("startup_message"))


def replication():
    for name in REPLICATION:
        write("replication_payloads", name[len("copy_data_"):], wire(name)[5:])


def lsn_segment_names():
    write("lsn_segment_names", "lsns", b"0/362FB00\n16/B374D848\n0/0000000A\nFFFFFFFF/FFFFFFFF\n0/0\n")
    write("lsn_segment_names", "ids", b"1\n2\n4294967295\n7712484032370382654\n16MB\n1GB\n1MB\n")
    write("lsn_segment_names", "segments",
          b"000000010000000000000007\n00000002000000000000000A\n000000010000000100000023\n"
          b"FFFFFFFFFFFFFFFF000000FF\nFFFFFFFFFFFFFFFF00000FFF\n00000001.history\n")
    write("lsn_segment_names", "words", struct.pack("<QQQ", 0x362FB00, 0xFFFFFFFFFF000000, 1 << 32))


def history():
    # The first two bytes are the file's timeline (little-endian); the rest is the file.
    write("history", "one_switch", b"\x02\x00" + b"1\t0/362FB00\tno recovery target specified\n")
    write("history", "two_switches",
          b"\x03\x00" + b"1\t0/362FB00\tno recovery target specified\n\n"
          b"# a comment\n2\t0/5000060\tbefore 2026-11-26 13:37:00+00\n")
    write("history", "file_name", b"00000002.history")


def wal_validator():
    # Five header bytes: kind (bit 0 generated, bits 1-2 start, bit 7 corrupt a byte), segment
    # size exponent, split pattern, byte to corrupt (2 bytes); then raw WAL or a program of
    # 3-byte ops for the in-memory WAL writer (small, medium, page fill, switch, abandoned,
    # custom-rmgr record).
    records = bytes([0, 10, 0, 1, 0x40, 0x00, 2, 5, 0, 4, 0x00, 0x30, 0, 21, 0x30, 5, 4, 4,
                     1, 0x00, 0x24, 0, 1, 0])
    switch = bytes([3, 0, 0, 0, 1, 0])
    write("wal_validator", "generated_whole", bytes([1, 0, 3, 0, 0]) + records + switch)
    write("wal_validator", "generated_corrupt", bytes([0x87, 0, 3, 0x31, 0x02]) + records + switch)
    # Fed in small chunks, so without the switch's zero fill to the end of the segment.
    write("wal_validator", "generated_bytewise", bytes([3, 0, 0, 0, 0]) + records)
    write("wal_validator", "generated_chunks", bytes([5, 2, 1, 0, 0]) + records)
    # The first page of real PostgreSQL 15 WAL (1 MiB segments), read raw in large chunks.
    segment = (WAL / "000000010000000000000007").read_bytes()[:8192]
    write("wal_validator", "segment_7_head", bytes([0, 0, 2, 0, 0]) + segment)


def recovery():
    # A flags byte (0: write a valid store state), then entries of kind (name form in bits
    # 0-2, timeline in bits 3-4, content in bits 5-6), segment (7 + n), u16 length, content.
    def entry(kind, seg, content):
        return bytes([kind, seg]) + struct.pack("<H", len(content)) + content

    seg7 = (WAL / "000000010000000000000007").read_bytes()
    seg8 = (WAL / "000000010000000000000008").read_bytes()
    history = b"1\t0/7F0000\tno recovery target specified\n"
    write("recovery", "complete_and_partial",
          b"\x00" + entry(0x40, 0, seg7[:16384]) + entry(0x01, 1, seg8[:8192]))
    write("recovery", "torn_partial", b"\x00" + entry(0x01, 0, seg7[:12000]))
    write("recovery", "timeline_switch",
          b"\x00" + entry(0x40, 0, seg7[:16384]) + entry(0x0C, 0, history)
          + entry(0x09, 1, seg8[:8192]))
    write("recovery", "stray_names",
          b"\x00" + entry(0x02, 2, b"x") + entry(0x07, 1, b"") + entry(0x06, 0, b"junk")
          + entry(0x21, 3, b""))
    write("recovery", "no_state", b"\x01" + entry(0x01, 0, seg7[:8192]))


def downstream_session():
    # A choices byte (bit 0: client off loopback, bit 1: upstream unknown, bit 2: the relay is
    # on timeline 2, bit 3: the upstream's xids are known, bits 4-7: how actions are answered),
    # then what a client sends.
    def msg(tag, body):
        return tag + struct.pack("!I", len(body) + 4) + body

    def query(text):
        return msg(b"Q", text.encode() + b"\0")

    login = wire("startup_message")
    status = msg(b"d", b"r" + struct.pack("!QQQqB", 0x3000100, 0x3000100, 0, 0, 1))
    feedback = msg(b"d", b"h" + struct.pack("!qIIII", 0, 748, 0, 0, 0))
    commands = b"".join(query(q) for q in [
        "IDENTIFY_SYSTEM", "SHOW wal_segment_size", "TIMELINE_HISTORY 2",
        "READ_REPLICATION_SLOT s", "CREATE_REPLICATION_SLOT s PHYSICAL RESERVE_WAL",
        "DROP_REPLICATION_SLOT s WAIT", "SELECT 1",
    ])
    stream = query("START_REPLICATION SLOT s PHYSICAL 0/3000000 TIMELINE 1") + status + feedback
    write("downstream_session", "commands", b"\x00" + login + commands)
    write("downstream_session", "stream", b"\x0c" + login + stream + msg(b"c", b""))
    write("downstream_session", "ssl_first", b"\x00" + struct.pack("!II", 8, 80877103) + login)
    write("downstream_session", "refused", b"\x01" + login + commands)


def access():
    # Text, parsed both as a pg_hba.conf and as a pg_ident.conf; included files do not exist.
    write("access", "pg_hba", b"""\
# TYPE  DATABASE        USER            ADDRESS                 METHOD
local   replication     all                                     trust
host    replication     replicator      127.0.0.1/32            trust
host    replication     replicator      ::1/128                 trust
hostssl replication     replicator      10.0.0.0/8              scram-sha-256
hostssl replication     "all",standby   fe80::/10               cert map=certs clientname=CN
hostnossl replication   replicator      192.168.0.0 255.255.0.0 md5
host    replication     all             samenet                 password
hostssl replication     all             samehost                md5 clientcert=verify-ca
hostgssenc replication  all             all                     reject
host    all             all             0.0.0.0/0               reject
""")
    write("access", "pg_ident", b"""\
# MAPNAME       SYSTEM-USERNAME         PG-USERNAME
certs           standby-a.example.com   replicator
certs           "Standby B"             replicator
certs           standby-c.example.com   "all"
""")
    write("access", "continued_and_quoted",
          b"host replication \"say \"\"hi\"\"\",b, c \\\r\n  10.0.0.0/8 \\\n"
          b"  scram-sha-256 # a comment, \"quoted\"\n"
          b"include_if_exists optional.conf\n")
    write("access", "refused",
          b"host replication +admins all trust\nhost replication all db.example.com md5\n"
          b"host replication all all ldap ldapserver=x\nmap /^(.*)$ \\1\n")
def scram_server():
    # A split byte (the length of the client-first-message), a choices byte (bits 0-1: plain,
    # TLS, TLS with a certificate hash; bit 2: unknown user; bit 3: MD5 secret; bit 4:
    # SCRAM-SHA-256-PLUS; bit 5: an invalid mechanism), the client-first-message, then the
    # client-final-message: real exchanges for the constants of src/proto/auth/fuzzing.rs.
    password, user, salt, iterations = b"fuzz-password", b"fuzz", b"fuzz-salt-16byte", 16
    server_nonce = base64.b64encode(bytes([7] * 18))
    mock_salt = hashlib.sha256(user + bytes([0x42] * 32)).digest()[:16]
    cert_hash = bytes([0xAB] * 32)

    def mac(key, data):
        return hmac.new(key, data, hashlib.sha256).digest()

    def exchange(choices, gs2, pw=password, mocked=False, tamper=lambda m: m):
        nonce = b"fyko+d2lbbFgONRv9qkxdawL"
        first = gs2 + b"n=,r=" + nonce
        server_first = b"r=%s%s,s=%s,i=%d" % (
            nonce, server_nonce, base64.b64encode(mock_salt if mocked else salt),
            4096 if mocked else iterations)
        binding = gs2 + (cert_hash if gs2.startswith(b"p=") else b"")
        without_proof = b"c=" + base64.b64encode(binding) + b",r=" + nonce + server_nonce
        salted = hashlib.pbkdf2_hmac("sha256", pw, mock_salt if mocked else salt,
                                     4096 if mocked else iterations)
        client_key = mac(salted, b"Client Key")
        auth = first[len(gs2):] + b"," + server_first + b"," + without_proof
        signature = mac(hashlib.sha256(client_key).digest(), auth)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        last = tamper(without_proof + b",p=" + base64.b64encode(proof))
        return bytes([len(first), choices]) + first + last

    plus = b"p=tls-server-end-point,,"
    write("scram_server", "plain", exchange(0x00, b"n,,"))
    write("scram_server", "tls_without_hash_y", exchange(0x01, b"y,,"))
    write("scram_server", "tls_n", exchange(0x02, b"n,,"))
    write("scram_server", "plus", exchange(0x12, plus))
    write("scram_server", "wrong_password", exchange(0x00, b"n,,", pw=b"wrong"))
    write("scram_server", "unknown_user", exchange(0x04, b"n,,", mocked=True))
    write("scram_server", "md5_secret", exchange(0x08, b"n,,", mocked=True))
    write("scram_server", "invalid_mechanism", exchange(0x20, b"n,,"))
    write("scram_server", "tls_y_refused", exchange(0x02, b"y,,"))
    write("scram_server", "authzid", exchange(0x00, b"n,a=fuzz,"))
    write("scram_server", "extensions", exchange(
        0x00, b"n,,", tamper=lambda m: m.replace(b",p=", b",x=1,p=")))
    write("scram_server", "nonce_mismatch", exchange(
        0x00, b"n,,", tamper=lambda m: m.replace(b",p=", b"x,p=", 1)))
    write("scram_server", "garbage_after_proof", exchange(
        0x00, b"n,,", tamper=lambda m: m + b",x=1"))
    write("scram_server", "auth_file",
          b"# users\nfuzz SCRAM-SHA-256$16:ZnV6ei1zYWx0LTE2Ynl0ZQ==$"
          b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
          b"\"old user\" md54d45974e13472b5a0be3533de4666414\n")


def main():
    framed("backend_framer", BACKEND, [
        "authentication_ok", "parameter_status", "backend_key_data", "ready_for_query",
        "copy_both_response", "copy_data_w", "copy_data_k", "copy_done",
        "command_complete_copy", "ready_for_query",
    ])
    framed("frontend", FRONTEND, ["query", "copy_data_r", "copy_data_h", "copy_done", "terminate"])
    startup()
    replication()
    lsn_segment_names()
    history()
    wal_validator()
    recovery()
    downstream_session()
    access()
    scram_server()


if __name__ == "__main__":
    main()
