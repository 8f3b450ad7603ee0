/*
 * A blkif ring peer built from Xen's own io/ring.h macros, driven line by line by
 * tests/xen_headers.rs.
 *
 * Usage: xen_ring_peer SHM_PATH PAGES
 *
 * Maps PAGES * 4096 bytes of SHM_PATH (MAP_SHARED; the test maps the same memfd) and then
 * answers one line on stdout for every command line read from stdin. It holds one front
 * ring and one back ring over the same page, so it can play the frontend, the backend or
 * both. Every ring access goes through the header's macros (SHARED_RING_INIT,
 * FRONT/BACK_RING_ATTACH, RING_GET_REQUEST, RING_COPY_REQUEST, RING_COPY_RESPONSE,
 * RING_PUSH_*_AND_CHECK_NOTIFY, RING_FINAL_CHECK_FOR_*, the overflow checks); the request
 * and response structures are the header's, compiled for the ABI of this build (-m64:
 * x86_64-abi, -m32: x86_32-abi).
 *
 * Commands and replies (all numbers decimal; "err ..." for a malformed command):
 *   finit                     SHARED_RING_INIT + FRONT_RING_INIT    -> ok SIZE
 *   fattach IDX               FRONT_RING_ATTACH at IDX              -> ok SIZE
 *   binit                     BACK_RING_INIT                        -> ok SIZE
 *   battach IDX               BACK_RING_ATTACH at IDX               -> ok SIZE
 *   fput rw OP ID SECTOR HANDLE NSEG G:F:L...  (min(NSEG,11) segments follow)
 *   fput discard ID SECTOR HANDLE FLAG NR_SECTORS
 *   fput indirect IOP ID SECTOR HANDLE NSEG G0 .. G7
 *                             fill the next request slot (zeroed first)
 *                                                      -> ok FREE_AFTER | full
 *   fpush                     RING_PUSH_REQUESTS_AND_CHECK_NOTIFY   -> ok NOTIFY
 *   ftake                     next response via RING_COPY_RESPONSE
 *                                     -> rsp ID OP STATUS | none | overflow PROD
 *   ffinal                    RING_FINAL_CHECK_FOR_RESPONSES        -> ok WORK
 *   farm N                    batching final check: rsp_event = rsp_cons + N, then xen_mb
 *                                                                   -> ok
 *   ffree                     RING_FREE_REQUESTS                    -> ok FREE
 *   bunconsumed               RING_HAS_UNCONSUMED_REQUESTS after RING_REQUEST_PROD_OVERFLOW
 *                                                      -> ok N | overflow PROD
 *   btake                     next request via RING_COPY_REQUEST
 *                                     -> req rw OP ID SECTOR HANDLE NSEG G:F:L...
 *                                      | req discard ID SECTOR HANDLE FLAG NR_SECTORS
 *                                      | req indirect IOP ID SECTOR HANDLE NSEG G0..G7
 *                                      | req other OP ID
 *                                      | none | overflow PROD
 *   bput ID OP STATUS         write the next response (RING_GET_RESPONSE) -> ok | err
 *   bpush                     RING_PUSH_RESPONSES_AND_CHECK_NOTIFY  -> ok NOTIFY
 *   bfinal                    RING_FINAL_CHECK_FOR_REQUESTS         -> ok WORK
 *   quit
 */
#define __XEN_INTERFACE_VERSION__ 0x00040e00

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ring.h leaves the barriers to the includer. x86 is TSO: store/store and load/load
 * ordering only need the compiler's cooperation, a full barrier needs mfence. */
#define xen_mb() __sync_synchronize()
#define xen_rmb() __asm__ __volatile__("" ::: "memory")
#define xen_wmb() __asm__ __volatile__("" ::: "memory")

#include <xen/xen.h>
#include <xen/grant_table.h>
#include <xen/io/ring.h>
#include <xen/io/blkif.h>

static blkif_sring_t *sring;
static size_t ring_bytes;
static blkif_front_ring_t front;
static blkif_back_ring_t back;

/* Every request type the slot can hold, so that one RING_COPY_REQUEST serves all. */
union any_request {
    blkif_request_t rw;
    blkif_request_discard_t discard;
    blkif_request_indirect_t indirect;
};

static char *tok(char **save)
{
    return strtok_r(NULL, " \t\r\n", save);
}

static int num(char **save, unsigned long long *out)
{
    char *t = tok(save), *end;
    if (!t)
        return -1;
    errno = 0;
    *out = strtoull(t, &end, 10);
    return (errno || *end) ? -1 : 0;
}

static int snum(char **save, long long *out)
{
    char *t = tok(save), *end;
    if (!t)
        return -1;
    errno = 0;
    *out = strtoll(t, &end, 10);
    return (errno || *end) ? -1 : 0;
}

