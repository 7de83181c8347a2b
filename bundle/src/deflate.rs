//! A deterministic, streaming raw-deflate (RFC 1951) encoder whose output is bit-identical to
//! GNU gzip 1.x (`gzip -c -n -<level>`, levels 1–9) or to zlib 1.2/1.3 `deflate()` (windowBits ±15,
//! memLevel 8, `Z_DEFAULT_STRATEGY`, levels 1–9).
//!
//! Why: a tree holds many `.gz` files (man pages, changelogs made by `gzip -9n`). Shipping their
//! decompressed bytes (which the bundle compressor then squeezes much better) and re-creating the
//! exact `.gz` on the target needs an encoder that makes the very same bits as the producer.
//!
//! Both producers descend from one algorithm: a 64 KiB window slid by 32 KiB, a 15-bit rolling
//! hash with chains, greedy matching at levels 1–3 and lazy matching at 4–9, and the same Huffman
//! tree construction. This module follows the algorithm as documented by zlib's `deflate.c` and
//! `trees.c` (read to learn, written anew here) and treats the `gzip` binary as a black box. The
//! behaviours where the two producers differ, each pinned down against the oracles, are:
//!
//! - **Symbol buffer**: zlib (memLevel 8) ends a block when 16383 symbols are buffered, gzip at
//!   32767.
//! - **Block truncation** (gzip only; zlib has it only under `TRUNCATE_BLOCK`): at levels > 2,
//!   every 4096 symbols, estimate the block's compressed size and end the block when fewer than
//!   half the symbols are matches and the estimate is under half the input.
//! - **End of input**: zlib keeps sliding the window while it drains the last bytes and caps the
//!   "nice" length at the lookahead; gzip stops sliding once its read hits end of file, does not
//!   search for matches at all once the current position is past `window_size - MIN_LOOKAHEAD`,
//!   and caps a match at the lookahead only after the search, so the search may run on into the
//!   bytes beyond the input's end (two zero bytes, then stale window contents). The window here
//!   is maintained exactly like gzip's (whole-half copies on slide, two zero bytes at end of
//!   file) so that those stale bytes are the same.
//! - **Stored output**: gzip turns a whole incompressible file into one stored "method" only when
//!   its output is seekable; as `gzip -c` to a pipe and every `.gz` we meet use a deflate stream,
//!   that case does not exist here.
//!
//! Memory is fixed: the 64 KiB window, two 64 KiB hash arrays, the symbol buffer (at most 32767
//! symbols of 3 bytes) and one block's worth of pending output; about 350 KiB whatever the input.

use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use std::sync::OnceLock;

/// Which producer's bit stream to reproduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Flavor {
    /// GNU gzip 1.x (`gzip -c -n -<level>`), the deflate data between header and trailer.
    Gzip,
    /// zlib 1.2.x/1.3.x `deflate()`, windowBits 15 (or -15 raw), memLevel 8, default strategy.
    Zlib,
}

/// A compression level outside `1..=9` (level 0, storing, is not reproduced).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("deflate level {0} is outside 1..=9")]
pub struct InvalidLevel(pub u8);

const WSIZE: usize = 1 << 15;
const WMASK: usize = WSIZE - 1;
const WINDOW_SIZE: usize = 2 * WSIZE;
/// Bytes past the window that a hash insertion near the very end may read (gzip inserts strings
/// at its last positions without checking the lookahead); kept zero, only feeding dead hashes.
const WINDOW_PAD: usize = MAX_MATCH + 8;
const HASH_BITS: usize = 15;
const HASH_SIZE: usize = 1 << HASH_BITS;
const HASH_MASK: usize = HASH_SIZE - 1;
/// `(HASH_BITS + MIN_MATCH - 1) / MIN_MATCH`: after three updates a byte has left the hash.
const H_SHIFT: usize = 5;
const MIN_MATCH: usize = 3;
const MAX_MATCH: usize = 258;
const MIN_LOOKAHEAD: usize = MAX_MATCH + MIN_MATCH + 1;
const MAX_DIST: usize = WSIZE - MIN_LOOKAHEAD;
/// Matches of length 3 farther than this are not worth their distance code (lazy levels).
const TOO_FAR: usize = 4096;
/// Hash-chain terminator; position 0 of the window is never matched because of it.
const NIL: usize = 0;

const LENGTH_CODES: usize = 29;
const LITERALS: usize = 256;
const L_CODES: usize = LITERALS + 1 + LENGTH_CODES;
const D_CODES: usize = 30;
const BL_CODES: usize = 19;
const HEAP_SIZE: usize = 2 * L_CODES + 1;
const MAX_BITS: usize = 15;
const MAX_BL_BITS: usize = 7;
const END_BLOCK: usize = 256;
const REP_3_6: usize = 16;
const REPZ_3_10: usize = 17;
const REPZ_11_138: usize = 18;

const EXTRA_LBITS: [u8; LENGTH_CODES] =
    [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const EXTRA_DBITS: [u8; D_CODES] =
    [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];
const EXTRA_BLBITS: [u8; BL_CODES] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 3, 7];
/// The order in which code-length code lengths are sent (RFC 1951 §3.2.7).
const BL_ORDER: [usize; BL_CODES] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

/// Matcher parameters per level: (good, lazy, nice, chain). At levels 1–3 (greedy) `lazy` is the
/// longest match whose inner strings are still inserted into the hash.
const CONFIG: [(usize, usize, usize, usize); 10] = [
    (0, 0, 0, 0),
    (4, 4, 8, 4),
    (4, 5, 16, 8),
    (4, 6, 32, 32),
    (4, 4, 16, 16),
    (8, 16, 32, 32),
    (8, 16, 128, 128),
    (8, 32, 128, 256),
    (32, 128, 258, 1024),
    (32, 258, 258, 4096),
];

/// A code and its bit length.
#[derive(Clone, Copy, Default)]
struct Code {
    code: u16,
    len: u16,
}

/// Constant tables, built once.
struct Tables {
    /// Match length - 3 (0..=255) to length code (0..=28).
    length_code: [u8; 256],
    base_length: [u16; LENGTH_CODES],
    /// Distance - 1 to distance code: the first 256 entries direct, the next 256 by `dist >> 7`.
    dist_code: [u8; 512],
    base_dist: [u16; D_CODES],
    static_ltree: [Code; L_CODES + 2],
    static_dtree: [Code; D_CODES],
}

fn bi_reverse(mut code: u32, len: usize) -> u16 {
    let mut res = 0u32;
    for _ in 0..len {
        res = (res << 1) | (code & 1);
        code >>= 1;
    }
    res as u16
}

