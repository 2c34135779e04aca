//! xenbus `Driver` adapters for the block cores: the bus owns a boxed driver, the test keeps
//! the core behind the same `Rc<RefCell<..>>` to drive its data path.

use std::cell::RefCell;
use std::rc::Rc;

use xen_blkback::{Backend, BackendEnv, BlockStore};
use xen_blkfront::{Frontend, FrontendEnv};
use xen_xenbus::bus::XenStore;
use xen_xenbus::{Device, Driver, Error as XsErr, XenbusState};

/// The backend as a xenbus driver; the store is handed to the first probe.
pub struct BackDriver<E: BackendEnv<'static> + 'static, B: BlockStore<'static> + 'static> {
    /// The core.
    pub be: Rc<RefCell<Backend<'static, E, B>>>,
    /// The store the next probe opens.
    pub store: Rc<RefCell<Option<B>>>,
}

impl<E: BackendEnv<'static> + 'static, B: BlockStore<'static> + 'static> std::fmt::Debug
    for BackDriver<E, B>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackDriver")
    }
}

impl<S, E, B> Driver<S> for BackDriver<E, B>
where
    S: XenStore + ?Sized,
    E: BackendEnv<'static> + 'static,
    B: BlockStore<'static> + 'static,
{
    fn devtype(&self) -> &str {
        "vbd"
    }

    fn probe(&mut self, xs: &mut S, dev: &mut Device) -> Result<(), XsErr> {
        let store = self.store.borrow_mut().take();
        self.be
            .borrow_mut()
            .probe(xs, dev, |_cfg| store.ok_or(XsErr::BadValue))
    }

    fn otherend_changed(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
        state: XenbusState,
    ) -> Result<(), XsErr> {
        self.be.borrow_mut().otherend_changed(xs, dev, state)
    }

    fn remove(&mut self, xs: &mut S, dev: &mut Device) {
        self.be.borrow_mut().remove(xs, dev);
    }
}

/// The frontend as a xenbus driver.
pub struct FrontDriver<E: FrontendEnv<'static> + 'static> {
    /// The core.
    pub fe: Rc<RefCell<Frontend<'static, E>>>,
}

impl<E: FrontendEnv<'static> + 'static> std::fmt::Debug for FrontDriver<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrontDriver")
    }
}

impl<S, E> Driver<S> for FrontDriver<E>
where
    S: XenStore + ?Sized,
    E: FrontendEnv<'static> + 'static,
{
    fn devtype(&self) -> &str {
        "vbd"
    }

    fn probe(&mut self, xs: &mut S, dev: &mut Device) -> Result<(), XsErr> {
        self.fe.borrow_mut().probe(xs, dev)
    }

    fn otherend_changed(
        &mut self,
        xs: &mut S,
        dev: &mut Device,
        state: XenbusState,
    ) -> Result<(), XsErr> {
        self.fe.borrow_mut().otherend_changed(xs, dev, state)
    }

    fn remove(&mut self, xs: &mut S, dev: &mut Device) {
        self.fe.borrow_mut().remove(xs, dev);
    }
}
