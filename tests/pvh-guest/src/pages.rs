//! Pages the drivers share with backends: a static pool in the image (identity mapped / unpaged,
//! so a page's address is its guest frame), handed out in contiguous runs.

use alloc::vec::Vec;
use core::cell::RefCell;

use xen_blkfront::PageRun;
use xen_shmem::{Page, SharedMem};

use crate::arch;

/// Pages the frontend may use (rings, indirect pages, persistent and bounce pages, buffers).
const POOL_PAGES: usize = 2048;
static POOL: [Page; POOL_PAGES] = [const { Page::new() }; POOL_PAGES];

/// First-fit allocator of contiguous runs of the static pool.
#[derive(Debug)]
pub struct PagePool {
    used: RefCell<Vec<bool>>,
}

impl PagePool {
    /// An empty pool (every page free).
    pub fn new() -> PagePool {
        PagePool {
            used: RefCell::new(alloc::vec![false; POOL_PAGES]),
        }
    }

    /// `count` contiguous zeroed pages.
    pub fn alloc(&self, count: u32) -> Option<PageRun<'static>> {
        let n = usize::try_from(count).ok().filter(|&n| n > 0)?;
        let mut used = self.used.borrow_mut();
        let mut start = 0;
        while start + n <= POOL_PAGES {
            match used[start..start + n].iter().position(|&u| u) {
                Some(busy) => start += busy + 1,
                None => {
                    used[start..start + n].fill(true);
                    let pages = &POOL[start..start + n];
                    let mem = SharedMem::from_pages(pages);
                    // Zeroed, as the trait promises (the page may have been used before).
                    let zero = [0u8; 4096];
                    for i in 0..n {
                        let _ = mem.copy_from_slice(i * 4096, &zero);
                    }
                    return Some(PageRun {
                        gfn: arch::gpfn_of(core::ptr::from_ref(&pages[0]).cast()),
                        count,
                        mem,
                    });
                }
            }
        }
        None
    }

    /// The one-page run at `gfn`, if it is a pool page.
    pub fn run_of(&self, gfn: u64) -> Option<PageRun<'static>> {
        let base = arch::gpfn_of(core::ptr::from_ref(&POOL[0]).cast());
        let i = usize::try_from(gfn.checked_sub(base)?).ok()?;
        let page = POOL.get(i)?;
        Some(PageRun {
            gfn,
            count: 1,
            mem: SharedMem::from_pages(core::slice::from_ref(page)),
        })
    }

    /// Gives a run back.
    pub fn free(&self, run: &PageRun<'static>) {
        let base = arch::gpfn_of(core::ptr::from_ref(&POOL[0]).cast());
        let Some(first) = run
            .gfn
            .checked_sub(base)
            .and_then(|f| usize::try_from(f).ok())
        else {
            return;
        };
        let n = usize::try_from(run.count).unwrap_or(0);
        let mut used = self.used.borrow_mut();
        if let Some(slots) = used.get_mut(first..first + n) {
            slots.fill(false);
        }
    }
}
