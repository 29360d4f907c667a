#!/usr/bin/env python3
"""Write small seed inputs for the fuzz targets into fuzz/corpus/<target>/ (not
committed: corpora are build output). Seeds only give the fuzzer a head start on
the record formats the targets decode (see each target's header comment).

    python3 fuzz/seeds.py
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def u64(*v):
    return struct.pack("<%dQ" % len(v), *v)


def pad8(b):
    return b + b"\0" * (-len(b) % 8)


# --- kdbus -------------------------------------------------------------------

ITEM = dict(PAYLOAD_VEC=2, FDS=5, BLOOM_PARAMETER=7, BLOOM_FILTER=8, BLOOM_MASK=9,
            DST_NAME=10, MAKE_NAME=11, ATTACH_FLAGS_SEND=12, ATTACH_FLAGS_RECV=13,
            ID=14, NAME=15, POLICY_ACCESS=0x2000, ID_ADD=0x8003, NAME_ADD=0x8000)
ATTACH_ALL = (1 << 14) - 1
DBUS = 0x4442757344427573


def item(t, payload):
    return pad8(u64(16 + len(payload), t) + payload)


def item_str(t, s):
    return item(t, s.encode() + b"\0")


def cmd_generic(flags, items=b""):
    return u64(24 + len(items), flags, 0) + items


def bus_make(name, bloom_size=64, n_hash=8):
    return cmd_generic(0, item_str(ITEM["MAKE_NAME"], name)
                       + item(ITEM["BLOOM_PARAMETER"], u64(bloom_size, n_hash))
                       + item(ITEM["ATTACH_FLAGS_SEND"], u64(ATTACH_ALL)))


def hello(flags=1, pool=16 * 4096, items=b""):
    return u64(96 + len(items), flags, 0, ATTACH_ALL, ATTACH_ALL, 0, 0, pool, 0, 0) \
        + b"\0" * 16 + items


def send(dst_id, payload=b"", flags=0, cookie=1, timeout_or_reply=0, dst_name=None,
         bloom=None, send_flags=0, n_fds=0, payload_type=DBUS):
    """kdbus_cmd_send + kdbus_msg + items, payload vector by offset behind them."""
    items = b""
    if dst_name:
        items += item_str(ITEM["DST_NAME"], dst_name)
    if bloom is not None:
        items += item(ITEM["BLOOM_FILTER"], u64(0) + bloom)
    vec_at = len(items)
    if payload:
        items += item(ITEM["PAYLOAD_VEC"], u64(0, 0))
    if n_fds:
        items += item(ITEM["FDS"], struct.pack("<%di" % n_fds, *([-1] * n_fds)))
    msg_size = 64 + len(items)
    data_off = 56 + msg_size
    if payload:
        v = u64(len(payload), data_off)
        start = vec_at + 16
        items = items[:start] + v + items[start + 16:]
    msg = u64(msg_size, flags, 0, dst_id, 0, payload_type, cookie, timeout_or_reply)
    body = u64(56, send_flags, 0, 56, 0, 0, 0) + msg + items
    return pad8(body + payload)


def recv(flags=0, offset=0):
    return u64(64, flags, 0, 0, 0, offset, 0, 0)


def free(offset=0):
    return u64(32, 0, 0, offset)


def conn_info(id_=0, name=None):
    items = item_str(ITEM["NAME"], name) if name else b""
    return u64(56 + len(items), 0, 0, id_, ATTACH_ALL, 0, 0) + items


def list_(flags=0xf):
    return u64(40, flags, 0, 0, 0)


def match_add(cookie, items, flags=0):
    return u64(32 + len(items), flags, 0, cookie) + items


def name_cmd(name, flags=0):
    return cmd_generic(flags, item_str(ITEM["NAME"], name))


CMD = dict(BUS_MAKE=0, DOMAIN_MAKE=1, ENDPOINT_MAKE=2, ENDPOINT_UPDATE=3, HELLO=4,
           UPDATE=5, BYEBYE=6, FREE=7, CONN_INFO=8, BUS_CREATOR_INFO=9, LIST=10, SEND=11,
           RECV=12, NAME_ACQUIRE=13, NAME_RELEASE=14, MATCH_ADD=15, MATCH_REMOVE=16,
           RELEASE=17)
# Slots at start (native_commands.rs): 0 control(root) 1 control(1000) 2 bus owner
# 3 conn uid 1000 (id 1) 4 conn uid 1001 (id 2) 5 conn root (id 3)
# 6 endpoint(1000) 7 endpoint(root); new ones are appended.
PATCH_OFFSET = 0x80
FIX_SIZE = 0x40
NO_REPLY = 0x20


def rec(cmd, slot, body, extra=0, n_fds=0):
    op = CMD[cmd] | extra
    return bytes([op, slot | (n_fds << 5)]) + struct.pack("<H", len(body)) + body


def event(op, sel=0):
    return bytes([op, sel, 0, 0])


# --- D-Bus -------------------------------------------------------------------

def dstr(s, at):
    b = s.encode()
    pad = -at % 4
    return b"\0" * pad + struct.pack("<I", len(b)) + b + b"\0"


def dsig(s):
    b = s.encode()
    return bytes([len(b)]) + b + b"\0"


def dbus_body(sig, args):
    out = b""
    for t, v in zip(sig, args):
        if t in "so":
            out += dstr(v, len(out))
        elif t == "u":
            out += b"\0" * (-len(out) % 4) + struct.pack("<I", v)
        elif t == "g":
            out += dsig(v)
    return out


def dbus_msg(mtype, serial, path=None, iface=None, member=None, dest=None, sig="",
             args=(), reply_serial=None, error=None, fds=0, flags=0, body=None):
    if body is None:
        body = dbus_body(sig, args)
    fields = b""

    def field(code, t, value):
        nonlocal fields
        fields += b"\0" * (-len(fields) % 8)
        f = bytes([code]) + dsig(t)
        if t in "so":
            f += dstr(value, (16 + len(fields) + len(f)) % 4)
        elif t == "g":
            f += dsig(value)
        elif t == "u":
            at = 16 + len(fields) + len(f)
            f += b"\0" * (-at % 4) + struct.pack("<I", value)
        fields += f

    if path:
        field(1, "o", path)
    if iface:
        field(2, "s", iface)
    if member:
        field(3, "s", member)
    if error:
        field(4, "s", error)
    if reply_serial:
        field(5, "u", reply_serial)
    if dest:
        field(6, "s", dest)
    if sig:
        field(8, "g", sig)
    if fds:
        field(9, "u", fds)
    hdr = b"l" + bytes([mtype, flags, 1]) + struct.pack("<III", len(body), serial, len(fields))
    return pad8(hdr + fields) + body


DRIVER = dict(dest="org.freedesktop.DBus", path="/org/freedesktop/DBus",
              iface="org.freedesktop.DBus")


def call_driver(serial, member, sig="", args=(), iface="org.freedesktop.DBus"):
    return dbus_msg(1, serial, path=DRIVER["path"], iface=iface, member=member,
                    dest=DRIVER["dest"], sig=sig, args=args)


def signal(serial, sig="", args=(), path="/org/fuzz", iface="org.fuzz.I", member="Changed"):
    return dbus_msg(4, serial, path=path, iface=iface, member=member, sig=sig, args=args)


# --- seeds -------------------------------------------------------------------

def native_seeds():
    ping = dbus_msg(1, 5, path="/org/fuzz", iface="org.fuzz.I", member="Ping", sig="s",
                    args=("hi",))
    denied = dbus_msg(1, 6, path="/org/fuzz", iface="org.fuzz.Denied", member="Ping")
    now = 1_000_000_000
    yield "unicast_recv_free", (
        rec("SEND", 3, send(2, ping)) + rec("RECV", 4, recv(), PATCH_OFFSET)
        + rec("FREE", 4, free(), PATCH_OFFSET)
        + rec("SEND", 3, send(2, ping, cookie=2)) + rec("RECV", 4, recv(1 << 8), PATCH_OFFSET)
        + rec("RECV", 4, recv(2)) + rec("SEND", 3, send(2, denied)))
    yield "call_timeout_reply", (
        rec("SEND", 3, send(2, ping, flags=1, cookie=7, timeout_or_reply=now + 100_000_000))
        + rec("RECV", 4, recv()) + event(0xf1, 1) + rec("RECV", 3, recv())
        + rec("SEND", 3, send(2, ping, flags=1, cookie=8, timeout_or_reply=now + 10**10))
        + rec("SEND", 4, send(1, b"", cookie=9, timeout_or_reply=8))
        + rec("SEND", 3, send(2, ping, flags=1, cookie=10, timeout_or_reply=now + 10**10,
                              send_flags=1))
        + rec("BYEBYE", 4, cmd_generic(0)) + rec("RECV", 3, recv()))
    yield "names", (
        rec("NAME_ACQUIRE", 3, name_cmd("org.fuzz.A", 4))
        + rec("NAME_ACQUIRE", 4, name_cmd("org.fuzz.A", 4))
        + rec("SEND", 5, send(0, ping, dst_name="org.fuzz.A"))
        + rec("CONN_INFO", 5, conn_info(name="org.fuzz.A"))
        + rec("CONN_INFO", 5, conn_info(id_=2)) + rec("LIST", 5, list_())
        + rec("FREE", 5, free(), PATCH_OFFSET)
        + rec("NAME_RELEASE", 3, name_cmd("org.fuzz.A"))
        + rec("NAME_ACQUIRE", 4, name_cmd("org.fuzz.Root.X")))
    bloom = u64(*([0xffffffffffffffff] * 8))
    yield "match_broadcast", (
        rec("MATCH_ADD", 4, match_add(1, item(ITEM["BLOOM_MASK"], u64(*([0] * 8)))))
        + rec("MATCH_ADD", 4, match_add(2, item(ITEM["ID_ADD"], u64(0, 0))))
        + rec("MATCH_ADD", 4, match_add(3, item_str(ITEM["NAME_ADD"], "org.fuzz.A")))
        + rec("SEND", 3, send((1 << 64) - 1, signal(3), flags=4, bloom=bloom))
        + rec("RECV", 4, recv()) + rec("MATCH_REMOVE", 4, match_add(1, b""))
        + rec("UPDATE", 3, cmd_generic(0, item(ITEM["ATTACH_FLAGS_RECV"], u64(ATTACH_ALL))))
        + rec("BUS_CREATOR_INFO", 3, conn_info()))
    yield "bus_make_hello", (
        rec("BUS_MAKE", 1, bus_make("1000-mine")) + rec("HELLO", 8, hello())
        + rec("SEND", 8, send(1, b"abcdefgh")) + rec("RECV", 8, recv())
        + event(0xf2, 2) + rec("LIST", 3, list_()))
    pol = item_str(ITEM["NAME"], "org.fuzz.Ep") + item(ITEM["POLICY_ACCESS"], u64(3, 1, 0))
    yield "endpoint", (
        rec("ENDPOINT_MAKE", 7, cmd_generic(0, item_str(ITEM["MAKE_NAME"], "0-ep") + pol))
        + rec("HELLO", 8, hello()) + rec("ENDPOINT_UPDATE", 7, cmd_generic(0, pol))
        + rec("NAME_ACQUIRE", 8, name_cmd("org.fuzz.Ep")) + event(0xf2, 7)
        + rec("HELLO", 6, hello(flags=2, items=pol)))
    yield "fds", (
        rec("SEND", 3, send(2, ping, n_fds=2), n_fds=2) + rec("RECV", 4, recv(1 << 8),
                                                             PATCH_OFFSET))
    yield "monitor", (rec("HELLO", 7, hello(flags=8)) + rec("SEND", 3, send(2, ping))
                      + rec("RECV", 7, recv()))


def bridge_rec(who, data):
    return bytes([who]) + struct.pack("<H", len(data)) + data


def bridge_seeds():
    yield "names_and_calls", (
        bridge_rec(0, call_driver(2, "RequestName", "su", ("org.fuzz.A", 4)))
        + bridge_rec(0, call_driver(3, "AddMatch", "s",
                                    ("type='signal',interface='org.fuzz.I',arg0='x'",)))
        + bridge_rec(1, signal(2, "ss", ("x", "y")))
        + bridge_rec(1, dbus_msg(1, 3, path="/org/fuzz", iface="org.fuzz.I", member="Ping",
                                 dest="org.fuzz.A", sig="s", args=("hi",)))
        + bridge_rec(0, dbus_msg(2, 4, reply_serial=3, dest=":1.2", sig="s", args=("ok",)))
        + bridge_rec(1, dbus_msg(1, 4, path="/", member="Ping", dest=":1.1"))
        + bytes([0xf0, 1, 0, 200]))
    yield "driver", b"".join(
        bridge_rec(2 if i == 0 else 0, m) for i, m in enumerate([
            call_driver(1, "Hello"),
            call_driver(2, "ListNames"),
            call_driver(3, "GetNameOwner", "s", ("org.freedesktop.DBus",)),
            call_driver(4, "GetConnectionCredentials", "s", (":1.1",)),
            call_driver(5, "GetConnectionUnixUser", "s", (":1.2",)),
            call_driver(6, "NameHasOwner", "s", ("org.fuzz.A",)),
            call_driver(7, "ListQueuedOwners", "s", ("org.fuzz.A",)),
            call_driver(8, "StartServiceByName", "su", ("org.fuzz.A", 0)),
            call_driver(9, "RemoveMatch", "s", ("type='signal'",)),
            call_driver(10, "GetId"),
            call_driver(11, "Get", "ss", ("org.freedesktop.DBus", "Features"),
                        iface="org.freedesktop.DBus.Properties"),
            call_driver(12, "GetAll", "s", ("org.freedesktop.DBus",),
                        iface="org.freedesktop.DBus.Properties"),
            call_driver(13, "Introspect", iface="org.freedesktop.DBus.Introspectable"),
            call_driver(14, "GetMachineId", iface="org.freedesktop.DBus.Peer"),
            call_driver(15, "ReloadConfig"),
            call_driver(16, "ReleaseName", "s", ("org.fuzz.A",)),
        ]))
    yield "monitor", (
        bridge_rec(1, dbus_msg(1, 2, path=DRIVER["path"], iface="org.freedesktop.DBus.Monitoring",
                               member="BecomeMonitor", dest=DRIVER["dest"], sig="asu",
                               body=u64(0)[:8]))
        + bridge_rec(0, signal(5))
        + bridge_rec(0, call_driver(6, "RequestName", "su", ("org.fuzz.B", 0))))


def main():
    seeds = {
        "native_commands": dict(native_seeds()),
        "dbus_bridge": dict(bridge_seeds()),
        "sasl": {
            "external_uid_fds": bytes([1 | 4, 3]) + b"\0AUTH EXTERNAL 31303030\r\n"
            b"NEGOTIATE_UNIX_FD\r\nBEGIN\r\nl\1\0\1",
            "data_then_begin": bytes([0, 9]) + b"\0AUTH EXTERNAL\r\nDATA\r\nBEGIN\r\n",
            "rejected": bytes([2, 1]) + b"\0AUTH EXTERNAL 30\r\nAUTH ANONYMOUS\r\nCANCEL\r\n"
            b"ERROR x\r\nBEGIN\r\n",
        },
        "dbus_message": {
            "call": call_driver(2, "RequestName", "su", ("org.fuzz.A", 4)),
            "signal": signal(3, "sos", ("a", "/b/c", "d.e")),
            "error": dbus_msg(3, 4, error="org.fuzz.Error", reply_serial=2, dest=":1.1",
                              sig="s", args=("bad",)),
            "return_fds": dbus_msg(2, 4, reply_serial=2, fds=1),
        },
        "dbus_match_rule": {
            "arg0": b"type='signal',interface='org.fuzz.I',arg0='x'\0" + signal(3, "s", ("x",)),
            "namespace": b"arg0namespace='org.fuzz',path_namespace='/org'\0"
            + signal(3, "s", ("org.fuzz.A",)),
            "path": b"sender=':1.42',arg1path='/a/',member='Changed'\0"
            + signal(3, "so", ("x", "/a/b")),
            "eavesdrop": b"eavesdrop='true',destination=':1.9',type='method_call'\0"
            + dbus_msg(1, 2, path="/", member="M", dest=":1.9"),
        },
        "items": {
            "send": b"\x00" + send(2, b"payload"),
            "hello": b"\x0c" + hello(items=item_str(ITEM["NAME"], "org.fuzz.A")),
            "bus_make": b"\x20" + bus_make("1000-bus"),
            "policy": b"\x23" + item_str(ITEM["NAME"], "org.fuzz.*")
            + item(ITEM["POLICY_ACCESS"], u64(1, 2, 1000)),
            "match": b"\x25" + item(ITEM["BLOOM_MASK"], u64(*([1] * 8)))
            + item_str(ITEM["NAME"], "org.fuzz.A") + item(ITEM["ID"], u64(3)),
        },
        "config_xml": {
            "policy": b"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:tmpdir=/tmp;unix:path=/run/x%20y,guid=00</listen>
  <auth>EXTERNAL</auth>
  <standard_session_servicedirs/>
  <limit name="max_match_rules_per_connection">50</limit>
  <limit name="reply_timeout">5000</limit>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow own="*"/>
    <deny send_interface="org.fuzz.Denied" send_member="M" send_type="method_call"/>
    <allow receive_sender="org.fuzz.A" receive_requested_reply="false"/>
    <allow user="*"/>
  </policy>
  <policy user="root"><allow own_prefix="org.fuzz"/></policy>
  <policy group="0"><deny send_destination=":1.4" max_fds="0"/></policy>
  <policy at_console="true"><allow send_broadcast="true" log="true"/></policy>
  <policy context="mandatory"><deny send_error="org.fuzz.E"/></policy>
  <include ignore_missing="yes">missing.conf</include>
  <includedir>nope.d</includedir>
</busconfig>
""",
        },
    }
    for p in ("/usr/share/dbus-1/session.conf", "/usr/share/dbus-1/system.conf"):
        if os.path.exists(p):
            seeds["config_xml"][os.path.basename(p)] = open(p, "rb").read()
    for target, files in seeds.items():
        d = os.path.join(HERE, "corpus", target)
        os.makedirs(d, exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(d, "seed-" + name), "wb") as f:
                f.write(data)
        print(f"{target}: {len(files)} seeds in {d}")


if __name__ == "__main__":
    main()
