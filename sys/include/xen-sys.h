/*
 * The set of Xen public headers that xen-sys generates bindings for.
 *
 * Compiled twice by build.rs (clang targets x86_64 and i686), and again by
 * the layout tests with gcc -m64 / -m32.  The include path puts
 * sys/include first, so <xen/hvm/start_info.h> resolves to our own header
 * (absent from Debian's libxen-dev); everything else comes from the
 * directory named by XEN_INCLUDE_DIR.
 */
#include <stdint.h> /* the Xen headers expect their includer to provide it */
#include <xen/xen.h>
#include <xen/errno.h>
#include <xen/features.h>
#include <xen/hvm/params.h>
#include <xen/hvm/hvm_op.h>
#include <xen/hvm/start_info.h>
#include <xen/memory.h>
#include <xen/event_channel.h>
#include <xen/grant_table.h>
#include <xen/sched.h>
#include <xen/vcpu.h>
#include <xen/version.h>
#include <xen/io/xs_wire.h>
#include <xen/io/ring.h>
#include <xen/io/blkif.h>
#include <xen/io/netif.h>
#include <xen/io/console.h>
#include <xen/io/xenbus.h>
#include <xen/io/protocols.h>