static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void reply(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static void cmd_fput(char **save)
{
    char *kind = tok(save);
    unsigned long long op, id, sector, handle, n, v;
    blkif_request_t *slot;
    union any_request r;
    unsigned int i;

    if (!kind) {
        reply("err fput: kind missing");
        return;
    }
    if (RING_FULL(&front)) {
        reply("full");
        return;
    }
    memset(&r, 0, sizeof(r));
    if (!strcmp(kind, "rw")) {
        if (num(save, &op) || num(save, &id) || num(save, &sector) || num(save, &handle) ||
            num(save, &n)) {
            reply("err fput rw: bad fields");
            return;
        }
        r.rw.operation = (uint8_t)op;
        r.rw.nr_segments = (uint8_t)n;
        r.rw.handle = (blkif_vdev_t)handle;
        r.rw.id = id;
        r.rw.sector_number = sector;
        for (i = 0; i < n && i < BLKIF_MAX_SEGMENTS_PER_REQUEST; i++) {
            char *t = tok(save);
            unsigned int g, f, l;
            if (!t || sscanf(t, "%u:%u:%u", &g, &f, &l) != 3) {
                reply("err fput rw: bad segment");
                return;
            }
            r.rw.seg[i].gref = g;
            r.rw.seg[i].first_sect = (uint8_t)f;
            r.rw.seg[i].last_sect = (uint8_t)l;
        }
    } else if (!strcmp(kind, "discard")) {
        if (num(save, &id) || num(save, &sector) || num(save, &handle) || num(save, &v) ||
            num(save, &n)) {
            reply("err fput discard: bad fields");
            return;
        }
        r.discard.operation = BLKIF_OP_DISCARD;
        r.discard.flag = (uint8_t)v;
        r.discard.handle = (blkif_vdev_t)handle;
        r.discard.id = id;
        r.discard.sector_number = sector;
        r.discard.nr_sectors = n;
    } else if (!strcmp(kind, "indirect")) {
        if (num(save, &op) || num(save, &id) || num(save, &sector) || num(save, &handle) ||
            num(save, &n)) {
            reply("err fput indirect: bad fields");
            return;
        }
        r.indirect.operation = BLKIF_OP_INDIRECT;
        r.indirect.indirect_op = (uint8_t)op;
        r.indirect.nr_segments = (uint16_t)n;
        r.indirect.id = id;
        r.indirect.sector_number = sector;
        r.indirect.handle = (blkif_vdev_t)handle;
        for (i = 0; i < BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST; i++) {
            if (num(save, &v)) {
                reply("err fput indirect: bad gref");
                return;
            }
            r.indirect.indirect_grefs[i] = (grant_ref_t)v;
        }
    } else {
        reply("err fput: unknown kind %s", kind);
        return;
    }
    /* The slot is a blkif_request; discard and indirect requests are cast onto it, as
     * every frontend does. The whole slot is written, padding included. */
    slot = RING_GET_REQUEST(&front, front.req_prod_pvt);
    memcpy(slot, &r, sizeof(*slot));
    front.req_prod_pvt++;
    reply("ok %u", (unsigned int)RING_FREE_REQUESTS(&front));
}

static void cmd_btake(void)
{
    RING_IDX prod = sring->req_prod;
    union any_request r;
    unsigned int i;
    char line[512];
    int len;

    xen_rmb();
    if (RING_REQUEST_PROD_OVERFLOW(&back, prod)) {
        reply("overflow %u", (unsigned int)prod);
        return;
    }
    if (!RING_HAS_UNCONSUMED_REQUESTS(&back)) {
        reply("none");
        return;
    }
    RING_COPY_REQUEST(&back, back.req_cons, &r.rw);
    back.req_cons++;
    switch (r.rw.operation) {
    case BLKIF_OP_READ:
    case BLKIF_OP_WRITE:
    case BLKIF_OP_WRITE_BARRIER:
    case BLKIF_OP_FLUSH_DISKCACHE:
        len = snprintf(line, sizeof(line), "req rw %u %" PRIu64 " %" PRIu64 " %u %u",
                       r.rw.operation, r.rw.id, (uint64_t)r.rw.sector_number,
                       (unsigned int)r.rw.handle, r.rw.nr_segments);
        for (i = 0; i < r.rw.nr_segments && i < BLKIF_MAX_SEGMENTS_PER_REQUEST; i++)
            len += snprintf(line + len, sizeof(line) - len, " %u:%u:%u",
                            (unsigned int)r.rw.seg[i].gref, r.rw.seg[i].first_sect,
                            r.rw.seg[i].last_sect);
        reply("%s", line);
        break;
    case BLKIF_OP_DISCARD:
        reply("req discard %" PRIu64 " %" PRIu64 " %u %u %" PRIu64, r.discard.id,
              (uint64_t)r.discard.sector_number, (unsigned int)r.discard.handle,
              r.discard.flag, r.discard.nr_sectors);
        break;
    case BLKIF_OP_INDIRECT:
        len = snprintf(line, sizeof(line), "req indirect %u %" PRIu64 " %" PRIu64 " %u %u",
                       r.indirect.indirect_op, r.indirect.id,
                       (uint64_t)r.indirect.sector_number, (unsigned int)r.indirect.handle,
                       (unsigned int)r.indirect.nr_segments);
        for (i = 0; i < BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST; i++)
            len += snprintf(line + len, sizeof(line) - len, " %u",
                            (unsigned int)r.indirect.indirect_grefs[i]);
        reply("%s", line);
        break;
    default:
        reply("req other %u %" PRIu64, r.rw.operation, r.rw.id);
        break;
    }
}

int main(int argc, char **argv)
{
    char line[4096];
    unsigned long pages;
    int fd;
    void *p;

    if (argc != 3) {
        fprintf(stderr, "usage: %s SHM_PATH PAGES\n", argv[0]);
        return 2;
    }
    pages = strtoul(argv[2], NULL, 10);
    ring_bytes = pages * 4096;
    fd = open(argv[1], O_RDWR);
    if (fd < 0) {
        perror(argv[1]);
        return 2;
    }
    p = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    close(fd);
    sring = p;
    reply("ready %s %u %u", sizeof(void *) == 8 ? "x86_64" : "x86_32",
          (unsigned int)__RING_SIZE(sring, ring_bytes), (unsigned int)sizeof(sring->ring[0]));

    while (fgets(line, sizeof(line), stdin)) {
        char *save, *cmd = strtok_r(line, " \t\r\n", &save);
        unsigned long long a, b;
        long long st;
        int flag;

        if (!cmd)
            continue;
        if (!strcmp(cmd, "quit")) {
            break;
        } else if (!strcmp(cmd, "finit")) {
            SHARED_RING_INIT(sring);
            FRONT_RING_INIT(&front, sring, ring_bytes);
            reply("ok %u", (unsigned int)RING_SIZE(&front));
        } else if (!strcmp(cmd, "fattach")) {
            if (num(&save, &a)) {
                reply("err fattach: index");
                continue;
            }
            FRONT_RING_ATTACH(&front, sring, (RING_IDX)a, ring_bytes);
            reply("ok %u", (unsigned int)RING_SIZE(&front));
        } else if (!strcmp(cmd, "binit")) {
            BACK_RING_INIT(&back, sring, ring_bytes);
            reply("ok %u", (unsigned int)RING_SIZE(&back));
        } else if (!strcmp(cmd, "battach")) {
            if (num(&save, &a)) {
                reply("err battach: index");
                continue;
            }
            BACK_RING_ATTACH(&back, sring, (RING_IDX)a, ring_bytes);
            reply("ok %u", (unsigned int)RING_SIZE(&back));
        } else if (!strcmp(cmd, "fput")) {
            cmd_fput(&save);
        } else if (!strcmp(cmd, "fpush")) {
            RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&front, flag);
            reply("ok %d", flag ? 1 : 0);
        } else if (!strcmp(cmd, "ftake")) {
            RING_IDX prod = sring->rsp_prod;
            blkif_response_t rsp;
            xen_rmb();
            if (RING_RESPONSE_PROD_OVERFLOW(&front, prod)) {
                reply("overflow %u", (unsigned int)prod);
            } else if (!RING_HAS_UNCONSUMED_RESPONSES(&front)) {
                reply("none");
            } else {
                RING_COPY_RESPONSE(&front, front.rsp_cons, &rsp);
                front.rsp_cons++;
                reply("rsp %" PRIu64 " %u %d", rsp.id, rsp.operation, rsp.status);
            }
        } else if (!strcmp(cmd, "ffinal")) {
            RING_FINAL_CHECK_FOR_RESPONSES(&front, flag);
            reply("ok %d", flag ? 1 : 0);
        } else if (!strcmp(cmd, "farm")) {
            if (num(&save, &a)) {
                reply("err farm: count");
                continue;
            }
            sring->rsp_event = front.rsp_cons + (RING_IDX)a;
            xen_mb();
            reply("ok");
        } else if (!strcmp(cmd, "ffree")) {
            reply("ok %u", (unsigned int)RING_FREE_REQUESTS(&front));
        } else if (!strcmp(cmd, "bunconsumed")) {
            RING_IDX prod = sring->req_prod;
            xen_rmb();
            if (RING_REQUEST_PROD_OVERFLOW(&back, prod))
                reply("overflow %u", (unsigned int)prod);
            else
                reply("ok %u", (unsigned int)RING_HAS_UNCONSUMED_REQUESTS(&back));
        } else if (!strcmp(cmd, "btake")) {
            cmd_btake();
        } else if (!strcmp(cmd, "bput")) {
            blkif_response_t *rsp;
            if (num(&save, &a) || num(&save, &b) || snum(&save, &st)) {
                reply("err bput: fields");
                continue;
            }
            if (back.req_cons == back.rsp_prod_pvt) {
                reply("err bput: no request to answer");
                continue;
            }
            rsp = RING_GET_RESPONSE(&back, back.rsp_prod_pvt);
            rsp->id = a;
            rsp->operation = (uint8_t)b;
            rsp->status = (int16_t)st;
            back.rsp_prod_pvt++;
            reply("ok");
        } else if (!strcmp(cmd, "bpush")) {
            RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&back, flag);
            reply("ok %d", flag ? 1 : 0);
        } else if (!strcmp(cmd, "bfinal")) {
            RING_FINAL_CHECK_FOR_REQUESTS(&back, flag);
            reply("ok %d", flag ? 1 : 0);
        } else {
            reply("err unknown command %s", cmd);
        }
    }
    return 0;
}
