/*
 * Layout probe for tests/xen_headers.rs.
 *
 * Compiled against Debian libxen-dev's public headers (xen/io/blkif.h, xen/io/ring.h,
 * xen/grant_table.h), once with -m64 and once with -m32. Prints one "name value" pair per
 * line: sizes, offsets and constants exactly as the C compiler sees them. The Rust test
 * compares every line with what the xenblk crate claims.
 */
/* A current guest interface version (Xen 4.14+ headers); without it the headers hide
 * GNTTABOP_set_version and newer definitions. */
#define __XEN_INTERFACE_VERSION__ 0x00040e00

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* ring.h expects the includer to provide the barriers; they are unused here. */
#define xen_mb() __sync_synchronize()
#define xen_rmb() __asm__ __volatile__("" ::: "memory")
#define xen_wmb() __asm__ __volatile__("" ::: "memory")

#include <xen/xen.h>
#include <xen/grant_table.h>
#include <xen/io/ring.h>
#include <xen/io/blkif.h>

#define SIZE(t) printf("sizeof.%s %lu\n", #t, (unsigned long)sizeof(t))
#define OFF(t, f) printf("offsetof.%s.%s %lu\n", #t, #f, (unsigned long)offsetof(t, f))
#define FSIZE(t, f) printf("fieldsize.%s.%s %lu\n", #t, #f, (unsigned long)sizeof(((t *)0)->f))
#define CONST(c) printf("const.%s %lld\n", #c, (long long)(c))