/// Canonical codes from bit lengths (RFC 1951 §3.2.2), bit-reversed for LSB-first output.
fn gen_codes(lens: impl Iterator<Item = usize>, bl_count: &[u16; MAX_BITS + 1], mut set: impl FnMut(usize, u16)) {
    let mut next_code = [0u32; MAX_BITS + 1];
    let mut code = 0u32;
    for bits in 1..=MAX_BITS {
        code = (code + u32::from(bl_count[bits - 1])) << 1;
        next_code[bits] = code & 0xffff;
    }
    for (n, len) in lens.enumerate() {
        if len == 0 || len > MAX_BITS {
            continue;
        }
        set(n, bi_reverse(next_code[len], len));
        next_code[len] += 1;
    }
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut t = Tables {
            length_code: [0; 256],
            base_length: [0; LENGTH_CODES],
            dist_code: [0; 512],
            base_dist: [0; D_CODES],
            static_ltree: [Code::default(); L_CODES + 2],
            static_dtree: [Code::default(); D_CODES],
        };
        let mut length = 0usize;
        for (code, &extra) in EXTRA_LBITS.iter().enumerate().take(LENGTH_CODES - 1) {
            t.base_length[code] = length as u16;
            for _ in 0..(1usize << extra) {
                t.length_code[length] = code as u8;
                length += 1;
            }
        }
        // Length 258 has two encodings (284 + 31 or 285); 285 is the shorter one.
        t.length_code[255] = (LENGTH_CODES - 1) as u8;
        let mut dist = 0usize;
        for (code, &extra) in EXTRA_DBITS.iter().enumerate().take(16) {
            t.base_dist[code] = dist as u16;
            for _ in 0..(1usize << extra) {
                t.dist_code[dist] = code as u8;
                dist += 1;
            }
        }
        dist >>= 7;
        for (code, &extra) in EXTRA_DBITS.iter().enumerate().skip(16) {
            t.base_dist[code] = (dist << 7) as u16;
            for _ in 0..(1usize << (extra - 7)) {
                t.dist_code[256 + dist] = code as u8;
                dist += 1;
            }
        }
        let mut bl_count = [0u16; MAX_BITS + 1];
        let lens: Vec<usize> = (0..L_CODES + 2)
            .map(|n| match n {
                0..=143 => 8,
                144..=255 => 9,
                256..=279 => 7,
                _ => 8,
            })
            .collect();
        for (n, &len) in lens.iter().enumerate() {
            t.static_ltree[n].len = len as u16;
            bl_count[len] += 1;
        }
        let mut codes = [0u16; L_CODES + 2];
        gen_codes(lens.iter().copied(), &bl_count, |n, c| codes[n] = c);
        for (n, c) in codes.iter().enumerate() {
            t.static_ltree[n].code = *c;
        }
        for (n, d) in t.static_dtree.iter_mut().enumerate() {
            *d = Code { code: bi_reverse(n as u32, 5), len: 5 };
        }
        t
    })
}

fn d_code(t: &Tables, dist: usize) -> usize {
    if dist < 256 {
        usize::from(t.dist_code[dist])
    } else {
        usize::from(t.dist_code[256 + ((dist >> 7) & 0xff)])
    }
}

/// LSB-first bit output; whole bytes go to `bytes`, which the encoder hands on after each block.
#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    fn send(&mut self, value: u32, len: u32) {
        self.acc |= u64::from(value) << self.n;
        self.n += len;
        if self.n >= 32 {
            self.bytes.extend_from_slice(&(self.acc as u32).to_le_bytes());
            self.acc >>= 32;
            self.n -= 32;
        }
    }

    fn send_code(&mut self, c: Code) {
        self.send(u32::from(c.code), u32::from(c.len));
    }

    /// Pads to a byte boundary.
    fn windup(&mut self) {
        while self.n > 0 {
            self.bytes.push(self.acc as u8);
            self.acc >>= 8;
            self.n = self.n.saturating_sub(8);
        }
        self.acc = 0;
    }
}

/// One Huffman tree node. zlib overlays `freq`/`code` and `dad`/`len`; they are kept apart here
/// and every read follows the same order, so the overlay never shows.
#[derive(Clone, Copy, Default)]
struct Node {
    freq: u32,
    code: u16,
    dad: u16,
    len: u16,
}

/// What is fixed about one kind of tree.
struct Desc {
    stree: Option<&'static [Code]>,
    extra: &'static [u8],
    extra_base: usize,
    elems: usize,
    max_length: usize,
}

/// The state of Huffman construction shared by the three trees of a block.
struct Builder {
    heap: [usize; HEAP_SIZE],
    heap_len: usize,
    heap_max: usize,
    depth: [u8; HEAP_SIZE],
    bl_count: [u16; MAX_BITS + 1],
    /// Bit length of the block with dynamic trees (and, after `build_bl_tree`, their header).
    opt_len: i64,
    /// Bit length of the block with the static trees.
    static_len: i64,
}

/// Ties in frequency go to the shallower subtree, which bounds the worst-case code length.
fn smaller(tree: &[Node], n: usize, m: usize, depth: &[u8; HEAP_SIZE]) -> bool {
    tree[n].freq < tree[m].freq || (tree[n].freq == tree[m].freq && depth[n] <= depth[m])
}

impl Builder {
    fn pqdownheap(&mut self, tree: &[Node], mut k: usize) {
        let v = self.heap[k];
        let mut j = k << 1;
        while j <= self.heap_len {
            if j < self.heap_len && smaller(tree, self.heap[j + 1], self.heap[j], &self.depth) {
                j += 1;
            }
            if smaller(tree, v, self.heap[j], &self.depth) {
                break;
            }
            self.heap[k] = self.heap[j];
            k = j;
            j <<= 1;
        }
        self.heap[k] = v;
    }

    /// Builds one tree from the frequencies in `tree`, sets lengths and codes, adds to
    /// `opt_len`/`static_len`, and returns the largest code with a non-zero frequency.
    fn build_tree(&mut self, tree: &mut [Node], desc: &Desc) -> usize {
        self.heap_len = 0;
        self.heap_max = HEAP_SIZE;
        let mut max_code: isize = -1;
        for (n, node) in tree.iter_mut().enumerate().take(desc.elems) {
            if node.freq != 0 {
                self.heap_len += 1;
                self.heap[self.heap_len] = n;
                max_code = n as isize;
                self.depth[n] = 0;
            } else {
                node.len = 0;
            }
        }
        // The format wants at least one distance code and at least one bit per code: force two
        // codes of non-zero frequency (codes 0 and 1 have no extra bits).
        while self.heap_len < 2 {
            let node = if max_code < 2 {
                max_code += 1;
                max_code as usize
            } else {
                0
            };
            self.heap_len += 1;
            self.heap[self.heap_len] = node;
            tree[node].freq = 1;
            self.depth[node] = 0;
            self.opt_len -= 1;
            if let Some(st) = desc.stree {
                self.static_len -= i64::from(st[node].len);
            }
        }
        let max_code = max_code as usize;
        for n in (1..=self.heap_len / 2).rev() {
            self.pqdownheap(tree, n);
        }
        let mut node = desc.elems;
        loop {
            let n = self.heap[1];
            self.heap[1] = self.heap[self.heap_len];
            self.heap_len -= 1;
            self.pqdownheap(tree, 1);
            let m = self.heap[1];
            self.heap_max -= 1;
            self.heap[self.heap_max] = n;
            self.heap_max -= 1;
            self.heap[self.heap_max] = m;
            tree[node].freq = tree[n].freq + tree[m].freq;
            self.depth[node] = self.depth[n].max(self.depth[m]).wrapping_add(1);
            tree[n].dad = node as u16;
            tree[m].dad = node as u16;
            self.heap[1] = node;
            node += 1;
            self.pqdownheap(tree, 1);
            if self.heap_len < 2 {
                break;
            }
        }
        self.heap_max -= 1;
        self.heap[self.heap_max] = self.heap[1];
        self.gen_bitlen(tree, max_code, desc);
        let bl_count = self.bl_count;
        let lens: Vec<usize> = tree[..=max_code].iter().map(|n| usize::from(n.len)).collect();
        gen_codes(lens.into_iter(), &bl_count, |n, c| tree[n].code = c);
        max_code
    }

