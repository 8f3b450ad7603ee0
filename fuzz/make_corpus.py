#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/.

Small hand-made inputs, one per interesting shape: valid requests of every kind for both
ABIs, scripted hostile-ring sessions, xenstore messages, and the repository's own configs.
Run from anywhere: `python3 fuzz/make_corpus.py`. The output is committed; libFuzzer adds
what it finds to the same directories during longer runs (see the README)."""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

LAYOUT = {
    "x86_64": dict(request=112, req_id=8, req_sector=16, req_seg=24, discard_nr=24, ind_handle=24, ind_grefs=28),
    "x86_32": dict(request=108, req_id=4, req_sector=12, req_seg=20, discard_nr=20, ind_handle=20, ind_grefs=24),
}


def put(b, off, data):
    b[off:off + len(data)] = data


def seg(gref, first, last):
    return struct.pack("<IBBH", gref, first, last, 0)


def requests(abi):
    l = LAYOUT[abi]
    out = {}

    def base(op, idv=0x1122334455667788, sector=64):
        b = bytearray(l["request"])
        b[0] = op
        put(b, l["req_id"], struct.pack("<Q", idv))
        put(b, l["req_sector"], struct.pack("<Q", sector))
        return b

    for op, name in [(0, "read"), (1, "write"), (2, "barrier"), (3, "flush")]:
        for n in ([0, 1, 11] if op >= 2 else [1, 2, 11]):
            b = base(op)
            b[1] = n
            put(b, 2, struct.pack("<H", 0xCA00))
            for i in range(n):
                put(b, l["req_seg"] + 8 * i, seg(8 + i, 0, 7 - (i % 8)))
            out[f"{name}_{n}seg"] = b
    b = base(0)
    b[1] = 1
    put(b, l["req_seg"], seg(8, 6, 2))  # first_sect > last_sect
    out["read_bad_segment"] = b
    b = base(1)
    b[1] = 12  # too many segments
    out["write_12seg"] = b
    b = base(5)
    b[1] = 1
    put(b, l["discard_nr"], struct.pack("<Q", 4096))
    out["discard_secure"] = b
    for iop, nseg in [(0, 1), (1, 512), (1, 513), (0, 4096), (2, 3)]:
        b = base(6)
        b[1] = iop
        put(b, 2, struct.pack("<H", nseg))
        put(b, l["ind_handle"], struct.pack("<H", 0xCA00))
        for i in range((nseg + 511) // 512):
            put(b, l["ind_grefs"] + 4 * i, struct.pack("<I", 100 + i))
        out[f"indirect_op{iop}_{nseg}"] = b
    out["reserved_op4"] = base(4)
    out["unknown_op200"] = base(200)
    out["truncated"] = base(1)[:20]
    # Each input starts with the selector byte (how many indirect segments are offered).
    seeds = {}
    for name, b in out.items():
        for sel in (0, 1, 3):
            seeds[f"{name}_sel{sel}"] = bytes([sel]) + bytes(b)
    return seeds


def backend_ring():
    # Commands (see fuzz/src/backend_ring.rs): 1 = structured request, 2 = req_prod,
    # 0 = raw slot, 3 = header field, 4/5 = indirect pages, 6 = notify and process.
    s = {}
    rw = lambda op, nseg, sels: bytes([1, op, nseg, 7, 0, 3, 0]) + b"".join(bytes([g, 0x38]) for g in sels)
    for flags in (0, 1, 2, 3):
        s[f"read_write_f{flags}"] = bytes([flags]) + rw(1, 2, [0, 1]) + rw(0, 2, [0, 1]) + b"\x06"
    s["readonly_grant_write"] = bytes([1]) + rw(1, 1, [2]) + b"\x06" + rw(0, 1, [2]) + b"\x06"
    s["flush_barrier"] = bytes([1]) + rw(3, 0, []) + rw(2, 1, [0]) + b"\x06"
    s["discard"] = bytes([1]) + bytes([1, 5, 1, 9, 0, 1, 0]) + b"\x06"
    s["readonly_disk"] = bytes([5]) + rw(1, 1, [0]) + rw(0, 1, [0]) + b"\x06"
    # Indirect: fill an indirect page with valid segments, then an indirect request naming it.
    s["indirect"] = bytes([1, 5, 0, 40, 1, 6, 1, 39, 1, 0, 2, 0, 0, 0, 6])
    s["indirect_garbage_page"] = bytes([1, 4, 0, 3, 0, 250, 0x3F, 1, 2, 3, 4, 1, 6, 1, 39, 1, 0, 2, 0, 0, 0, 6])
    s["req_prod_overflow"] = bytes([1, 2, 250, 0xFF, 0xFF, 0xFF, 0x7F, 6])
    s["req_prod_ahead"] = bytes([1, 2, 39, 6, 2, 39, 6])
    s["raw_slot"] = bytes([0, 0, 0, 112]) + bytes(range(112)) + bytes([2, 1, 6])
    s["events"] = bytes([1, 3, 0, 9, 9, 9, 9, 3, 1, 0, 0, 0, 0]) + rw(0, 1, [0]) + b"\x06"
    many = b"".join(rw(i % 2, 1, [i % 6]) for i in range(40))
    s["ring_full"] = bytes([1]) + many + b"\x06" + many + b"\x06"
    return s


def frontend_responses():
    # Commands (see fuzz/src/frontend_responses.rs): 0/1 = submit, 2/3 = response for a
    # published id, 4 = raw response, 5 = rsp_prod, 6 = scribble, 7 = notify and poll.
    s = {}
    for flags in (0, 1, 2, 3):
        s[f"ok_cycle_f{flags}"] = bytes([flags, 0, 0x08, 4, 0, 1, 0x09, 2, 2, 0, 2, 1, 0, 7])
    s["errors"] = bytes([3, 0, 0, 0, 2, 0, 0x08, 0, 2, 1, 0x10, 7])
    s["wrong_op"] = bytes([3, 0, 1, 0, 2, 0, 0x81, 7])
    s["bad_status"] = bytes([3, 0, 0, 0, 2, 0, 0x18, 7])
    s["duplicate"] = bytes([3, 0, 0, 0, 0, 0, 4, 2, 0, 0, 2, 0, 0, 7])
    s["flush_barrier_discard"] = bytes([3, 0, 2, 0, 0, 3, 0, 0, 4, 0, 2, 0, 0, 2, 1, 0, 2, 2, 0, 7])
    s["rsp_overflow"] = bytes([3, 0, 0, 0, 5, 200, 0x40, 0, 0, 0, 7])
    s["raw_rsp"] = bytes([3, 0, 0, 0, 4]) + bytes(16) + b"\x07"
    s["scribble_req_prod"] = bytes([3, 0, 0, 0, 6, 0, 0, 0x20, 0, 0, 0, 2, 0, 0, 7])
    return s


def xs_wire():
    def msg(ty, req, tx, payload):
        return struct.pack("=IIII", ty, req, tx, len(payload)) + payload

    s = {}
    s["read_reply"] = bytes([5]) + msg(2, 1, 0, b"4")
    s["watch_event"] = bytes([3]) + msg(15, 0, 0, b"/local/domain/0/backend/vbd/1/51712/state\x00tok1\x00")
    s["directory"] = bytes([60]) + msg(1, 2, 0, b"51712\x0051728\x00")
    s["error"] = bytes([1]) + msg(16, 3, 0, b"ENOENT\x00")
    s["tx_start"] = bytes([16]) + msg(6, 4, 0, b"17\x00")
    s["two_messages"] = bytes([7]) + msg(2, 1, 0, b"abc") + msg(11, 2, 5, b"OK\x00")
    s["payload_max"] = bytes([59]) + msg(2, 1, 0, b"x" * 4096)
    s["too_long"] = bytes([13]) + struct.pack("=IIII", 2, 1, 0, 4097)
    s["partial"] = bytes([2]) + msg(2, 1, 0, b"hello")[:10]
    return s


def config():
    s = {}
    cdir = os.path.join(ROOT, "configs")
    for f in sorted(os.listdir(cdir)):
        if f.endswith(".cfg"):
            with open(os.path.join(cdir, f), "rb") as fh:
                s[f[:-4]] = fh.read()
    s["bad_value"] = b"# bad\n\nring.order = banana\n"
    s["empty"] = b""
    s["nested"] = b"ring {\n  order = 2\n  queues = 4\n}\n"
    s["bad_utf8"] = b"ring.order = \xff\xfe\n"
    return s


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as fh:
            fh.write(data)
    print(f"{target}: {len(seeds)} seeds")


write("blkif_x86_64", requests("x86_64"))
write("blkif_x86_32", requests("x86_32"))
write("backend_ring", backend_ring())
write("frontend_responses", frontend_responses())
write("xs_wire", xs_wire())
write("config", config())
