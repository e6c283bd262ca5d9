//! The delta algorithm, rsync style, pure (no async, no network).
//!
//! The side that has an old copy (the *basis*) cuts it into blocks and sends a [`Signature`]:
//! per block a weak [`Rolling`] checksum and a SHA-256. The side with the new contents slides a
//! block-sized window over them byte by byte, updating the weak checksum in O(1); when it
//! matches a block's and the SHA-256 agrees, it emits [`Op::Copy`] for that block and jumps a
//! whole block, else the byte becomes part of an [`Op::Literal`]. Blocks that moved (bytes
//! inserted or removed before them) are still found. [`apply`] rebuilds the new contents from
//! the basis and the ops.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom, Write};

use m87_events::tunnel::files::{BlockSignature, MAX_CHUNK, SignatureHeader};
use sha2::{Digest, Sha256};

/// Files larger than this are sent as deltas when the destination has a copy.
pub const DELTA_THRESHOLD: u64 = 1 << 20;
/// Block size of small and medium files.
pub const DEFAULT_BLOCK_SIZE: u32 = 64 * 1024;
/// Largest block size chosen for very large files.
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;
/// Block sizes accepted from a peer.
pub const MAX_PEER_BLOCK_SIZE: u32 = 16 << 20;
/// Most blocks accepted in a signature from a peer.
pub const MAX_PEER_BLOCKS: u64 = 1 << 22;
/// Above this many blocks, the block size doubles (up to [`MAX_BLOCK_SIZE`]).
const TARGET_BLOCKS: u64 = 16 * 1024;
/// Added to each byte in the weak checksum (as rsync does), so runs of zeros still count.
const CHAR_OFFSET: u32 = 31;

/// The block size for a basis of `len` bytes: 64 KiB, doubled for very large files to keep
/// the signature small.
pub fn block_size_for(len: u64) -> u32 {
    let mut bs = DEFAULT_BLOCK_SIZE;
    while len.div_ceil(u64::from(bs)) > TARGET_BLOCKS && bs < MAX_BLOCK_SIZE {
        bs *= 2;
    }
    bs
}

/// The weak rolling checksum: `a` = sum of bytes, `b` = sum of `a` prefixes, each mod 2^16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rolling {
    a: u32,
    b: u32,
    len: u32,
}

impl Rolling {
    /// The checksum of a window.
    pub fn new(window: &[u8]) -> Self {
        let len = window.len() as u32;
        let (mut a, mut b) = (0u32, 0u32);
        for (i, &x) in window.iter().enumerate() {
            let x = u32::from(x) + CHAR_OFFSET;
            a = a.wrapping_add(x);
            b = b.wrapping_add((len - i as u32).wrapping_mul(x));
        }
        Self { a, b, len }
    }

    /// Slides the window one byte: `out` leaves at the front, `inp` enters at the back.
    pub fn roll(&mut self, out: u8, inp: u8) {
        let out = u32::from(out) + CHAR_OFFSET;
        let inp = u32::from(inp) + CHAR_OFFSET;
        self.a = self.a.wrapping_sub(out).wrapping_add(inp);
        self.b = self
            .b
            .wrapping_sub(self.len.wrapping_mul(out))
            .wrapping_add(self.a);
    }

    /// The 32-bit checksum.
    pub fn digest(&self) -> u32 {
        (self.a & 0xffff) | (self.b << 16)
    }
}

/// The weak checksum of a block.
pub fn weak_checksum(block: &[u8]) -> u32 {
    Rolling::new(block).digest()
}

/// SHA-256 of a block (or of anything).
pub fn strong_checksum(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// One block of a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSig {
    /// Weak rolling checksum.
    pub weak: u32,
    /// SHA-256.
    pub strong: [u8; 32],
}

/// The signature of a basis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Bytes per block; the last block may be shorter.
    pub block_size: u32,
    /// The basis's length.
    pub len: u64,
    /// One per block.
    pub blocks: Vec<BlockSig>,
}

impl Signature {
    /// Reads a basis and computes its signature and its whole SHA-256.
    pub fn compute(mut basis: impl Read, block_size: u32) -> io::Result<(Self, [u8; 32])> {
        let bs = block_size.max(1) as usize;
        let mut whole = Sha256::new();
        let mut blocks = Vec::new();
        let mut len = 0u64;
        let mut buf = vec![0u8; bs];
        loop {
            let n = read_full(&mut basis, &mut buf)?;
            if n == 0 {
                break;
            }
            let block = &buf[..n];
            whole.update(block);
            blocks.push(BlockSig {
                weak: weak_checksum(block),
                strong: strong_checksum(block),
            });
            len += n as u64;
            if n < bs {
                break;
            }
        }
        let sig = Signature {
            block_size: bs as u32,
            len,
            blocks,
        };
        Ok((sig, whole.finalize().into()))
    }