    /// Bit lengths from the tree shape, limited to `max_length` by zlib's (and gzip's) fix-up:
    /// overflowing leaves are moved next to a shallower leaf, then lengths are handed out again
    /// in increasing frequency order.
    fn gen_bitlen(&mut self, tree: &mut [Node], max_code: usize, desc: &Desc) {
        self.bl_count = [0; MAX_BITS + 1];
        let root = self.heap[self.heap_max];
        tree[root].len = 0;
        let mut overflow = 0i32;
        for h in self.heap_max + 1..HEAP_SIZE {
            let n = self.heap[h];
            let mut bits = usize::from(tree[usize::from(tree[n].dad)].len) + 1;
            if bits > desc.max_length {
                bits = desc.max_length;
                overflow += 1;
            }
            tree[n].len = bits as u16;
            if n > max_code {
                continue;
            }
            self.bl_count[bits] += 1;
            let xbits = if n >= desc.extra_base { usize::from(desc.extra[n - desc.extra_base]) } else { 0 };
            let f = i64::from(tree[n].freq);
            self.opt_len += f * (bits + xbits) as i64;
            if let Some(st) = desc.stree {
                self.static_len += f * (usize::from(st[n].len) + xbits) as i64;
            }
        }
        if overflow == 0 {
            return;
        }
        while overflow > 0 {
            let mut bits = desc.max_length - 1;
            while bits > 0 && self.bl_count[bits] == 0 {
                bits -= 1;
            }
            self.bl_count[bits] = self.bl_count[bits].wrapping_sub(1);
            self.bl_count[bits + 1] += 2;
            self.bl_count[desc.max_length] = self.bl_count[desc.max_length].wrapping_sub(1);
            overflow -= 2;
        }
        let mut h = HEAP_SIZE;
        for bits in (1..=desc.max_length).rev() {
            let mut n = self.bl_count[bits];
            while n != 0 && h > 0 {
                h -= 1;
                let m = self.heap[h];
                if m > max_code {
                    continue;
                }
                if usize::from(tree[m].len) != bits {
                    self.opt_len += (bits as i64 - i64::from(tree[m].len)) * i64::from(tree[m].freq);
                    tree[m].len = bits as u16;
                }
                n -= 1;
            }
        }
    }
}

/// Walks a tree's code lengths as run-length groups (RFC 1951 §3.2.7), split exactly as zlib's
/// `scan_tree`/`send_tree` split them; one walk serves both counting and sending.
fn walk_tree(tree: &[Node], max_code: usize, mut emit: impl FnMut(Run)) {
    let mut prevlen: i32 = -1;
    let mut nextlen = i32::from(tree[0].len);
    let mut count = 0usize;
    let (mut max_count, mut min_count) = if nextlen == 0 { (138, 3) } else { (7, 4) };
    for n in 0..=max_code {
        let curlen = nextlen;
        // The guard past max_code never equals a real length.
        nextlen = if n < max_code { i32::from(tree[n + 1].len) } else { -1 };
        count += 1;
        if count < max_count && curlen == nextlen {
            continue;
        } else if count < min_count {
            emit(Run::Lens(curlen as usize, count));
        } else if curlen != 0 {
            emit(Run::Repeat(curlen as usize, count, curlen != prevlen));
        } else if count <= 10 {
            emit(Run::Zeros3(count));
        } else {
            emit(Run::Zeros11(count));
        }
        count = 0;
        prevlen = curlen;
        if nextlen == 0 {
            (max_count, min_count) = (138, 3);
        } else if curlen == nextlen {
            (max_count, min_count) = (6, 3);
        } else {
            (max_count, min_count) = (7, 4);
        }
    }
}

enum Run {
    /// `count` copies of the length sent one by one.
    Lens(usize, usize),
    /// A non-zero length repeated `count` times: sent once first if `new`, then code 16.
    Repeat(usize, usize, bool),
    /// 3..=10 zeros (code 17).
    Zeros3(usize),
    /// 11..=138 zeros (code 18).
    Zeros11(usize),
}

/// The symbols of the current block and its trees.
struct Trees {
    t: &'static Tables,
    flavor: Flavor,
    level: u8,
    ltree: Vec<Node>,
    dtree: Vec<Node>,
    bltree: Vec<Node>,
    b: Builder,
    lits: Vec<u8>,
    dists: Vec<u16>,
    /// Symbols buffered in this block.
    sym_next: usize,
    /// Matches among them.
    matches: usize,
    /// A block ends when this many symbols are buffered (zlib memLevel 8: lit_bufsize - 1;
    /// gzip: LIT_BUFSIZE - 1).
    sym_end: usize,
}

impl Trees {
    fn new(flavor: Flavor, level: u8) -> Self {
        let sym_end = match flavor {
            Flavor::Zlib => (1 << 14) - 1,
            Flavor::Gzip => (1 << 15) - 1,
        };
        let mut t = Trees {
            t: tables(),
            flavor,
            level,
            ltree: vec![Node::default(); HEAP_SIZE],
            dtree: vec![Node::default(); 2 * D_CODES + 1],
            bltree: vec![Node::default(); 2 * BL_CODES + 1],
            b: Builder {
                heap: [0; HEAP_SIZE],
                heap_len: 0,
                heap_max: 0,
                depth: [0; HEAP_SIZE],
                bl_count: [0; MAX_BITS + 1],
                opt_len: 0,
                static_len: 0,
            },
            lits: vec![0; sym_end],
            dists: vec![0; sym_end],
            sym_next: 0,
            matches: 0,
            sym_end,
        };
        t.init_block();
        t
    }

    fn init_block(&mut self) {
        for n in self.ltree.iter_mut().take(L_CODES) {
            n.freq = 0;
        }
        for n in self.dtree.iter_mut().take(D_CODES) {
            n.freq = 0;
        }
        for n in self.bltree.iter_mut().take(BL_CODES) {
            n.freq = 0;
        }
        self.ltree[END_BLOCK].freq = 1;
        self.b.opt_len = 0;
        self.b.static_len = 0;
        self.sym_next = 0;
        self.matches = 0;
    }

    /// Records a literal (`dist == 0`, `lc` the byte) or a match (`lc` = length - 3). Returns
    /// whether the block must end here. `strstart`/`block_start` feed gzip's truncation check.
    fn tally(&mut self, dist: usize, lc: usize, strstart: usize, block_start: i64) -> bool {
        if self.sym_next >= self.sym_end {
            return true; // unreachable: the caller flushes at sym_end
        }
        self.lits[self.sym_next] = lc as u8;
        self.dists[self.sym_next] = dist as u16;
        self.sym_next += 1;
        if dist == 0 {
            self.ltree[lc & 0xff].freq += 1;
        } else {
            self.matches += 1;
            let code = usize::from(self.t.length_code[lc & 0xff]);
            self.ltree[code + LITERALS + 1].freq += 1;
            self.dtree[d_code(self.t, dist - 1)].freq += 1;
        }
        if self.flavor == Flavor::Gzip && self.level > 2 && self.sym_next & 0xfff == 0 {
            // Upper bound of the compressed length: 8 bits a symbol plus 5 + extra per distance.
            let mut out_length = self.sym_next as u64 * 8;
            for (d, node) in self.dtree.iter().take(D_CODES).enumerate() {
                out_length += u64::from(node.freq) * (5 + u64::from(EXTRA_DBITS[d]));
            }
            out_length >>= 3;
            let in_length = (strstart as i64 - block_start).max(0) as u64;
            if self.matches < self.sym_next / 2 && out_length < in_length / 2 {
                return true;
            }
        }
        self.sym_next == self.sym_end
    }

    fn build_bl_tree(&mut self, l_max: usize, d_max: usize) -> usize {
        for (tree, max) in [(&self.ltree, l_max), (&self.dtree, d_max)] {
            walk_tree(tree, max, |run| match run {
                Run::Lens(len, count) => self.bltree[len].freq += count as u32,
                Run::Repeat(len, _, new) => {
                    if new {
                        self.bltree[len].freq += 1;
                    }
                    self.bltree[REP_3_6].freq += 1;
                }
                Run::Zeros3(_) => self.bltree[REPZ_3_10].freq += 1,
                Run::Zeros11(_) => self.bltree[REPZ_11_138].freq += 1,
            });
        }
        let desc = Desc { stree: None, extra: &EXTRA_BLBITS, extra_base: 0, elems: BL_CODES, max_length: MAX_BL_BITS };
        self.b.build_tree(&mut self.bltree, &desc);
        // At least 4 code-length codes are sent.
        let mut max_blindex = BL_CODES - 1;
        while max_blindex >= 3 && self.bltree[BL_ORDER[max_blindex]].len == 0 {
            max_blindex -= 1;
        }
        self.b.opt_len += 3 * (max_blindex as i64 + 1) + 5 + 5 + 4;
        max_blindex
    }

