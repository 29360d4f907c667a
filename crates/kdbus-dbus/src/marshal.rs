//! D-Bus marshalling (the classic "DBus1" format), just enough for headers, the bus
//! driver's arguments and match-rule arguments.
//!
//! Alignment is relative to the start of the message, which is where a reader starts
//! (or says it starts, with [`Reader::at`]). Every length is checked against the
//! buffer before it is used; nesting is bounded, so hostile input costs at most linear
//! time and constant stack.

use thiserror::Error;

/// Byte order of a message, given by its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endian {
    /// Little-endian (`l`).
    Little,
    /// Big-endian (`B`).
    Big,
}

impl Endian {
    /// The byte order a message's first byte names, if it names one.
    pub fn from_byte(b: u8) -> Option<Endian> {
        match b {
            b'l' => Some(Endian::Little),
            b'B' => Some(Endian::Big),
            _ => None,
        }
    }
    /// The first byte of a message in this byte order (`l` or `B`).
    pub fn byte(self) -> u8 {
        match self {
            Endian::Little => b'l',
            Endian::Big => b'B',
        }
    }
}

/// Why a value could not be read.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum MarshalError {
    /// A value runs past the end of the buffer.
    #[error("message truncated")]
    Truncated,
    /// Alignment padding holds a non-zero byte.
    #[error("non-zero padding")]
    BadPadding,
    /// A boolean is neither 0 nor 1.
    #[error("boolean other than 0 or 1")]
    BadBool,
    /// A string is not UTF-8, lacks its terminating NUL or contains a NUL.
    #[error("string not UTF-8, not NUL-terminated, or with an embedded NUL")]
    BadString,
    /// A signature is invalid, or not a single complete type where one is needed.
    #[error("invalid signature")]
    BadSignature,
    /// An object path is invalid.
    #[error("invalid object path")]
    BadPath,
    /// An array is longer than [`MAX_ARRAY_LEN`] or its elements do not fill it exactly.
    #[error("array longer than 64 MiB or not a whole number of elements")]
    BadArray,
    /// Containers (arrays, structs, variants) are nested too deeply.
    #[error("containers nested too deeply")]
    TooDeep,
    /// A unix fd (`h`) index is not below the message's fd count.
    #[error("unix fd index beyond the message's fds")]
    BadFd,
    /// The body has bytes left after the values of its signature.
    #[error("bytes after the last value of the signature")]
    Trailing,
}

/// A result whose error is a [`MarshalError`].
pub type Result<T> = std::result::Result<T, MarshalError>;

/// Largest array the specification allows.
pub const MAX_ARRAY_LEN: u32 = 64 * 1024 * 1024;

fn align_of(t: u8) -> usize {
    match t {
        b'y' | b'g' | b'v' => 1,
        b'n' | b'q' => 2,
        b'b' | b'i' | b'u' | b'h' | b's' | b'o' | b'a' => 4,
        _ => 8, // x t d ( {
    }
}

