/*
 * PVH start-of-day information, x86 (HVM/PVH guests).
 *
 * Written for the xen-sys crate from the documented PVH boot ABI (Xen's
 * docs/misc/pvh.pandoc and the public interface it describes), because the
 * Debian libxen-dev package does not ship this header.  Names and layout
 * follow Xen's public interface so that code written against Xen's own
 * header keeps working.
 *
 * A PVH guest is entered in 32-bit protected mode with paging disabled and
 * %ebx holding the physical address of a struct hvm_start_info.  Every
 * address below is a guest-physical address; 0 means "not provided"
 * (nothing is ever placed at physical address 0).  All fields are
 * little-endian.  The layout is defined by byte offsets, which is why it is
 * identical for 32-bit and 64-bit guests; only the C alignment of the
 * structures differs (4 on i386, 8 on x86_64), never an offset or a size.
 *
 * SPDX-License-Identifier: BSD-2-Clause
 */

#ifndef XEN_SYS_PUBLIC_ARCH_X86_HVM_START_INFO_H
#define XEN_SYS_PUBLIC_ARCH_X86_HVM_START_INFO_H

#include <stdint.h>

/* Value of hvm_start_info.magic: the bytes "xEn3", with bit 7 of 'E' set. */
#define XEN_HVM_START_MAGIC_VALUE 0x336ec578

/*
 * Layout, by byte offset:
 *   0  magic            XEN_HVM_START_MAGIC_VALUE
 *   4  version          0 or 1; later versions only append fields
 *   8  flags            SIF_* flags (see xen.h)
 *  12  nr_modules       entries in the module list
 *  16  modlist_paddr    array of struct hvm_modlist_entry
 *  24  cmdline_paddr    NUL-terminated ASCII kernel command line
 *  32  rsdp_paddr       ACPI RSDP
 * -- present only when version >= 1 --
 *  40  memmap_paddr     array of struct hvm_memmap_table_entry
 *  48  memmap_entries   entries in that array
 *  52  reserved         must be zero
 *  56  (end)
 */
struct hvm_start_info {
    uint32_t magic;
    uint32_t version;
    uint32_t flags;
    uint32_t nr_modules;
    uint64_t modlist_paddr;
    uint64_t cmdline_paddr;
    uint64_t rsdp_paddr;
    uint64_t memmap_paddr;      /* version >= 1 */
    uint32_t memmap_entries;    /* version >= 1 */
    uint32_t reserved;          /* version >= 1 */
};

/* One boot module (e.g. an initrd), 32 bytes. */
struct hvm_modlist_entry {
    uint64_t paddr;             /* start of the module image */
    uint64_t size;              /* its length in bytes */
    uint64_t cmdline_paddr;     /* NUL-terminated module command line, or 0 */
    uint64_t reserved;
};

/* One physical memory map range, 24 bytes (E820-like). */
struct hvm_memmap_table_entry {
    uint64_t addr;              /* first byte of the range */
    uint64_t size;              /* length in bytes */
    uint32_t type;              /* XEN_HVM_MEMMAP_TYPE_* */
    uint32_t reserved;          /* must be zero */
};

/* Values of hvm_memmap_table_entry.type (they match the E820 types). */
#define XEN_HVM_MEMMAP_TYPE_RAM       1
#define XEN_HVM_MEMMAP_TYPE_RESERVED  2
#define XEN_HVM_MEMMAP_TYPE_ACPI      3
#define XEN_HVM_MEMMAP_TYPE_NVS       4
#define XEN_HVM_MEMMAP_TYPE_UNUSABLE  5
#define XEN_HVM_MEMMAP_TYPE_DISABLED  6
#define XEN_HVM_MEMMAP_TYPE_PMEM      7

#endif /* XEN_SYS_PUBLIC_ARCH_X86_HVM_START_INFO_H */