    fn send_tree(out: &mut BitWriter, tree: &[Node], max_code: usize, bl: &[Node]) {
        let code = |s: usize| Code { code: bl[s].code, len: bl[s].len };
        walk_tree(tree, max_code, |run| match run {
            Run::Lens(len, count) => {
                for _ in 0..count {
                    out.send_code(code(len));
                }
            }
            Run::Repeat(len, mut count, new) => {
                if new {
                    out.send_code(code(len));
                    count -= 1;
                }
                out.send_code(code(REP_3_6));
                out.send(count.saturating_sub(3) as u32, 2);
            }
            Run::Zeros3(count) => {
                out.send_code(code(REPZ_3_10));
                out.send(count.saturating_sub(3) as u32, 3);
            }
            Run::Zeros11(count) => {
                out.send_code(code(REPZ_11_138));
                out.send(count.saturating_sub(11) as u32, 7);
            }
        });
    }

    fn compress_block(&self, out: &mut BitWriter, ltree: &[Code], dtree: &[Code]) {
        let t = self.t;
        for i in 0..self.sym_next {
            let lc = usize::from(self.lits[i]);
            let dist = usize::from(self.dists[i]);
            if dist == 0 {
                out.send_code(ltree[lc]);
            } else {
                let code = usize::from(t.length_code[lc]);
                out.send_code(ltree[code + LITERALS + 1]);
                let extra = u32::from(EXTRA_LBITS[code]);
                if extra != 0 {
                    out.send((lc - usize::from(t.base_length[code])) as u32, extra);
                }
                let dist = dist - 1;
                let code = d_code(t, dist);
                out.send_code(dtree[code]);
                let extra = u32::from(EXTRA_DBITS[code]);
                if extra != 0 {
                    out.send((dist - usize::from(t.base_dist[code])) as u32, extra);
                }
            }
        }
        out.send_code(ltree[END_BLOCK]);
    }

    /// Ends the block: stored, static or dynamic, whichever zlib/gzip would pick.
    fn flush_block(&mut self, buf: Option<&[u8]>, stored_len: usize, last: bool, out: &mut BitWriter) {
        let t = self.t;
        let l_desc = Desc {
            stree: Some(&t.static_ltree[..]),
            extra: &EXTRA_LBITS,
            extra_base: LITERALS + 1,
            elems: L_CODES,
            max_length: MAX_BITS,
        };
        let d_desc = Desc {
            stree: Some(&t.static_dtree[..]),
            extra: &EXTRA_DBITS,
            extra_base: 0,
            elems: D_CODES,
            max_length: MAX_BITS,
        };
        let l_max = self.b.build_tree(&mut self.ltree, &l_desc);
        let d_max = self.b.build_tree(&mut self.dtree, &d_desc);
        let max_blindex = self.build_bl_tree(l_max, d_max);
        let mut opt_lenb = (self.b.opt_len + 3 + 7) >> 3;
        let static_lenb = (self.b.static_len + 3 + 7) >> 3;
        if static_lenb <= opt_lenb {
            opt_lenb = static_lenb;
        }
        match buf {
            Some(buf) if stored_len as i64 + 4 <= opt_lenb => {
                out.send(u32::from(last), 3);
                out.windup();
                let len = stored_len as u16;
                out.bytes.extend_from_slice(&len.to_le_bytes());
                out.bytes.extend_from_slice(&(!len).to_le_bytes());
                out.bytes.extend_from_slice(buf);
            }
            _ if static_lenb == opt_lenb => {
                out.send((1 << 1) + u32::from(last), 3);
                self.compress_block(out, &t.static_ltree, &t.static_dtree);
            }
            _ => {
                out.send((2 << 1) + u32::from(last), 3);
                out.send((l_max + 1 - 257) as u32, 5);
                out.send(d_max as u32, 5);
                out.send((max_blindex + 1 - 4) as u32, 4);
                for &s in BL_ORDER.iter().take(max_blindex + 1) {
                    out.send(u32::from(self.bltree[s].len), 3);
                }
                Self::send_tree(out, &self.ltree, l_max, &self.bltree);
                Self::send_tree(out, &self.dtree, d_max, &self.bltree);
                let lcodes: Vec<Code> =
                    self.ltree[..L_CODES].iter().map(|n| Code { code: n.code, len: n.len }).collect();
                let dcodes: Vec<Code> =
                    self.dtree[..D_CODES].iter().map(|n| Code { code: n.code, len: n.len }).collect();
                self.compress_block(out, &lcodes, &dcodes);
            }
        }
        self.init_block();
        if last {
            out.windup();
        }
    }
}

/// Why the compress loop stopped.
#[derive(PartialEq, Eq)]
enum Status {
    NeedMore,
    Done,
}

/// The match finder and its window.
struct Deflater {
    flavor: Flavor,
    greedy: bool,
    good_match: usize,
    max_lazy: usize,
    nice_match: usize,
    max_chain: usize,
    window: Vec<u8>,
    head: Vec<u16>,
    prev: Vec<u16>,
    ins_h: usize,
    strstart: usize,
    /// Window position where the current block starts; negative once slid out of the window.
    block_start: i64,
    lookahead: usize,
    match_length: usize,
    match_start: usize,
    prev_length: usize,
    prev_match: usize,
    match_available: bool,
    /// gzip: a read returned end of file; no more window slides from here on.
    eofile: bool,
    /// gzip: the rolling hash was seeded from the first two bytes.
    hash_started: bool,
    trees: Trees,
    out: BitWriter,
}

impl Deflater {
    fn new(flavor: Flavor, level: u8) -> Result<Self, InvalidLevel> {
        if !(1..=9).contains(&level) {
            return Err(InvalidLevel(level));
        }
        let (good, lazy, nice, chain) = CONFIG[usize::from(level)];
        Ok(Deflater {
            flavor,
            greedy: level <= 3,
            good_match: good,
            max_lazy: lazy,
            nice_match: nice,
            max_chain: chain,
            window: vec![0; WINDOW_SIZE + WINDOW_PAD],
            head: vec![0; HASH_SIZE],
            prev: vec![0; WSIZE],
            ins_h: 0,
            strstart: 0,
            block_start: 0,
            lookahead: 0,
            match_length: MIN_MATCH - 1,
            match_start: 0,
            prev_length: MIN_MATCH - 1,
            prev_match: 0,
            match_available: false,
            eofile: false,
            hash_started: false,
            trees: Trees::new(flavor, level),
            out: BitWriter::default(),
        })
    }

    fn update_hash(h: usize, c: u8) -> usize {
        ((h << H_SHIFT) ^ usize::from(c)) & HASH_MASK
    }

    /// Inserts the string at `pos` and returns the previous head of its chain.
    fn insert_string(&mut self, pos: usize) -> usize {
        self.ins_h = Self::update_hash(self.ins_h, self.window[pos + MIN_MATCH - 1]);
        let head = self.head[self.ins_h];
        self.prev[pos & WMASK] = head;
        self.head[self.ins_h] = pos as u16;
        usize::from(head)
    }

    /// Moves the upper half of the window down (the whole half, as gzip does: the bytes past
    /// the input's end stay what gzip would have there) and rebases every position.
    fn slide(&mut self) {
        self.window.copy_within(WSIZE..WINDOW_SIZE, 0);
        self.match_start = self.match_start.wrapping_sub(WSIZE);
        self.strstart -= WSIZE;
        self.block_start -= WSIZE as i64;
        for p in self.head.iter_mut().chain(self.prev.iter_mut()) {
            let m = usize::from(*p);
            *p = if m >= WSIZE { (m - WSIZE) as u16 } else { NIL as u16 };
        }
    }

    fn read(&mut self, input: &mut &[u8], more: usize) -> usize {
        let n = more.min(input.len());
        let at = self.strstart + self.lookahead;
        self.window[at..at + n].copy_from_slice(&input[..n]);
        *input = &input[n..];
        self.lookahead += n;
        n
    }