    /// The length of block `index`.
    pub fn block_len(&self, index: u64) -> u64 {
        let bs = u64::from(self.block_size);
        self.len.saturating_sub(index * bs).min(bs)
    }

    /// The wire form: a header and the blocks.
    pub fn to_wire(&self) -> (SignatureHeader, Vec<BlockSignature>) {
        let header = SignatureHeader {
            block_size: self.block_size,
            len: self.len,
        };
        let blocks = self
            .blocks
            .iter()
            .map(|b| BlockSignature {
                weak: b.weak,
                strong: hex::encode(b.strong),
            })
            .collect();
        (header, blocks)
    }

    /// Builds a signature received from a peer, checking it.
    pub fn from_wire(header: SignatureHeader, blocks: &[BlockSignature]) -> Result<Self, String> {
        check_header(&header)?;
        if blocks.len() as u64 != header.blocks() {
            return Err(format!(
                "signature has {} blocks, expected {}",
                blocks.len(),
                header.blocks()
            ));
        }
        let blocks = blocks
            .iter()
            .map(|b| {
                let mut strong = [0u8; 32];
                hex::decode_to_slice(&b.strong, &mut strong)
                    .map_err(|_| "invalid block digest".to_owned())?;
                Ok(BlockSig {
                    weak: b.weak,
                    strong,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Signature {
            block_size: header.block_size,
            len: header.len,
            blocks,
        })
    }
}

/// Checks a signature header from a peer (block size and count within limits).
pub fn check_header(header: &SignatureHeader) -> Result<(), String> {
    if header.block_size == 0 || header.block_size > MAX_PEER_BLOCK_SIZE {
        return Err(format!("invalid block size {}", header.block_size));
    }
    if header.blocks() > MAX_PEER_BLOCKS {
        return Err(format!("too many blocks ({})", header.blocks()));
    }
    Ok(())
}

/// One delta instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Copy blocks `start..start + count` of the basis.
    Copy {
        /// First block.
        start: u64,
        /// Consecutive blocks.
        count: u64,
    },
    /// These bytes (at most [`MAX_CHUNK`] per op).
    Literal(Vec<u8>),
}

/// The byte range of the basis that `Copy { start, count }` stands for, or `None` if it is
/// outside a basis of `len` bytes in blocks of `block_size`.
pub fn copy_range(block_size: u32, len: u64, start: u64, count: u64) -> Option<(u64, u64)> {
    let bs = u64::from(block_size);
    let blocks = if bs == 0 { 0 } else { len.div_ceil(bs) };
    let end = start.checked_add(count)?;
    if count == 0 || end > blocks {
        return None;
    }
    let offset = start.checked_mul(bs)?;
    let stop = end.checked_mul(bs)?.min(len);
    Some((offset, stop - offset))
}

/// Reads until `buf` is full or the end; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Finds blocks of a signature by weak checksum, then SHA-256.
struct Index<'a> {
    sig: &'a Signature,
    by_weak: HashMap<u32, Vec<u64>>,
    /// The last block when it is shorter than a block: matched only at the end of the input.
    short_tail: Option<u64>,
}

impl<'a> Index<'a> {
    fn new(sig: &'a Signature) -> Self {
        let bs = u64::from(sig.block_size);
        let mut by_weak: HashMap<u32, Vec<u64>> = HashMap::new();
        let mut short_tail = None;
        for (i, b) in sig.blocks.iter().enumerate() {
            let i = i as u64;
            if sig.block_len(i) == bs {
                by_weak.entry(b.weak).or_default().push(i);
            } else {
                short_tail = Some(i);
            }
        }
        Self {
            sig,
            by_weak,
            short_tail,
        }
    }

    /// The block equal to `window` with weak checksum `weak`, preferring `next` (the block
    /// after the last one copied, so runs stay runs).
    fn find(&self, weak: u32, window: &[u8], next: Option<u64>) -> Option<u64> {
        let candidates = self.by_weak.get(&weak)?;
        let strong = strong_checksum(window);
        let is = |i: u64| self.sig.blocks.get(i as usize).map(|b| b.strong) == Some(strong);
        if let Some(n) = next
            && candidates.contains(&n)
            && is(n)
        {
            return Some(n);
        }
        candidates.iter().copied().find(|&i| is(i))
    }
}

/// Emits ops, merging consecutive copies and chunking literals.
struct Emitter<F> {
    emit: F,
    pending: Option<(u64, u64)>,
}

impl<F: FnMut(Op) -> io::Result<()>> Emitter<F> {
    fn copy(&mut self, block: u64) -> io::Result<()> {
        match &mut self.pending {
            Some((start, count)) if *start + *count == block => *count += 1,
            _ => {
                self.flush_copy()?;
                self.pending = Some((block, 1));
            }
        }
        Ok(())
    }

