//! The ways to a device and back: a session's [`Route`] to the device's tunnel (here, or over a
//! relay-to-relay link), the [`FlowOwner`] that receives a UDP flow's datagrams from the
//! device, and the link datagram format (`[len: u8][device id][flow id: u32][payload]`).

use bytes::{BufMut, Bytes, BytesMut};
use m87_events::DeviceId;
use m87_events::tunnel::Control;
use m87_events::tunnel::datagram::datagram_flow;

/// Where a session's streams go: the device's tunnel here, or a link to the relay holding it.
#[derive(Clone)]
pub(crate) enum Route {
    /// The tunnel is on this relay.
    Local(quinn::Connection),
    /// The tunnel is on the relay at the other end of `link`.
    Remote {
        /// The link.
        link: quinn::Connection,
        /// The device.
        device: DeviceId,
        /// The relay holding the tunnel.
        relay_id: String,
    },
}

impl Route {
    /// Opens a stream towards the device and writes `first` (the client's first frame, raw).
    pub(crate) async fn open(
        &self,
        first: &[u8],
    ) -> Option<(quinn::SendStream, quinn::RecvStream)> {
        match self {
            Route::Local(conn) => {
                let (mut send, recv) = conn.open_bi().await.ok()?;
                send.write_all(first).await.ok()?;
                Some((send, recv))
            }
            Route::Remote { link, device, .. } => {
                let (mut send, recv) = link.open_bi().await.ok()?;
                m87_transport::frames::write_control(
                    &mut send,
                    &Control::RelayRoute {
                        device_id: device.clone(),
                    },
                )
                .await
                .ok()?;
                send.write_all(first).await.ok()?;
                Some((send, recv))
            }
        }
    }

    /// Sends a client datagram (flow id first) towards the device.
    pub(crate) fn send_datagram(&self, datagram: Bytes) {
        match self {
            Route::Local(conn) => {
                let _ = conn.send_datagram(datagram);
            }
            Route::Remote { link, device, .. } => {
                if let Some(d) = link_datagram(device, &datagram) {
                    let _ = link.send_datagram(d);
                }
            }
        }
    }

    /// Resolves when the way to the device is gone.
    pub(crate) async fn closed(&self) {
        match self {
            Route::Local(conn) => {
                conn.closed().await;
            }
            Route::Remote { link, .. } => {
                link.closed().await;
            }
        }
    }

    /// Which relay holds the tunnel (None: this one).
    pub(crate) fn remote_relay(&self) -> Option<&str> {
        match self {
            Route::Local(_) => None,
            Route::Remote { relay_id, .. } => Some(relay_id),
        }
    }
}

/// A datagram for a link: the device id in front of the flow datagram.
pub(crate) fn link_datagram(device: &DeviceId, datagram: &[u8]) -> Option<Bytes> {
    let id = device.as_str().as_bytes();
    let len = u8::try_from(id.len()).ok()?;
    let mut out = BytesMut::with_capacity(1 + id.len() + datagram.len());
    out.put_u8(len);
    out.put_slice(id);
    out.put_slice(datagram);
    Some(out.freeze())
}

/// Splits a link datagram into the device and the flow datagram.
pub(crate) fn split_link_datagram(d: &Bytes) -> Option<(DeviceId, Bytes)> {
    let len = usize::from(*d.first()?);
    let id = std::str::from_utf8(d.get(1..1 + len)?).ok()?;
    let device: DeviceId = id.parse().ok()?;
    let rest = d.slice(1 + len..);
    datagram_flow(&rest).is_some().then_some((device, rest))
}

/// Who receives a device's datagrams of one UDP flow: the client's connection, or the link to
/// the relay the client is on.
#[derive(Clone)]
pub(crate) struct FlowOwner {
    conn: quinn::Connection,
    link: bool,
}

impl FlowOwner {
    pub(crate) fn client(conn: quinn::Connection) -> Self {
        Self { conn, link: false }
    }

    pub(crate) fn link(conn: quinn::Connection) -> Self {
        Self { conn, link: true }
    }

    /// Whether this is the client connection `conn` (not a link).
    pub(crate) fn is_client(&self, conn: &quinn::Connection) -> bool {
        !self.link && self.conn.stable_id() == conn.stable_id()
    }

    /// Sends a device datagram (flow id first) on.
    pub(crate) fn send(&self, device: &DeviceId, datagram: bytes::Bytes) {
        if self.link {
            if let Some(d) = link_datagram(device, &datagram) {
                let _ = self.conn.send_datagram(d);
            }
        } else {
            let _ = self.conn.send_datagram(datagram);
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn link_datagrams_carry_the_device_and_the_flow_datagram() {
        let device: DeviceId = "0123abcd-robot".parse().expect("valid id");
        let inner = Bytes::from_static(&[0, 0, 0, 7, b'h', b'i']);
        let d = link_datagram(&device, &inner).expect("fits");
        let (back, rest) = split_link_datagram(&d).expect("splits");
        assert_eq!(back, device);
        assert_eq!(rest, inner);
        assert!(split_link_datagram(&Bytes::from_static(&[200, 1, 2])).is_none());
        assert!(split_link_datagram(&Bytes::new()).is_none());
    }

    proptest::proptest! {
        /// Fuzz target for the link datagram decoder: arbitrary bytes from a peer never panic it,
        /// and whatever splits is rebuilt to the same bytes.
        #[test]
        fn arbitrary_link_datagrams_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96)) {
            let d = Bytes::from(bytes);
            if let Some((device, rest)) = split_link_datagram(&d) {
                proptest::prop_assert!(rest.len() >= 4);
                proptest::prop_assert_eq!(link_datagram(&device, &rest), Some(d));
            }
        }
    }
}