    /// zlib's window refill: slide whenever the position passed `WSIZE + MAX_DIST`, even while
    /// draining the last bytes, and re-seed the rolling hash (equal to the rolled value).
    fn fill_zlib(&mut self, input: &mut &[u8]) {
        loop {
            let mut more = WINDOW_SIZE - self.lookahead - self.strstart;
            if self.strstart >= WSIZE + MAX_DIST {
                self.slide();
                more += WSIZE;
            }
            if input.is_empty() {
                break;
            }
            self.read(input, more);
            if self.lookahead >= MIN_MATCH {
                let s = self.strstart;
                self.ins_h = Self::update_hash(usize::from(self.window[s]), self.window[s + 1]);
            }
            if self.lookahead >= MIN_LOOKAHEAD || input.is_empty() {
                break;
            }
        }
    }

    /// gzip's window refill. Returns false when it needs input that has not arrived yet.
    fn fill_gzip(&mut self, input: &mut &[u8], finishing: bool) -> bool {
        let mut more = WINDOW_SIZE - self.lookahead - self.strstart;
        if self.strstart >= WSIZE + MAX_DIST {
            self.slide();
            more += WSIZE;
        }
        if input.is_empty() {
            if !finishing {
                return false;
            }
            self.eofile = true;
            // gzip zeroes MIN_MATCH - 1 bytes past the end so they do not pollute hashes.
            let at = self.strstart + self.lookahead;
            self.window[at..at + MIN_MATCH - 1].fill(0);
            return true;
        }
        self.read(input, more);
        true
    }

    /// The longest match at `strstart` along the chain from `cur_match`, longer than
    /// `prev_length`; sets `match_start`. zlib caps the result (and the nice length) at the
    /// lookahead; gzip's caller caps it afterwards.
    fn longest_match(&mut self, mut cur_match: usize) -> usize {
        let mut chain_length = self.max_chain;
        let scan = self.strstart;
        let mut best_len = self.prev_length;
        let mut nice_match = self.nice_match;
        let limit = if self.strstart > MAX_DIST { self.strstart - MAX_DIST } else { NIL };
        if self.prev_length >= self.good_match {
            chain_length >>= 2;
        }
        if self.flavor == Flavor::Zlib && nice_match > self.lookahead {
            nice_match = self.lookahead;
        }
        let w = &self.window;
        if best_len == 0 || scan + MAX_MATCH > w.len() {
            return best_len; // unreachable: prev_length >= 1 and strstart <= WINDOW_SIZE - 262
        }
        // The two bytes ending the best match so far and the first two at `scan`, compared as
        // words: a candidate must match both pairs before its length is measured (as zlib's
        // `UNALIGNED_OK` variant does; the same candidates pass as byte by byte).
        let pair = |i: usize| u16::from_ne_bytes([w[i], w[i + 1]]);
        let scan_start = pair(scan);
        let mut scan_end = pair(scan + best_len - 1);
        let prev = &self.prev;
        loop {
            let m = cur_match;
            if pair(m + best_len - 1) == scan_end && pair(m) == scan_start {
                // Byte 2 is equal too: same hash and same first two bytes (HASH_BITS >= 8).
                let len = 3 + common_prefix(&w[m + 3..m + MAX_MATCH], &w[scan + 3..scan + MAX_MATCH]);
                if len > best_len {
                    self.match_start = m;
                    best_len = len;
                    if len >= nice_match {
                        break;
                    }
                    scan_end = pair(scan + best_len - 1);
                }
            }
            cur_match = usize::from(prev[m & WMASK]);
            if cur_match <= limit {
                break;
            }
            chain_length -= 1;
            if chain_length == 0 {
                break;
            }
        }
        match self.flavor {
            Flavor::Zlib => best_len.min(self.lookahead),
            Flavor::Gzip => best_len,
        }
    }

    /// Whether a match may be searched from `strstart` with chain head `hash_head`.
    fn can_search(&self, hash_head: usize) -> bool {
        hash_head != NIL
            && hash_head < self.strstart
            && self.strstart - hash_head <= MAX_DIST
            && (self.flavor == Flavor::Zlib || self.strstart <= WINDOW_SIZE - MIN_LOOKAHEAD)
    }

    fn search(&mut self, hash_head: usize) -> usize {
        let len = self.longest_match(hash_head);
        len.min(self.lookahead)
    }

    fn flush_block(&mut self, last: bool) {
        let stored_len = (self.strstart as i64 - self.block_start).max(0) as usize;
        let buf = if self.block_start >= 0 {
            let start = self.block_start as usize;
            self.window.get(start..start + stored_len)
        } else {
            None
        };
        self.trees.flush_block(buf, stored_len, last, &mut self.out);
        self.block_start = self.strstart as i64;
    }

    fn tally(&mut self, dist: usize, lc: usize) -> bool {
        self.trees.tally(dist, lc, self.strstart, self.block_start)
    }

    /// Inserts the string at `strstart` when the flavour would: zlib only with three bytes of
    /// lookahead, gzip always.
    fn insert_current(&mut self) -> usize {
        if self.flavor == Flavor::Gzip || self.lookahead >= MIN_MATCH {
            self.insert_string(self.strstart)
        } else {
            NIL
        }
    }

    /// One step of greedy matching (levels 1–3).
    fn step_fast(&mut self) {
        let hash_head = self.insert_current();
        if self.can_search(hash_head) {
            self.match_length = self.search(hash_head);
        }
        let bflush;
        if self.match_length >= MIN_MATCH {
            bflush = self.tally(self.strstart - self.match_start, self.match_length - MIN_MATCH);
            self.lookahead -= self.match_length;
            // `max_lazy` is the insert limit here: long matches are skipped over unhashed.
            if self.match_length <= self.max_lazy && (self.flavor == Flavor::Gzip || self.lookahead >= MIN_MATCH) {
                self.match_length -= 1;
                while self.match_length != 0 {
                    self.strstart += 1;
                    self.insert_string(self.strstart);
                    self.match_length -= 1;
                }
                self.strstart += 1;
            } else {
                self.strstart += self.match_length;
                self.match_length = 0;
                let s = self.strstart;
                self.ins_h = Self::update_hash(usize::from(self.window[s]), self.window[s + 1]);
            }
        } else {
            bflush = self.tally(0, usize::from(self.window[self.strstart]));
            self.lookahead -= 1;
            self.strstart += 1;
        }
        if bflush {
            self.flush_block(false);
        }
    }

    /// One step of lazy matching (levels 4–9): a match is taken only if the next position has
    /// no longer one.
    fn step_slow(&mut self) {
        let hash_head = self.insert_current();
        self.prev_length = self.match_length;
        self.prev_match = self.match_start;
        self.match_length = MIN_MATCH - 1;
        if self.prev_length < self.max_lazy && self.can_search(hash_head) {
            self.match_length = self.search(hash_head);
            if self.match_length == MIN_MATCH && self.strstart - self.match_start > TOO_FAR {
                self.match_length = MIN_MATCH - 1;
            }
        }
        if self.prev_length >= MIN_MATCH && self.match_length <= self.prev_length {
            let max_insert = (self.strstart + self.lookahead).saturating_sub(MIN_MATCH);
            let bflush = self.tally(self.strstart - 1 - self.prev_match, self.prev_length - MIN_MATCH);
            self.lookahead -= self.prev_length - 1;
            self.prev_length -= 2;
            loop {
                self.strstart += 1;
                if self.flavor == Flavor::Gzip || self.strstart <= max_insert {
                    self.insert_string(self.strstart);
                }
                self.prev_length -= 1;
                if self.prev_length == 0 {
                    break;
                }
            }
            self.match_available = false;
            self.match_length = MIN_MATCH - 1;
            self.strstart += 1;
            if bflush {
                self.flush_block(false);
            }
        } else if self.match_available {
            let bflush = self.tally(0, usize::from(self.window[self.strstart - 1]));
            if bflush {
                self.flush_block(false);
            }
            self.strstart += 1;
            self.lookahead -= 1;
        } else {
            self.match_available = true;
            self.strstart += 1;
            self.lookahead -= 1;
        }
    }