    fn literal(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.flush_copy()?;
        for chunk in bytes.chunks(MAX_CHUNK) {
            (self.emit)(Op::Literal(chunk.to_vec()))?;
        }
        Ok(())
    }

    fn flush_copy(&mut self) -> io::Result<()> {
        if let Some((start, count)) = self.pending.take() {
            (self.emit)(Op::Copy { start, count })?;
        }
        Ok(())
    }

    fn next_block(&self) -> Option<u64> {
        self.pending.map(|(s, c)| s + c)
    }
}

/// Computes the ops that turn the basis described by `sig` into the contents of `input`,
/// streaming: `input` is read once, in pieces, and `emit` gets the ops in order.
pub fn diff(
    sig: &Signature,
    mut input: impl Read,
    emit: impl FnMut(Op) -> io::Result<()>,
) -> io::Result<()> {
    let bs = sig.block_size.max(1) as usize;
    let index = Index::new(sig);
    let mut out = Emitter {
        emit,
        pending: None,
    };
    let read_size = bs.max(MAX_CHUNK);
    if sig.blocks.is_empty() {
        // Nothing to match against: all literal.
        let mut chunk = vec![0u8; MAX_CHUNK];
        loop {
            let n = read_full(&mut input, &mut chunk)?;
            out.literal(&chunk[..n])?;
            if n < chunk.len() {
                return out.flush_copy();
            }
        }
    }
    // `buf[lit..pos]` is literal not yet emitted; the window is `buf[pos..pos + bs]`.
    let mut buf: Vec<u8> = Vec::with_capacity(2 * read_size + bs);
    let (mut lit, mut pos) = (0usize, 0usize);
    let mut eof = false;
    let mut rolling: Option<Rolling> = None;
    loop {
        if !eof && buf.len() < pos + bs + 1 {
            if lit > 0 {
                buf.drain(..lit);
                pos -= lit;
                lit = 0;
            }
            let old = buf.len();
            buf.resize(old + read_size, 0);
            let n = read_full(&mut input, &mut buf[old..])?;
            buf.truncate(old + n);
            eof = n < read_size;
            continue;
        }
        let avail = buf.len() - pos;
        if avail >= bs {
            let r = *rolling.get_or_insert_with(|| Rolling::new(&buf[pos..pos + bs]));
            if let Some(block) = index.find(r.digest(), &buf[pos..pos + bs], out.next_block()) {
                out.literal(&buf[lit..pos])?;
                out.copy(block)?;
                pos += bs;
                lit = pos;
                rolling = None;
                continue;
            }
            if avail > bs {
                if let Some(r) = rolling.as_mut() {
                    r.roll(buf[pos], buf[pos + bs]);
                }
                pos += 1;
                if pos - lit >= MAX_CHUNK {
                    out.literal(&buf[lit..pos])?;
                    lit = pos;
                }
                continue;
            }
        }
        // The end: fewer than a block left after `pos` (or a last window that did not match).
        let rest = &buf[pos..];
        if let Some(t) = index.short_tail {
            let tlen = sig.block_len(t) as usize;
            if rest.len() >= tlen {
                let split = buf.len() - tlen;
                let tail = &buf[split..];
                let b = &sig.blocks[t as usize];
                if weak_checksum(tail) == b.weak && strong_checksum(tail) == b.strong {
                    out.literal(&buf[lit..split])?;
                    out.copy(t)?;
                    return out.flush_copy();
                }
            }
        }
        out.literal(&buf[lit..])?;
        return out.flush_copy();
    }
}

/// Carries out one op: copies blocks from `basis` or writes the literal to `out`. Returns the
/// bytes written.
pub fn apply_op(
    basis: &mut (impl Read + Seek),
    block_size: u32,
    basis_len: u64,
    op: &Op,
    out: &mut impl Write,
) -> io::Result<u64> {
    match op {
        Op::Literal(bytes) => {
            out.write_all(bytes)?;
            Ok(bytes.len() as u64)
        }
        Op::Copy { start, count } => {
            let (offset, len) =
                copy_range(block_size, basis_len, *start, *count).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "block reference out of range")
                })?;
            basis.seek(SeekFrom::Start(offset))?;
            let copied = io::copy(&mut basis.take(len), out)?;
            if copied != len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the basis changed during the transfer",
                ));
            }
            Ok(copied)
        }
    }
}

/// Rebuilds contents from a basis and ops.
pub fn apply<'a>(
    basis: &mut (impl Read + Seek),
    sig: &Signature,
    ops: impl IntoIterator<Item = &'a Op>,
    out: &mut impl Write,
) -> io::Result<u64> {
    let mut n = 0;
    for op in ops {
        n += apply_op(basis, sig.block_size, sig.len, op, out)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
