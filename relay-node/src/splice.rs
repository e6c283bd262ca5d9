//! Stream splicing: moving an operation stream's bytes between two QUIC streams (client and
//! device, or a relay-to-relay link and the device), both ways, until both directions end.

/// Most chunks (received frames) taken from a stream at once.
const SPLICE_CHUNKS: usize = 64;

/// The size up to which a splice gathers received data before writing it on.
const SPLICE_COALESCE: usize = 64 * 1024;

/// Moves one direction of a stream until it ends, then finishes the other side; returns the
/// bytes moved.
///
/// Received chunks are taken many at a time (`read_chunks`: few wake-ups) and what has arrived
/// is copied into one buffer of up to [`SPLICE_COALESCE`] before it is written. Writing the
/// received chunks as they are (one per packet, about 1.2 KB) costs more than the copy: quinn
/// finds the bytes for each packet it sends by walking the chunks written to the stream and
/// not yet acknowledged, so with thousands of small chunks in flight that walk took 9% of the
/// relay's CPU in an 8-stream forward; with 64 KiB chunks, under 2%.
pub(crate) async fn copy_then_finish(
    mut from: quinn::RecvStream,
    mut to: quinn::SendStream,
) -> u64 {
    use futures_util::FutureExt;
    let mut moved = 0u64;
    let mut chunks: Vec<bytes::Bytes> = vec![bytes::Bytes::new(); SPLICE_CHUNKS];
    let mut buffer = bytes::BytesMut::new();
    let append = |buffer: &mut bytes::BytesMut, chunks: &[bytes::Bytes]| {
        for chunk in chunks {
            buffer.extend_from_slice(chunk);
        }
    };
    let mut ended = false;
    while !ended {
        buffer.reserve(SPLICE_COALESCE);
        match from.read_chunks(&mut chunks).await {
            Ok(Some(n)) => append(&mut buffer, &chunks[..n]),
            Ok(None) | Err(_) => break,
        }
        // Take what has already arrived, without waiting for more: nothing is held back.
        while buffer.len() < SPLICE_COALESCE {
            match from.read_chunks(&mut chunks).now_or_never() {
                Some(Ok(Some(n))) => append(&mut buffer, &chunks[..n]),
                Some(Ok(None) | Err(_)) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        moved += buffer.len() as u64;
        if to.write_chunk(buffer.split().freeze()).await.is_err() {
            // The far side stopped reading: stop this side too.
            let _ = from.stop(quinn::VarInt::from_u32(0));
            return moved;
        }
    }
    let _ = to.finish();
    moved
}

/// Splices a session's control stream. The client sends nothing on it after the session open,
/// so when the relay ends the session itself (`ended` holds a code and a reason), the device's
/// side gets a `Refused` frame with them before it is finished: the device records why the
/// session ended. Otherwise the device's side is finished when the client's side ends.
pub(crate) async fn splice_control(
    mut crecv: quinn::RecvStream,
    mut dsend: quinn::SendStream,
    drecv: quinn::RecvStream,
    csend: quinn::SendStream,
    mut ended: tokio::sync::watch::Receiver<Option<(String, String)>>,
) {
    let down = tokio::spawn(copy_then_finish(drecv, csend));
    let mut chunks: Vec<bytes::Bytes> = vec![bytes::Bytes::new(); SPLICE_CHUNKS];
    loop {
        tokio::select! {
            biased;
            _ = ended.changed() => break,
            read = crecv.read_chunks(&mut chunks) => match read {
                Ok(Some(n)) => {
                    for chunk in &chunks[..n] {
                        if dsend.write_chunk(chunk.clone()).await.is_err() {
                            down.abort();
                            return;
                        }
                    }
                }
                Ok(None) | Err(_) => break,
            },
        }
    }
    let why = ended.borrow().clone();
    if let Some((code, reason)) = why {
        let _ = m87_transport::frames::write_refusal(&mut dsend, &code, &reason).await;
    }
    let _ = dsend.finish();
    let _ = down.await;
}

/// Copies both ways until both directions end.
pub(crate) async fn splice(
    crecv: quinn::RecvStream,
    dsend: quinn::SendStream,
    drecv: quinn::RecvStream,
    csend: quinn::SendStream,
) {
    let up = copy_then_finish(crecv, dsend);
    let down = copy_then_finish(drecv, csend);
    tokio::join!(up, down);
}