    /// Consumes `input` until it is empty (then `NeedMore`) or, when `finishing`, to the end
    /// of the stream (then `Done`, with the last block written).
    fn run(&mut self, input: &mut &[u8], finishing: bool) -> Status {
        loop {
            match self.flavor {
                Flavor::Zlib => {
                    if self.lookahead < MIN_LOOKAHEAD {
                        self.fill_zlib(input);
                        if self.lookahead < MIN_LOOKAHEAD && !finishing {
                            return Status::NeedMore;
                        }
                        if self.lookahead == 0 {
                            break;
                        }
                    }
                }
                Flavor::Gzip => {
                    while self.lookahead < MIN_LOOKAHEAD && !self.eofile {
                        if !self.fill_gzip(input, finishing) {
                            return Status::NeedMore;
                        }
                    }
                    if self.lookahead == 0 {
                        break;
                    }
                    if !self.hash_started {
                        self.hash_started = true;
                        self.ins_h = Self::update_hash(usize::from(self.window[0]), self.window[1]);
                    }
                }
            }
            if self.greedy {
                self.step_fast();
            } else {
                self.step_slow();
            }
        }
        if self.match_available {
            self.tally(0, usize::from(self.window[self.strstart - 1]));
            self.match_available = false;
        }
        self.flush_block(true);
        Status::Done
    }
}

/// Streaming raw-deflate encoder: write the uncompressed bytes in any chunking (the output does
/// not depend on the chunking); [`Encoder::finish`] ends the stream and returns the inner writer.
///
/// Compressed bytes reach the inner writer as blocks complete. `flush` only flushes the inner
/// writer: a deflate sync flush would change the stream.
pub struct Encoder<W: Write> {
    inner: W,
    d: Box<Deflater>,
}

impl<W: Write> Encoder<W> {
    /// An encoder reproducing `flavor` at `level` (1..=9).
    pub fn new(inner: W, flavor: Flavor, level: u8) -> Result<Self, InvalidLevel> {
        Ok(Encoder { inner, d: Box::new(Deflater::new(flavor, level)?) })
    }

    fn drain(&mut self) -> io::Result<()> {
        if !self.d.out.bytes.is_empty() {
            self.inner.write_all(&self.d.out.bytes)?;
            self.d.out.bytes.clear();
        }
        Ok(())
    }

    /// Compresses what is left, writes the final block and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        let mut empty: &[u8] = &[];
        self.d.run(&mut empty, true);
        self.drain()?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut input = buf;
        while !input.is_empty() {
            self.d.run(&mut input, false);
            // Hand on finished blocks as they come so pending output stays one block at most.
            self.drain()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.drain()?;
        self.inner.flush()
    }
}

/// The whole raw deflate stream of `data`, as `flavor` at `level` would make it.
pub fn deflate(data: &[u8], flavor: Flavor, level: u8) -> Result<Vec<u8>, InvalidLevel> {
    let mut d = Deflater::new(flavor, level)?;
    let mut input = data;
    let mut out = Vec::new();
    while d.run(&mut input, true) != Status::Done {}
    out.append(&mut d.out.bytes);
    Ok(out)
}

fn crc_table() -> &'static [u32; 256] {
    static TABLE: OnceLock<[u32; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (n, e) in t.iter_mut().enumerate() {
            let mut c = n as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        t
    })
}

