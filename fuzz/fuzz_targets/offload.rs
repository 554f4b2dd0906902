//! What a TAP with offloads hands us (virtio-net header + frame, from the
//! kernel) and what comes out of a tunnel into the coalescer (anything).
#![no_main]
use hinan_dataplane::offload::{
    segment, Coalescer, VirtioNetHdr, VirtioNetHdrRepr, MAX_IP_PACKET, VIRTIO_NET_HDR_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(hdr) = VirtioNetHdr::new_checked(data) else {
        return;
    };
    let repr = VirtioNetHdrRepr::parse(&hdr).expect("a checked header parses");
    assert_eq!(repr.to_bytes()[..], data[..VIRTIO_NET_HDR_LEN]);

    let mut frame = data[VIRTIO_NET_HDR_LEN..].to_vec();
    let mut scratch = vec![0u8; MAX_IP_PACKET + 64];
    let mut coalescer = Coalescer::new(2);
    let mut merged = Vec::new();
    // Whatever segment hands out goes into the coalescer, as in the VPN.
    let result = segment(&repr, &mut frame, &mut scratch, |seg| {
        assert!(seg.len() <= data.len().max(MAX_IP_PACKET + 64));
        coalescer.push(seg, |out| merged.push(out.to_vec()));
    });
    // The raw frame too: a tunnel peer may send anything.
    coalescer.push(&data[VIRTIO_NET_HDR_LEN..], |out| merged.push(out.to_vec()));
    coalescer.flush(|out| merged.push(out.to_vec()));
    if result.is_ok() {
        // What the coalescer writes, the kernel (and our segment) must accept.
        for out in merged {
            let repr = VirtioNetHdrRepr::parse(&VirtioNetHdr::new_checked(&out[..]).unwrap())
                .unwrap();
            let mut frame = out[VIRTIO_NET_HDR_LEN..].to_vec();
            segment(&repr, &mut frame, &mut scratch, |_| ())
                .expect("a coalesced frame splits again");
        }
    }
});
