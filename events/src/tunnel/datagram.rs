//! UDP forwards over QUIC datagrams: each datagram is the flow id (4 bytes, big endian) followed
//! by one UDP payload. The CLI, the relays and the device all read and write this one format.

use bytes::{BufMut, Bytes, BytesMut};

/// The length of the flow id in front of every datagram.
pub const FLOW_ID_LEN: usize = 4;

/// A datagram carrying `payload` for `flow`.
pub fn flow_datagram(flow: u32, payload: &[u8]) -> Bytes {
    let mut d = BytesMut::with_capacity(FLOW_ID_LEN + payload.len());
    d.put_u32(flow);
    d.put_slice(payload);
    d.freeze()
}

/// The flow a datagram belongs to; `None` when it is too short to carry a flow id.
pub fn datagram_flow(datagram: &[u8]) -> Option<u32> {
    let id: [u8; FLOW_ID_LEN] = datagram.get(..FLOW_ID_LEN)?.try_into().ok()?;
    Some(u32::from_be_bytes(id))
}

/// The flow and the payload of a datagram (the payload shares the datagram's memory).
pub fn split_flow_datagram(datagram: &Bytes) -> Option<(u32, Bytes)> {
    let flow = datagram_flow(datagram)?;
    Some((flow, datagram.slice(FLOW_ID_LEN..)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_datagram_shorter_than_a_flow_id_has_no_flow() {
        assert_eq!(datagram_flow(&[0, 0, 1]), None);
        assert_eq!(split_flow_datagram(&Bytes::new()), None);
        assert_eq!(
            split_flow_datagram(&Bytes::from_static(&[0, 0, 0, 7])),
            Some((7, Bytes::new()))
        );
    }

    proptest! {
        /// Fuzz target for the flow-datagram decoder: arbitrary bytes never panic it, and what
        /// splits is rebuilt to the same bytes.
        #[test]
        fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let d = Bytes::from(bytes);
            if let Some((flow, payload)) = split_flow_datagram(&d) {
                prop_assert_eq!(flow_datagram(flow, &payload), d);
            }
        }
    }
}