/// The length of the common prefix of `a` and `b` (at most the shorter one's), eight bytes at a
/// time. Public for the builder's bsdiff search, which measures matches the same way.
pub fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().unwrap_or_default());
        let y = u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let d = x ^ y;
        if d != 0 {
            return i + (d.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + a[i..n].iter().zip(&b[i..n]).take_while(|(x, y)| x == y).count()
}

/// CRC-32 (ISO-HDLC, the gzip trailer's), incremental: `crc32(crc32(0, a), b) == crc32(0, ab)`.
pub fn crc32(crc: u32, data: &[u8]) -> u32 {
    let t = crc_table();
    let mut c = !crc;
    for &b in data {
        c = t[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};

    type R<T> = Result<T, Box<dyn std::error::Error>>;

    /// A small deterministic generator (xorshift64*), so fixed cases need no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const WORDS: &[&str] = &[
        "the",
        "of",
        "and",
        "a",
        "to",
        "in",
        "is",
        "file",
        "you",
        "that",
        "it",
        "for",
        "was",
        "on",
        "are",
        "as",
        "with",
        "option",
        "manual",
        "page",
        "debian",
        "package",
        "changelog",
        "system",
        "directory",
        "user",
        "program",
        "version",
        "release",
        "upstream",
        "fix",
        "bug",
        "closes",
        "new",
        "\n",
        ".TP\n",
        ".B ",
        "\\fB",
        "\\fR",
        "--",
        "-v",
        "2019",
        "(urgency=medium)\n\n",
        "  * ",
        "\n -- Maintainer <m@example.org>  ",
    ];

    fn text(n: usize, seed: u64) -> Vec<u8> {
        let mut r = Rng(seed | 1);
        let mut v = Vec::with_capacity(n + 32);
        while v.len() < n {
            v.extend_from_slice(WORDS[r.below(WORDS.len())].as_bytes());
            v.push(if r.below(9) == 0 { b'\n' } else { b' ' });
        }
        v.truncate(n);
        v
    }

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut r = Rng(seed | 1);
        (0..n).map(|_| r.next() as u8).collect()
    }

    /// Lines from a template with a random byte or two changed: literal-heavy blocks full of
    /// long matches, the shape gzip's block-truncation check looks for.
    fn templated(n: usize, seed: u64) -> Vec<u8> {
        let mut r = Rng(seed | 1);
        let line = text(200, seed ^ 0x55);
        let mut v = Vec::with_capacity(n + 256);
        while v.len() < n {
            let mut l = line.clone();
            for _ in 0..r.below(3) {
                let i = r.below(l.len());
                l[i] = r.next() as u8;
            }
            v.extend_from_slice(&l);
        }
        v.truncate(n);
        v
    }

    /// Text, random and runs interleaved in chunks of varied size.
    fn mixed(n: usize, seed: u64) -> Vec<u8> {
        let mut r = Rng(seed | 1);
        let mut v = Vec::with_capacity(n + 4096);
        while v.len() < n {
            let k = 1 + r.below(3000);
            match r.below(4) {
                0 => v.extend(text(k, r.next())),
                1 => v.extend(random(k, r.next())),
                2 => v.resize(v.len() + k, r.next() as u8),
                _ => {
                    // Copy from far back: long distances, TOO_FAR, window edges.
                    if v.len() > k {
                        let s = r.below(v.len() - k);
                        let c = v[s..s + k].to_vec();
                        v.extend(c);
                    }
                }
            }
        }
        v.truncate(n);
        v
    }

    fn tmp_path() -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        std::env::temp_dir().join(format!("ferry-deflate-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
    }

    /// The deflate data of `gzip -c -n -<level> <file>` (10-byte header and 8-byte trailer off).
    fn gzip_oracle(path: &Path, level: u8) -> R<Vec<u8>> {
        let out = Command::new("gzip").arg("-c").arg("-n").arg(format!("-{level}")).arg(path).output()?;
        if !out.status.success() || out.stdout.len() < 18 {
            return Err(format!("gzip -{level} failed: {:?}", out.status).into());
        }
        let s = out.stdout;
        Ok(s[10..s.len() - 8].to_vec())
    }

    const ZLIB_PY: &str = "import sys, zlib, struct\n\
        d = sys.stdin.buffer.read()\n\
        for l in range(1, 10):\n\
        \x20   c = zlib.compressobj(l, zlib.DEFLATED, -15, 8, 0)\n\
        \x20   z = c.compress(d) + c.flush()\n\
        \x20   sys.stdout.buffer.write(struct.pack('<I', len(z)) + z)\n";

    /// Python zlib's raw deflate of `data` at levels 1..=9.
    fn zlib_oracle(data: &[u8]) -> R<Vec<Vec<u8>>> {
        let mut child =
            Command::new("python3").arg("-c").arg(ZLIB_PY).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        let data = data.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&data));
        let out = child.wait_with_output()?;
        feeder.join().map_err(|_| "feeder panicked")??;
        let mut s = &out.stdout[..];
        let mut v = Vec::new();
        while s.len() >= 4 {
            let n = u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize;
            v.push(s.get(4..4 + n).ok_or("short python output")?.to_vec());
            s = &s[4 + n..];
        }
        if v.len() != 9 {
            return Err("python3 zlib oracle failed".into());
        }
        Ok(v)
    }

    fn first_diff(a: &[u8], b: &[u8]) -> usize {
        a.iter().zip(b).take_while(|(x, y)| x == y).count()
    }

    /// Compares both flavours at every level with the oracles; returns the mismatches.
    fn mismatches(data: &[u8]) -> R<Vec<String>> {
        let mut bad = Vec::new();
        let path = tmp_path();
        std::fs::write(&path, data)?;
        let zl = zlib_oracle(data);
        for level in 1..=9u8 {
            let g = gzip_oracle(&path, level);
            let ours = deflate(data, Flavor::Gzip, level)?;
            let g = match g {
                Ok(g) => g,
                Err(e) => {
                    let _ = std::fs::remove_file(&path);
                    return Err(e);
                }
            };
            if ours != g {
                bad.push(format!(
                    "gzip -{level}: ours {} bytes, gzip {} bytes, first diff at {}",
                    ours.len(),
                    g.len(),
                    first_diff(&ours, &g)
                ));
            }
        }
        let _ = std::fs::remove_file(&path);
        for (i, z) in zl?.iter().enumerate() {
            let level = i as u8 + 1;
            let ours = deflate(data, Flavor::Zlib, level)?;
            if &ours != z {
                bad.push(format!(
                    "zlib {level}: ours {} bytes, zlib {} bytes, first diff at {}",
                    ours.len(),
                    z.len(),
                    first_diff(&ours, z)
                ));
            }
        }
        Ok(bad)
    }

    fn check(name: &str, data: &[u8]) -> R<()> {
        let bad = mismatches(data)?;
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("{name} ({} bytes):\n  {}", data.len(), bad.join("\n  ")).into())
        }
    }

    #[test]
    fn crc32_vectors() {
        assert_eq!(crc32(0, b""), 0);
        assert_eq!(crc32(0, b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(0, b"The quick brown fox jumps over the lazy dog"), 0x414f_a339);
        assert_eq!(crc32(0, &[0u8; 32]), 0x190a_55ad);
        assert_eq!(crc32(crc32(0, b"1234"), b"56789"), 0xcbf4_3926);
    }

    #[test]
    fn invalid_levels() {
        assert_eq!(deflate(b"x", Flavor::Gzip, 0), Err(InvalidLevel(0)));
        assert!(Encoder::new(Vec::new(), Flavor::Zlib, 10).is_err());
    }

    #[test]
    fn small_fixed_cases() -> R<()> {
        let mut cases: Vec<(String, Vec<u8>)> = vec![
            ("empty".into(), vec![]),
            ("one byte".into(), b"a".to_vec()),
            ("two bytes".into(), b"ab".to_vec()),
            ("three same".into(), b"aaa".to_vec()),
            ("hello".into(), b"hello, hello, hello world\n".to_vec()),
            ("zeros 1000".into(), vec![0; 1000]),
            ("abc run".into(), b"abc".repeat(700)),
        ];
        for (n, seed) in [(100, 1), (3000, 2), (20_000, 3)] {
            cases.push((format!("text {n}"), text(n, seed)));
            cases.push((format!("random {n}"), random(n, seed)));
            cases.push((format!("mixed {n}"), mixed(n, seed)));
        }
        let mut errors = Vec::new();
        for (name, data) in &cases {
            if let Err(e) = check(name, data) {
                errors.push(e.to_string());
            }
        }
        assert!(errors.is_empty(), "{}", errors.join("\n"));
        Ok(())
    }

    /// Sizes around the window (32 KiB, 64 KiB, `WINDOW_SIZE - MIN_LOOKAHEAD`) and the symbol
    /// buffers, for the shapes that end blocks and slides differently in gzip and zlib.
    fn boundary_cases(big: bool) -> Vec<(String, Vec<u8>)> {
        let mut cases = Vec::new();
        let sizes: &[usize] = &[
            32_767, 32_768, 32_769, 65_274, 65_275, 65_279, 65_280, 65_400, 65_535, 65_536, 65_537, 65_800, 98_304,
            98_306,
        ];
        for (i, &n) in sizes.iter().enumerate() {
            let seed = i as u64 + 10;
            cases.push((format!("text {n}"), text(n, seed)));
            cases.push((format!("mixed {n}"), mixed(n, seed)));
            if big {
                cases.push((format!("templated {n}"), templated(n, seed)));
                cases.push((format!("random {n}"), random(n, seed)));
                cases.push((format!("zeros {n}"), vec![0; n]));
            }
        }
        cases
    }

    fn run_cases(cases: &[(String, Vec<u8>)]) {
        let mut errors = Vec::new();
        for (name, data) in cases {
            if let Err(e) = check(name, data) {
                errors.push(e.to_string());
            }
        }
        assert!(errors.is_empty(), "{} of {} cases differ:\n{}", errors.len(), cases.len(), errors.join("\n"));
    }

    #[test]
    #[ignore = "large sweep; run with --release -- --ignored"]
    fn sweep_large() {
        let mut cases = boundary_cases(true);
        for (i, &n) in [300_000usize, 1_100_000, 3_000_000].iter().enumerate() {
            let seed = 100 + i as u64;
            cases.push((format!("text {n}"), text(n, seed)));
            cases.push((format!("mixed {n}"), mixed(n, seed)));
            cases.push((format!("templated {n}"), templated(n, seed)));
            cases.push((format!("random {n}"), random(n, seed)));
        }
        cases.push(("zeros 2M".into(), vec![0; 2_000_000]));
        run_cases(&cases);
    }

    /// The deflate data of a single-member gzip file and its XFL byte, or None if the file is
    /// not one (bad magic, multiple members, trailing bytes are left to the caller's compare).
    fn gzip_members(gz: &[u8]) -> Option<(u8, &[u8])> {
        if gz.len() < 18 || gz[0] != 0x1f || gz[1] != 0x8b || gz[2] != 8 {
            return None;
        }
        let flags = gz[3];
        let mut at = 10usize;
        if flags & 4 != 0 {
            let xlen = usize::from(u16::from_le_bytes([*gz.get(10)?, *gz.get(11)?]));
            at += 2 + xlen;
        }
        for bit in [8u8, 16] {
            if flags & bit != 0 {
                at += gz.get(at..)?.iter().position(|&b| b == 0)? + 1;
            }
        }
        if flags & 2 != 0 {
            at += 2;
        }
        Some((gz[8], gz.get(at..gz.len().checked_sub(8)?)?))
    }

    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                walk(&e.path(), out);
            } else if ft.is_file() && e.path().extension().is_some_and(|x| x == "gz") {
                out.push(e.path());
            }
        }
    }

    /// Re-creates every `.gz` under /usr/share/man and /usr/share/doc from its decompressed
    /// bytes and counts the bit-identical ones.
    #[test]
    #[ignore = "walks the system's .gz files; run with --release -- --ignored --nocapture"]
    fn reproduce_system_gz_files() -> R<()> {
        let mut files = Vec::new();
        walk(Path::new("/usr/share/man"), &mut files);
        walk(Path::new("/usr/share/doc"), &mut files);
        files.sort();
        let (mut at_xfl, mut other_level, mut zlib, mut none, mut skipped) = (0, 0, 0, 0, 0);
        let mut examples: Vec<String> = Vec::new();
        for f in &files {
            let gz = std::fs::read(f)?;
            let Some((xfl, stream)) = gzip_members(&gz) else {
                skipped += 1;
                continue;
            };
            let out = Command::new("gzip").arg("-dc").arg(f).output()?;
            if !out.status.success() {
                skipped += 1;
                continue;
            }
            let data = out.stdout;
            let first: &[u8] = match xfl {
                2 => &[9],
                4 => &[1],
                _ => &[6, 2, 3, 4, 5, 7, 8],
            };
            if first.iter().any(|&l| deflate(&data, Flavor::Gzip, l).is_ok_and(|d| d == stream)) {
                at_xfl += 1;
                continue;
            }
            if (1..=9u8).any(|l| deflate(&data, Flavor::Gzip, l).is_ok_and(|d| d == stream)) {
                other_level += 1;
                continue;
            }
            if (1..=9u8).any(|l| deflate(&data, Flavor::Zlib, l).is_ok_and(|d| d == stream)) {
                zlib += 1;
                continue;
            }
            none += 1;
            if examples.len() < 20 {
                let ours = deflate(&data, Flavor::Gzip, 9)?;
                examples.push(format!(
                    "{} xfl {xfl} raw {} gz {} ours(9) {} first diff {}",
                    f.display(),
                    data.len(),
                    stream.len(),
                    ours.len(),
                    first_diff(&ours, stream)
                ));
            }
        }
        println!(
            "{} .gz files: {at_xfl} reproduced at the XFL level, {other_level} at another gzip level, \
             {zlib} only as zlib, {none} not reproduced, {skipped} skipped (not single-member gzip)",
            files.len()
        );
        for e in &examples {
            println!("  {e}");
        }
        Ok(())
    }

    /// Window and block boundaries at modest sizes (the full set runs in `sweep_large`).
    #[test]
    fn boundary_sizes() {
        run_cases(&boundary_cases(false));
    }

    /// One input that slides the window many times and fills several blocks of both kinds.
    #[test]
    fn slides_and_truncation() {
        run_cases(&[("templated 300000".into(), templated(300_000, 7)), ("mixed 400000".into(), mixed(400_000, 8))]);
    }

    fn encode_chunked(data: &[u8], flavor: Flavor, level: u8, chunks: &[usize]) -> R<Vec<u8>> {
        let mut e = Encoder::new(Vec::new(), flavor, level)?;
        let mut rest = data;
        let mut i = 0;
        while !rest.is_empty() {
            let n = chunks.get(i % chunks.len().max(1)).copied().unwrap_or(4096).clamp(1, rest.len());
            e.write_all(&rest[..n])?;
            rest = &rest[n..];
            i += 1;
        }
        Ok(e.finish()?)
    }

    #[test]
    fn byte_at_a_time() -> R<()> {
        let data = mixed(70_000, 5);
        for flavor in [Flavor::Gzip, Flavor::Zlib] {
            assert_eq!(encode_chunked(&data, flavor, 6, &[1])?, deflate(&data, flavor, 6)?);
        }
        Ok(())
    }

    fn arb_data() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(0u8..4, 0..4000),
            proptest::collection::vec(any::<u8>(), 0..2000),
            (0usize..6, 0usize..140_000, any::<u64>()).prop_map(|(kind, n, seed)| match kind {
                0 => text(n, seed),
                1 => mixed(n, seed),
                2 => templated(n, seed),
                3 => random(n / 8, seed),
                4 => vec![(seed & 0xff) as u8; n],
                _ => text(n % 5000, seed).repeat(1 + n / 5000),
            }),
        ]
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn prop_matches_oracles(data in arb_data()) {
            let bad = mismatches(&data).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(bad.is_empty(), "{}", bad.join("\n"));
        }

        #[test]
        fn prop_chunking_is_irrelevant(data in arb_data(), level in 1u8..=9, gzip in any::<bool>(),
                                       chunks in proptest::collection::vec(1usize..70_000, 1..6)) {
            let flavor = if gzip { Flavor::Gzip } else { Flavor::Zlib };
            let whole = deflate(&data, flavor, level).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let chunked = encode_chunked(&data, flavor, level, &chunks).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(whole == chunked);
        }
    }

    /// gzip searches on past the end of the input (its nice length is not capped there) into
    /// two zero bytes and then whatever the window held before the last slide. This input ends
    /// with a string seen twice before: followed once by zeros (the better continuation if the
    /// window were clean) and once by exactly the stale bytes gzip has past the end.
    #[test]
    fn stale_window_past_the_end() {
        let k = 1000;
        let len = WINDOW_SIZE + k;
        // Compressible, so that the last block is not stored and the match distance shows.
        let mut v = text(len, 99);
        // After one slide, window index j past the end still holds input byte j.
        let stale_at = WSIZE + k + MIN_MATCH - 1;
        let stale = v[stale_at..stale_at + 40].to_vec();
        let tail: Vec<u8> = b"QXZJ the very end of the input".to_vec();
        let (pb, pa) = (len - 20_000, len - 10_000);
        v[pb..pb + 30].copy_from_slice(&tail);
        v[pb + 30..pb + 32].fill(0);
        v[pb + 32..pb + 72].copy_from_slice(&stale);
        v[pa..pa + 30].copy_from_slice(&tail);
        v[pa + 30..pa + 72].fill(0);
        v[len - 30..].copy_from_slice(&tail);
        run_cases(&[("stale window".into(), v)]);
    }

    fn vm_hwm_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Encode speed on real text (the system's man pages, decompressed) and peak memory while
    /// streaming 1 GiB through an encoder in 4 KiB writes.
    #[test]
    #[ignore = "measurement; run with --release -- --ignored --nocapture"]
    fn speed_and_memory() -> R<()> {
        let mut files = Vec::new();
        walk(Path::new("/usr/share/man/man1"), &mut files);
        files.sort();
        let mut corpus = Vec::new();
        for f in files.iter().take(2000) {
            let out = Command::new("gzip").arg("-dc").arg(f).output()?;
            corpus.extend_from_slice(&out.stdout);
            if corpus.len() > 8 << 20 {
                break;
            }
        }
        for flavor in [Flavor::Gzip, Flavor::Zlib] {
            for level in [1u8, 6, 9] {
                let t = std::time::Instant::now();
                let z = deflate(&corpus, flavor, level)?;
                let secs = t.elapsed().as_secs_f64();
                println!(
                    "{flavor:?} -{level}: {:.1} MB text -> {:.2} MB, {:.1} MB/s",
                    corpus.len() as f64 / 1e6,
                    z.len() as f64 / 1e6,
                    corpus.len() as f64 / 1e6 / secs
                );
            }
        }
        let chunk = text(4096, 3);
        let before = vm_hwm_kib();
        let mut e = Encoder::new(std::io::sink(), Flavor::Gzip, 1)?;
        let t = std::time::Instant::now();
        for i in 0..(1usize << 30) / 4096 {
            // Vary the chunk a little so the stream is not one long match.
            let mut c = chunk.clone();
            c[i % 4096] = i as u8;
            e.write_all(&c)?;
        }
        e.finish()?;
        println!(
            "1 GiB in 4 KiB writes (gzip -1): {:.1} s, peak RSS {} KiB before, {} KiB after",
            t.elapsed().as_secs_f64(),
            before,
            vm_hwm_kib()
        );
        Ok(())
    }

    #[test]
    fn common_prefix_across_words() {
        let a: Vec<u8> = (0..40).collect();
        for cut in 0..40 {
            let mut b = a.clone();
            b[cut] ^= 1;
            assert_eq!(common_prefix(&a, &b), cut);
        }
        assert_eq!(common_prefix(&a, &a[..17]), 17);
    }
}