int main(void)
{
    printf("abi %s\n", sizeof(void *) == 8 ? "x86_64" : "x86_32");

    SIZE(struct blkif_request_segment);
    OFF(struct blkif_request_segment, gref);
    OFF(struct blkif_request_segment, first_sect);
    OFF(struct blkif_request_segment, last_sect);

    SIZE(struct blkif_request);
    OFF(struct blkif_request, operation);
    OFF(struct blkif_request, nr_segments);
    OFF(struct blkif_request, handle);
    OFF(struct blkif_request, id);
    OFF(struct blkif_request, sector_number);
    OFF(struct blkif_request, seg[0]);
    OFF(struct blkif_request, seg[1]);
    FSIZE(struct blkif_request, seg);

    SIZE(struct blkif_request_discard);
    OFF(struct blkif_request_discard, operation);
    OFF(struct blkif_request_discard, flag);
    OFF(struct blkif_request_discard, handle);
    OFF(struct blkif_request_discard, id);
    OFF(struct blkif_request_discard, sector_number);
    OFF(struct blkif_request_discard, nr_sectors);

    SIZE(struct blkif_request_indirect);
    OFF(struct blkif_request_indirect, operation);
    OFF(struct blkif_request_indirect, indirect_op);
    OFF(struct blkif_request_indirect, nr_segments);
    OFF(struct blkif_request_indirect, id);
    OFF(struct blkif_request_indirect, sector_number);
    OFF(struct blkif_request_indirect, handle);
    OFF(struct blkif_request_indirect, indirect_grefs);
    FSIZE(struct blkif_request_indirect, indirect_grefs);

    SIZE(struct blkif_response);
    OFF(struct blkif_response, id);
    OFF(struct blkif_response, operation);
    OFF(struct blkif_response, status);

    SIZE(union blkif_sring_entry);
    OFF(struct blkif_sring, req_prod);
    OFF(struct blkif_sring, req_event);
    OFF(struct blkif_sring, rsp_prod);
    OFF(struct blkif_sring, rsp_event);
    OFF(struct blkif_sring, ring[0]);
    OFF(struct blkif_sring, ring[1]);
    FSIZE(struct blkif_sring, req_prod);
    {
        /* __RING_SIZE only looks at the type of its first argument. */
        struct blkif_sring *s = NULL;
        unsigned int pages;
        for (pages = 1; pages <= 16; pages *= 2)
            printf("ring_size.%u %u\n", pages, (unsigned int)__RING_SIZE(s, pages * 4096));
        (void)s;
    }

    SIZE(grant_entry_v1_t);
    OFF(grant_entry_v1_t, flags);
    OFF(grant_entry_v1_t, domid);
    OFF(grant_entry_v1_t, frame);

    SIZE(struct gnttab_map_grant_ref);
    OFF(struct gnttab_map_grant_ref, host_addr);
    OFF(struct gnttab_map_grant_ref, flags);
    OFF(struct gnttab_map_grant_ref, ref);
    OFF(struct gnttab_map_grant_ref, dom);
    OFF(struct gnttab_map_grant_ref, status);
    OFF(struct gnttab_map_grant_ref, handle);
    OFF(struct gnttab_map_grant_ref, dev_bus_addr);

    SIZE(struct gnttab_unmap_grant_ref);
    OFF(struct gnttab_unmap_grant_ref, host_addr);
    OFF(struct gnttab_unmap_grant_ref, dev_bus_addr);
    OFF(struct gnttab_unmap_grant_ref, handle);
    OFF(struct gnttab_unmap_grant_ref, status);

    SIZE(xen_pfn_t);
    SIZE(struct gnttab_copy);
    OFF(struct gnttab_copy, source.u.ref);
    OFF(struct gnttab_copy, source.u.gmfn);
    OFF(struct gnttab_copy, source.domid);
    OFF(struct gnttab_copy, source.offset);
    OFF(struct gnttab_copy, dest.u.ref);
    OFF(struct gnttab_copy, dest.domid);
    OFF(struct gnttab_copy, dest.offset);
    OFF(struct gnttab_copy, len);
    OFF(struct gnttab_copy, flags);
    OFF(struct gnttab_copy, status);

    CONST(BLKIF_OP_READ);
    CONST(BLKIF_OP_WRITE);
    CONST(BLKIF_OP_WRITE_BARRIER);
    CONST(BLKIF_OP_FLUSH_DISKCACHE);
    CONST(BLKIF_OP_RESERVED_1);
    CONST(BLKIF_OP_DISCARD);
    CONST(BLKIF_OP_INDIRECT);
    CONST(BLKIF_RSP_OKAY);
    CONST(BLKIF_RSP_ERROR);
    CONST(BLKIF_RSP_EOPNOTSUPP);
    CONST(BLKIF_MAX_SEGMENTS_PER_REQUEST);
    CONST(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);
    CONST(BLKIF_DISCARD_SECURE);
    CONST(VDISK_CDROM);
    CONST(VDISK_REMOVABLE);
    CONST(VDISK_READONLY);

    CONST(GNTTAB_NR_RESERVED_ENTRIES);
    CONST(GTF_invalid);
    CONST(GTF_permit_access);
    CONST(GTF_accept_transfer);
    CONST(GTF_transitive);
    CONST(GTF_type_mask);
    CONST(GTF_readonly);
    CONST(GTF_reading);
    CONST(GTF_writing);
    CONST(GTF_PWT);
    CONST(GTF_PCD);
    CONST(GTF_PAT);
    CONST(GTF_sub_page);
    CONST(GNTMAP_device_map);
    CONST(GNTMAP_host_map);
    CONST(GNTMAP_readonly);
    CONST(GNTMAP_application_map);
    CONST(GNTMAP_contains_pte);
    CONST(GNTCOPY_source_gref);
    CONST(GNTCOPY_dest_gref);
    CONST(GNTTABOP_map_grant_ref);
    CONST(GNTTABOP_unmap_grant_ref);
    CONST(GNTTABOP_setup_table);
    CONST(GNTTABOP_copy);
    CONST(GNTTABOP_query_size);
    CONST(GNTTABOP_set_version);
    CONST(GNTST_okay);
    CONST(GNTST_general_error);
    CONST(GNTST_bad_domain);
    CONST(GNTST_bad_gntref);
    CONST(GNTST_bad_handle);
    CONST(GNTST_bad_virt_addr);
    CONST(GNTST_bad_dev_addr);
    CONST(GNTST_no_device_space);
    CONST(GNTST_permission_denied);
    CONST(GNTST_bad_page);
    CONST(GNTST_bad_copy_arg);
    CONST(GNTST_address_too_big);
    CONST(GNTST_eagain);
    CONST(GNTST_no_space);
    printf("end\n");
    return 0;
}