/// Reads values from a message buffer.
#[derive(Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    endian: Endian,
    /// `h` values must be below this (the message's fd count) when skipped.
    fds: u32,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`, which starts at the message's first byte.
    pub fn new(buf: &'a [u8], endian: Endian) -> Self {
        Reader {
            buf,
            pos: 0,
            endian,
            fds: u32::MAX,
        }
    }

    /// A reader positioned at `pos` of a message buffer.
    pub fn at(buf: &'a [u8], pos: usize, endian: Endian) -> Self {
        Reader {
            buf,
            pos,
            endian,
            fds: u32::MAX,
        }
    }

    /// The current position, counted from the message's first byte.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Whether the position has reached the end of the buffer.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(MarshalError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(MarshalError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    /// Skip padding to `n`; padding must be zero bytes.
    pub fn align(&mut self, n: usize) -> Result<()> {
        let pad = (n - self.pos % n) % n;
        if self.take(pad)?.iter().any(|b| *b != 0) {
            return Err(MarshalError::BadPadding);
        }
        Ok(())
    }

    /// Read a byte (no alignment).
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    /// Read a `u16` in the message's byte order, after padding to 2.
    pub fn u16(&mut self) -> Result<u16> {
        self.align(2)?;
        let b: [u8; 2] = self
            .take(2)?
            .try_into()
            .map_err(|_| MarshalError::Truncated)?;
        Ok(match self.endian {
            Endian::Little => u16::from_le_bytes(b),
            Endian::Big => u16::from_be_bytes(b),
        })
    }

    /// Read a `u32` in the message's byte order, after padding to 4.
    pub fn u32(&mut self) -> Result<u32> {
        self.align(4)?;
        let b: [u8; 4] = self
            .take(4)?
            .try_into()
            .map_err(|_| MarshalError::Truncated)?;
        Ok(match self.endian {
            Endian::Little => u32::from_le_bytes(b),
            Endian::Big => u32::from_be_bytes(b),
        })
    }

    /// Read a `u64` in the message's byte order, after padding to 8.
    pub fn u64(&mut self) -> Result<u64> {
        self.align(8)?;
        let b: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| MarshalError::Truncated)?;
        Ok(match self.endian {
            Endian::Little => u64::from_le_bytes(b),
            Endian::Big => u64::from_be_bytes(b),
        })
    }

    /// Read a boolean: a `u32` (aligned to 4) that must be 0 or 1.
    pub fn bool(&mut self) -> Result<bool> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(MarshalError::BadBool),
        }
    }

    fn text(&mut self, len: usize) -> Result<&'a str> {
        let bytes = self.take(len)?;
        if self.u8()? != 0 || has_nul(bytes) {
            return Err(MarshalError::BadString);
        }
        std::str::from_utf8(bytes).map_err(|_| MarshalError::BadString)
    }

    /// Read a string: a `u32` length (aligned to 4), the UTF-8 bytes and a NUL.
    pub fn string(&mut self) -> Result<&'a str> {
        let len = self.u32()? as usize;
        self.text(len)
    }

    /// Read an object path: a string that must be a valid path.
    pub fn object_path(&mut self) -> Result<&'a str> {
        let s = self.string()?;
        if !crate::names::is_object_path(s) {
            return Err(MarshalError::BadPath);
        }
        Ok(s)
    }

    /// Read a signature: a one-byte length (no alignment), the bytes and a NUL; it must be
    /// valid.
    pub fn signature(&mut self) -> Result<&'a str> {
        let s = self.signature_text()?;
        if !crate::names::is_signature(s) {
            return Err(MarshalError::BadSignature);
        }
        Ok(s)
    }

    /// Read a signature's text without checking its grammar (for bytes this process
    /// validated before).
    pub(crate) fn signature_text(&mut self) -> Result<&'a str> {
        let len = self.u8()? as usize;
        self.text(len)
    }

    /// Start an array of elements aligned to `elem_align`: returns the end position.
    pub fn array_begin(&mut self, elem_align: usize) -> Result<usize> {
        let len = self.u32()?;
        if len > MAX_ARRAY_LEN {
            return Err(MarshalError::BadArray);
        }
        self.align(elem_align)?;
        let end = self
            .pos
            .checked_add(len as usize)
            .ok_or(MarshalError::Truncated)?;
        if end > self.buf.len() {
            return Err(MarshalError::Truncated);
        }
        Ok(end)
    }

    /// Skip one value of the single complete type at the start of `sig`; returns the
    /// rest of the signature.
    pub fn skip<'s>(&mut self, sig: &'s [u8], depth: u32) -> Result<&'s [u8]> {
        if depth > 64 {
            return Err(MarshalError::TooDeep);
        }
        let (&t, rest) = sig.split_first().ok_or(MarshalError::BadSignature)?;
        match t {
            b'y' => {
                self.u8()?;
            }
            b'n' | b'q' => {
                self.u16()?;
            }
            b'b' => {
                self.bool()?;
            }
            b'i' | b'u' => {
                self.u32()?;
            }
            b'h' => {
                if self.u32()? >= self.fds {
                    return Err(MarshalError::BadFd);
                }
            }
            b'x' | b't' | b'd' => {
                self.u64()?;
            }
            b's' => {
                self.string()?;
            }
            b'o' => {
                self.object_path()?;
            }
            b'g' => {
                self.signature()?;
            }
            b'v' => {
                let inner = self.signature()?;
                let left = self.skip(inner.as_bytes(), depth + 1)?;
                if !left.is_empty() {
                    return Err(MarshalError::BadSignature);
                }
            }
            b'a' => {
                let elem = single_type(rest)?;
                let align = align_of(*elem.first().ok_or(MarshalError::BadSignature)?);
                let end = self.array_begin(align)?;
                while self.pos < end {
                    self.skip(elem, depth + 1)?;
                }
                if self.pos != end {
                    return Err(MarshalError::BadArray);
                }
                return Ok(&rest[elem.len()..]);
            }
            b'(' | b'{' => {
                self.align(8)?;
                let close = if t == b'(' { b')' } else { b'}' };
                let mut inner = rest;
                while inner.first() != Some(&close) {
                    inner = self.skip(inner, depth + 1)?;
                }
                return Ok(&inner[1..]);
            }
            _ => return Err(MarshalError::BadSignature),
        }
        Ok(rest)
    }
}

/// Whether `body` is exactly a sequence of values of `signature`, its `h` values
/// below `unix_fds`: what dbus-daemon checks before it forwards a message (a libdbus
/// receiver disconnects on anything less).
pub fn body_validate(body: &[u8], endian: Endian, signature: &str, unix_fds: u32) -> Result<()> {
    let mut r = Reader::new(body, endian);
    r.fds = unix_fds;
    let mut sig = signature.as_bytes();
    while !sig.is_empty() {
        sig = r.skip(sig, 0)?;
    }
    if r.pos != body.len() {
        return Err(MarshalError::Trailing);
    }
    Ok(())
}

/// The single complete type at the start of `sig`.
pub fn single_type(sig: &[u8]) -> Result<&[u8]> {
    let mut depth = 0i32;
    for (i, &c) in sig.iter().enumerate() {
        match c {
            b'a' => continue,
            b'(' | b'{' => depth += 1,
            b')' | b'}' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return Err(MarshalError::BadSignature);
        }
        if depth == 0 {
            return Ok(&sig[..=i]);
        }
    }
    Err(MarshalError::BadSignature)
}

/// Appends values to a buffer. Alignment is relative to where the writer started (the
/// start of the message), so messages can be appended to a stream buffer.
pub struct Writer<'a> {
    /// The buffer being appended to.
    pub buf: &'a mut Vec<u8>,
    /// The byte order values are written in.
    pub endian: Endian,
    base: usize,
}

impl<'a> Writer<'a> {
    /// A writer whose alignment counts from the current end of `buf` (a new message).
    pub fn new(buf: &'a mut Vec<u8>, endian: Endian) -> Self {
        let base = buf.len();
        Writer { buf, endian, base }
    }

    /// A writer continuing a message that starts at `base` in `buf`.
    pub fn continuing(buf: &'a mut Vec<u8>, endian: Endian, base: usize) -> Self {
        Writer { buf, endian, base }
    }

    /// Pad with zero bytes to a multiple of `n` from the message's start.
    pub fn align(&mut self, n: usize) {
        let rel = self.buf.len() - self.base;
        let len = self.base + rel.div_ceil(n) * n;
        self.buf.resize(len, 0);
    }

    /// Write a byte (no alignment).
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// Write a `u32` in the writer's byte order, after padding to 4.
    pub fn u32(&mut self, v: u32) {
        self.align(4);
        let b = match self.endian {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        };
        self.buf.extend_from_slice(&b);
    }

    /// Write a `u64` in the writer's byte order, after padding to 8.
    pub fn u64(&mut self, v: u64) {
        self.align(8);
        let b = match self.endian {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        };
        self.buf.extend_from_slice(&b);
    }

    /// Write a boolean as a `u32` 0 or 1, after padding to 4.
    pub fn bool(&mut self, v: bool) {
        self.u32(v as u32);
    }

    /// Write a string: a `u32` length (padded to 4), the bytes and a NUL.
    pub fn string(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }

    /// Write a signature: a one-byte length (no alignment), the bytes and a NUL.
    pub fn signature(&mut self, s: &str) {
        self.u8(s.len() as u8);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }

    /// Begin an array; returns the position of its length, for [`Writer::array_end`].
    /// The array's alignment padding is not part of its length.
    pub fn array_begin(&mut self, elem_align: usize) -> (usize, usize) {
        self.u32(0);
        let len_at = self.buf.len() - 4;
        self.align(elem_align);
        (len_at, self.buf.len())
    }

    /// Finish an array begun with [`Writer::array_begin`]: fill in its length, the bytes
    /// written after the element padding.
    pub fn array_end(&mut self, (len_at, start): (usize, usize)) {
        let len = (self.buf.len() - start) as u32;
        let b = match self.endian {
            Endian::Little => len.to_le_bytes(),
            Endian::Big => len.to_be_bytes(),
        };
        self.buf[len_at..len_at + 4].copy_from_slice(&b);
    }

    /// A variant holding a string-like value of type `t` (`s`, `o` or `g`).
    pub fn variant_str(&mut self, t: u8, s: &str) {
        self.signature(std::str::from_utf8(&[t]).unwrap_or("s"));
        match t {
            b'g' => self.signature(s),
            _ => self.string(s),
        }
    }

    /// Write a variant holding a `u32`: signature `u`, then the value aligned to 4.
    pub fn variant_u32(&mut self, v: u32) {
        self.signature("u");
        self.u32(v);
    }

    /// A variant holding a unix fd: `index` into the message's fds.
    pub fn variant_fd(&mut self, index: u32) {
        self.signature("h");
        self.u32(index);
    }
}

/// Does `b` hold a NUL byte? A word at a time with no early exit, so that the loop
/// vectorizes: every string of every body a client sends passes here, and a long one
/// (a 1 MiB argument) costs a third of `<[u8]>::contains`'s byte-serial search.
fn has_nul(b: &[u8]) -> bool {
    const LO: u64 = u64::from_ne_bytes([0x01; 8]);
    const HI: u64 = u64::from_ne_bytes([0x80; 8]);
    let (words, tail) = b.as_chunks::<8>();
    // Nonzero exactly when some byte of `x` is zero (its borrow sets that byte's
    // high bit, which `!x` keeps only if the byte was below 0x80).
    let zero_in = |x: u64| x.wrapping_sub(LO) & !x & HI;
    let any = words
        .iter()
        .fold(0, |acc, w| acc | zero_in(u64::from_ne_bytes(*w)));
    any != 0 || tail.contains(&0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_both_endians() {
        for e in [Endian::Little, Endian::Big] {
            let mut b = Vec::new();
            let mut w = Writer::new(&mut b, e);
            w.u8(7);
            w.string("héllo");
            w.u64(1 << 40);
            let a = w.array_begin(4);
            w.u32(1);
            w.u32(2);
            w.array_end(a);
            let mut r = Reader::new(&b, e);
            assert_eq!(r.u8().unwrap(), 7);
            assert_eq!(r.string().unwrap(), "héllo");
            assert_eq!(r.u64().unwrap(), 1 << 40);
            let end = r.array_begin(4).unwrap();
            assert_eq!((r.u32().unwrap(), r.u32().unwrap(), r.pos()), (1, 2, end));
            let mut r = Reader::new(&b, e);
            let mut sig: &[u8] = b"ysxau";
            while !sig.is_empty() {
                sig = r.skip(sig, 0).unwrap();
            }
            assert_eq!(r.pos(), b.len());
        }
    }

    #[test]
    fn rejects_bad_input() {
        let mut r = Reader::new(&[1, 0, 0, 0, b'a', 1], Endian::Little);
        assert_eq!(r.string(), Err(MarshalError::BadString));
        let mut r = Reader::new(&[0, 1, 0, 0, 0, 0, 0, 0], Endian::Little);
        r.u8().unwrap();
        assert_eq!(r.u32(), Err(MarshalError::BadPadding));
        let mut r = Reader::new(&[2, 0, 0, 0], Endian::Little);
        assert_eq!(r.bool(), Err(MarshalError::BadBool));
    }

    proptest::proptest! {
        #[test]
        fn skip_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200), sig in "[ybnqiuxtdsogva(){}]{0,12}") {
            let mut r = Reader::new(&data, Endian::Little);
            let _ = r.skip(sig.as_bytes(), 0);
        }

        /// The word-at-a-time search agrees with the byte-serial one, for NULs at
        /// any position and bytes on both sides of 0x80.
        #[test]
        fn has_nul_is_contains(data in proptest::collection::vec(proptest::sample::select(vec![0u8, 1, 0x7f, 0x80, 0x81, 0xff, b'x']), 0..70)) {
            proptest::prop_assert_eq!(has_nul(&data), data.contains(&0));
        }
    }
}
