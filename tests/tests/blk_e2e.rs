//! blkfront and blkback end to end over `xensim`: two domains, the simulated xenstored, real
//! grant tables and event channels, and a disk image file.

#[cfg(test)]
mod tests {
    use xen_blkfront::BioOp;
    use xen_tests::blk::harness::{be_dir, fe_dir, Setup, World};
    use xen_xenbus::XenbusState;

    #[test]
    fn connects_and_round_trips() {
        let mut w = World::new(&Setup::new(1));
        assert!(w.connected(), "{w:?}\n{:#?}", w.log.lines());
        let t = w.io(BioOp::Write, 8, &[(0, 7), (2, 5)]).unwrap();
        w.run_until_idle(1000);
        assert_eq!(w.result(t), Some(Ok(())), "{:#?}", w.log.lines());
        let r = w.io(BioOp::Read, 8, &[(0, 7), (0, 3)]).unwrap();
        w.run_until_idle(1000);
        assert_eq!(w.result(r), Some(Ok(())));
        assert_eq!(w.stats.verified_reads, 1);
        w.check_image();
        assert_eq!(w.node(&format!("{}/state", be_dir())).as_deref(), Some("4"));
        assert_eq!(w.node(&format!("{}/state", fe_dir())).as_deref(), Some("4"));
        let _ = XenbusState::Connected;
    }
}
