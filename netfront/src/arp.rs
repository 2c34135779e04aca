//! Gratuitous ARP after (re)connecting.
//!
//! After a migration or a backend reconnect the switch or bridge behind the new backend does
//! not know where our MAC lives; FreeBSD's C netfront sends a fake ARP (`netfront_send_fake_arp`)
//! for each IPv4 address. [`gratuitous`] builds that frame: an ARP request for our own address,
//! broadcast, sender and target protocol address both ours (RFC 5227 "ARP announcement").

/// Length of the frame.
pub const LEN: usize = 42;

/// A gratuitous ARP announcement for `ip` from `mac`.
#[must_use]
pub fn gratuitous(mac: [u8; 6], ip: [u8; 4]) -> [u8; LEN] {
    let mut f = [0u8; LEN];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip);
    // Target hardware address zero.
    f[38..42].copy_from_slice(&ip);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_layout() {
        let f = gratuitous([0, 0x16, 0x3e, 1, 2, 3], [10, 0, 0, 7]);
        assert_eq!(&f[12..14], &[8, 6]);
        assert_eq!(&f[28..32], &f[38..42]);
        assert_eq!(&f[6..12], &f[22..28]);
    }
}
