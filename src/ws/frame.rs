//! RFC 6455 frame headers, read and written, and masking: pure functions
//! over bytes, no I/O (the fuzz target `ws_frames` drives them).
//!
//! Every length here comes from a peer. It is kept as a `u64` until it has
//! been compared with a limit, so no announced length can overflow, wrap or
//! make the reader reserve memory before the limit check.

/// The longest header: 2 bytes, an 8-byte length, a 4-byte mask.
pub const MAX_HEADER: usize = 14;

pub const OP_CONTINUE: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The largest payload a control frame may have (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: u64 = 125;

/// One frame's header as the peer wrote it; nothing checked yet beyond
/// its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    /// RSV1–3, shifted down (0 unless an extension was negotiated; none is).
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    /// The payload length as announced: unchecked, possibly huge.
    pub len: u64,
    /// Bytes the header itself took.
    pub header_len: usize,
}

impl Header {
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// Reads the header at the start of `buf`: `None` while it is incomplete.
/// Never fails: every bit pattern is a header; what it may say is checked
/// by the socket against its role and limits.
pub fn parse(buf: &[u8]) -> Option<Header> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7F {
        126 => (
            u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(bytes), 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        let key: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(key)
    } else {
        None
    };
    Some(Header {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x7,
        opcode: b0 & 0x0F,
        mask,
        len,
        header_len: at,
    })
}

/// Appends a final frame's header for a payload of `len` bytes.
pub fn write_header(out: &mut Vec<u8>, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    out.push(0x80 | (opcode & 0x0F));
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match len {
        0..=125 => out.push(mask_bit | len as u8),
        126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
}

/// XORs `buf` with the masking key (its own inverse), eight bytes at a
/// time.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut words = buf.chunks_exact_mut(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ wide).to_ne_bytes());
    }
    // The tail starts at a multiple of 8, so at key index 0.
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_rfc_examples() {
        // RFC 6455 §5.7: a single-frame unmasked text message "Hello".
        let h = parse(&[0x81, 0x05, 0x48, 0x65]).unwrap();
        assert_eq!(
            (h.fin, h.opcode, h.len, h.header_len),
            (true, OP_TEXT, 5, 2)
        );
        assert_eq!(h.mask, None);
        // The masked "Hello".
        let mut frame = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let h = parse(&frame).unwrap();
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!(h.header_len, 6);
        apply_mask(&mut frame[6..], h.mask.unwrap());
        assert_eq!(&frame[6..], b"Hello");
        // 256 bytes binary, 16-bit length; 64 KiB, 64-bit length.
        let h = parse(&[0x82, 0x7E, 0x01, 0x00]).unwrap();
        assert_eq!((h.len, h.header_len), (256, 4));
        let h = parse(&[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]).unwrap();
        assert_eq!((h.len, h.header_len), (65536, 10));
    }

    #[test]
    fn incomplete_headers_ask_for_more() {
        let full = [0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4];
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]), None, "{cut}");
        }
        let h = parse(&full).unwrap();
        assert_eq!(
            (h.len, h.header_len, h.mask),
            (65536, 14, Some([1, 2, 3, 4]))
        );
    }

    #[test]
    fn any_announced_length_is_held_without_overflow() {
        let h = parse(&[0x81, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]).unwrap();
        assert_eq!(h.len, u64::MAX);
    }

    #[test]
    fn written_headers_read_back() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 3_000_000] {
            for mask in [None, Some([9, 8, 7, 6])] {
                let mut out = Vec::new();
                write_header(&mut out, OP_TEXT, len, mask);
                let h = parse(&out).unwrap();
                assert_eq!(h.len, len as u64);
                assert_eq!(h.header_len, out.len());
                assert_eq!(h.mask, mask);
                assert!(h.fin);
                assert_eq!((h.rsv, h.opcode), (0, OP_TEXT));
            }
        }
    }

    #[test]
    fn masking_matches_the_byte_by_byte_definition() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut fast = data.clone();
            apply_mask(&mut fast, key);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            assert_eq!(fast, slow);
        }
    }
}
