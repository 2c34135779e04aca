//! Grant tables: xen-gnttab's [`GrantTable`] over frames of our image (PVH: Xen places each
//! table frame at a guest frame we name with `XENMEM_add_to_physmap(XENMAPSPACE_grant_table)`),
//! checked by granting a page to ourselves and having Xen copy through the grant
//! (`GNTTABOP_copy` with a grant reference as the source).

use alloc::format;
use alloc::string::String;
use xen_gnttab::{copy_grants, CopyPtr, GrantCopy, GrantTable, Revoke, TableFrames};
use xen_kmod::arch::XenPlatform;
use xen_shmem::{Page, SharedMem};

use crate::arch;

/// Frames reserved for the table (512 references each).
const FRAMES: usize = 4;

static TABLE: [Page; FRAMES] = [const { Page::new() }; FRAMES];
static SRC: Page = Page::new();
static DST: Page = Page::new();

/// The table's frames: pages of our image.
#[derive(Debug)]
pub struct ImageFrames;

impl TableFrames<'static> for ImageFrames {
    fn frames(&self) -> SharedMem<'static> {
        SharedMem::from_pages(&TABLE)
    }

    fn gfn(&self, idx: u32) -> Option<u64> {
        let page = TABLE.get(usize::try_from(idx).ok()?)?;
        Some(arch::gpfn_of(core::ptr::from_ref(page).cast()))
    }
}

/// Our grant table.
pub type Gnttab = GrantTable<'static, &'static XenPlatform, ImageFrames>;

/// Sets up the table with one frame.
///
/// # Errors
/// As [`GrantTable::new`], as text.
pub fn setup(hv: &'static XenPlatform) -> Result<Gnttab, String> {
    GrantTable::new(hv, ImageFrames, 1).map_err(|e| format!("grant table set-up: {e}"))
}

fn page(p: &'static Page) -> (u64, SharedMem<'static>) {
    (
        arch::gpfn_of(core::ptr::from_ref(p).cast()),
        SharedMem::from_pages(core::slice::from_ref(p)),
    )
}

/// The scenario: grant a page to `domid` (ourselves), copy through the grant, compare,
/// revoke.
///
/// # Errors
/// What went wrong, as text.
pub fn self_copy(gt: &Gnttab, domid: u16) -> Result<String, String> {
    let (src_gfn, src) = page(&SRC);
    let (dst_gfn, dst) = page(&DST);
    let pattern: alloc::vec::Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect();
    src.copy_from_slice(0, &pattern)
        .map_err(|e| format!("fill: {e:?}"))?;
    let r = gt
        .grant(domid, src_gfn, true)
        .map_err(|e| format!("grant: {e}"))?;
    let gref = r.raw();
    let mut op = [GrantCopy::new(
        CopyPtr::Grant { dom: domid, gref },
        0,
        CopyPtr::Local { gfn: dst_gfn },
        0,
        4096,
    )];
    let copied = copy_grants(gt.hypervisor(), &mut op);
    let mut back = alloc::vec![0u8; 4096];
    dst.copy_to_slice(0, &mut back)
        .map_err(|e| format!("read: {e:?}"))?;
    let revoked = gt.revoke(r);
    copied.map_err(|e| format!("GNTTABOP_copy: {e:?} (status {:?})", op[0].status))?;
    if back != pattern {
        let at = back.iter().zip(&pattern).position(|(a, b)| a != b);
        return Err(format!("copied page differs at byte {at:?}"));
    }
    if revoked != Revoke::Done {
        return Err(format!("revoke after copy: {revoked:?}"));
    }
    Ok(format!(
        "{} frame(s) of {} max; ref {gref} granted to d{domid}, 4096 bytes copied through it by Xen, revoked",
        gt.nr_frames(),
        gt.max_frames()
    ))
}
