//! PNG bar charts without dependencies: a small rasteriser with a built-in 5×7 font and a PNG
//! writer (palette image, zlib stream with fixed-Huffman deflate of byte runs, CRC-32).
//!
//! Why not a plotting crate: the common ones either need system fonts (fontconfig/freetype) or
//! a font file to embed; `cargo kmod bench` must produce its plots on a fresh Debian with
//! nothing more than the Rust toolchain. Charts are flat colours, so run-length matches alone
//! compress them to a few kilobytes.

use std::fmt::Write as _;

/// One bar.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Text left of the bar.
    pub label: String,
    /// Length of the bar (same unit for all bars of a chart).
    pub value: f64,
    /// Colour: 0 = ours, 1 = the baseline measured beside it, 2 = a third series.
    pub series: u8,
}

/// A horizontal bar chart.
#[derive(Debug, Clone)]
pub struct Chart {
    /// File name (without folder), e.g. `ring.png`.
    pub file: String,
    /// Title line.
    pub title: String,
    /// Unit shown after each value, e.g. `ns`.
    pub unit: String,
    /// The bars, top to bottom.
    pub bars: Vec<Bar>,
    /// Legend entries per series (empty strings are skipped).
    pub legend: [&'static str; 3],
}

const SCALE: usize = 2;
const GLYPH_W: usize = 6 * SCALE;
const ROW_H: usize = 26;
const WIDTH: usize = 960;
const LABEL_W: usize = 62 * GLYPH_W / 2;

/// Palette: background, text, grid, then the three series.
const PALETTE: [[u8; 3]; 6] = [
    [255, 255, 255],
    [20, 20, 20],
    [215, 215, 215],
    [38, 110, 190],
    [230, 140, 40],
    [90, 170, 90],
];
const TEXT: u8 = 1;
const GRID: u8 = 2;

/// 5×7 glyphs, one byte per row (bit 4 = leftmost pixel). Lower case is drawn as upper case.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' | 'µ' | 'Μ' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' | '×' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        ' ' => [0; 7],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        ';' => [0, 0x0C, 0x0C, 0, 0x0C, 0x04, 0x08],
        '*' => [0, 0x04, 0x15, 0x0E, 0x15, 0x04, 0],
        '/' | '÷' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '-' | '–' | '↔' => [0, 0, 0, 0x1F, 0, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        '<' => [0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02],
        '>' => [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04],
    }
}

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn rect(&mut self, x: usize, y: usize, w: usize, h: usize, c: u8) {
        for row in y.min(self.h)..(y + h).min(self.h) {
            let start = row * self.w;
            for p in &mut self.px[start + x.min(self.w)..start + (x + w).min(self.w)] {
                *p = c;
            }
        }
    }

    fn text(&mut self, x: usize, y: usize, s: &str, c: u8) {
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (r, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.rect(
                            x + i * GLYPH_W + col * SCALE,
                            y + r * SCALE,
                            SCALE,
                            SCALE,
                            c,
                        );
                    }
                }
            }
        }
    }
}

/// A value with three significant digits.
#[must_use]
pub fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Renders `chart` as a PNG file's bytes.
#[must_use]
pub fn render(chart: &Chart) -> Vec<u8> {
    let top = 16 + 14 * SCALE + 12;
    let legend_h = 14 * SCALE;
    let h = top + chart.bars.len() * ROW_H + legend_h + 16;
    let mut c = Canvas {
        w: WIDTH,
        h,
        px: vec![0; WIDTH * h],
    };
    c.text(16, 16, &chart.title, TEXT);
    let max = chart.bars.iter().map(|b| b.value).fold(0.0, f64::max);
    let bar_x = 16 + LABEL_W;
    let value_w = 14 * GLYPH_W;
    let bar_max = WIDTH - bar_x - value_w - 16;
    // Grid at quarters of the largest value.
    for q in 0..=4 {
        let x = bar_x + bar_max * q / 4;
        c.rect(x, top - 4, 1, chart.bars.len() * ROW_H + 4, GRID);
    }
    for (i, b) in chart.bars.iter().enumerate() {
        let y = top + i * ROW_H;
        let label: String = b.label.chars().take(LABEL_W / GLYPH_W - 1).collect();
        c.text(16, y + 5, &label, TEXT);
        let frac = if max > 0.0 {
            (b.value / max).clamp(0.0, 1.0)
        } else {
            0.0
        };
        // Rounding a fraction of a few hundred pixels: far inside usize.
        let len = ((bar_max as f64) * frac).round() as usize;
        c.rect(bar_x, y + 3, len.max(1), ROW_H - 6, 3 + b.series.min(2));
        c.text(
            bar_x + len + 6,
            y + 5,
            &format!("{} {}", fmt_value(b.value), chart.unit),
            TEXT,
        );
    }
    let mut x = 16;
    let ly = top + chart.bars.len() * ROW_H + 10;
    for (s, name) in chart.legend.iter().enumerate() {
        if name.is_empty() {
            continue;
        }
        c.rect(x, ly, 14 * SCALE / 2, 7 * SCALE, 3 + s as u8);
        c.text(x + 12 * SCALE / 2 + 8, ly, name, TEXT);
        x += 12 * SCALE / 2 + 8 + (name.chars().count() + 3) * GLYPH_W;
    }
    png(c.w, c.h, &c.px)
}

fn crc32(data: &[&[u8]]) -> u32 {
    let mut table = [0u32; 256];
    for (n, t) in table.iter_mut().enumerate() {
        let mut v = n as u32;
        for _ in 0..8 {
            v = if v & 1 != 0 {
                0xEDB8_8320 ^ (v >> 1)
            } else {
                v >> 1
            };
        }
        *t = v;
    }
    let mut crc = !0u32;
    for part in data {
        for &b in *part {
            crc = table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
        }
    }
    !crc
}

/// LSB-first bit writer for deflate.
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u32, count: u32) {
        self.acc |= u64::from(value) << self.n;
        self.n += count;
        while self.n >= 8 {
            self.out.push((self.acc & 0xff) as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code (defined MSB first) of `len` bits.
    fn code(&mut self, code: u32, len: u32) {
        let mut rev = 0;
        for i in 0..len {
            rev |= ((code >> i) & 1) << (len - 1 - i);
        }
        self.put(rev, len);
    }

    /// A literal/length symbol of the fixed Huffman code.
    fn sym(&mut self, s: u32) {
        match s {
            0..=143 => self.code(0x30 + s, 8),
            144..=255 => self.code(0x190 + s - 144, 9),
            256..=279 => self.code(s - 256, 7),
            _ => self.code(0xC0 + s - 280, 8),
        }
    }

    /// A match of `len` (3..=258) bytes at distance 1.
    fn run(&mut self, len: u32) {
        const BASE: [(u32, u32); 29] = [
            (3, 0),
            (4, 0),
            (5, 0),
            (6, 0),
            (7, 0),
            (8, 0),
            (9, 0),
            (10, 0),
            (11, 1),
            (13, 1),
            (15, 1),
            (17, 1),
            (19, 2),
            (23, 2),
            (27, 2),
            (31, 2),
            (35, 3),
            (43, 3),
            (51, 3),
            (59, 3),
            (67, 4),
            (83, 4),
            (99, 4),
            (115, 4),
            (131, 5),
            (163, 5),
            (195, 5),
            (227, 5),
            (258, 0),
        ];
        let i = BASE.iter().rposition(|&(b, _)| b <= len).unwrap_or(0);
        let (base, extra) = BASE[i];
        self.sym(257 + i as u32);
        if extra > 0 {
            self.put(len - base, extra);
        }
        // Distance code 0 (distance 1), five bits, no extra bits.
        self.code(0, 5);
    }
}

/// A zlib stream of `data`: one fixed-Huffman block of literals and distance-1 runs.
fn zlib(data: &[u8]) -> Vec<u8> {
    let mut w = Bits {
        out: vec![0x78, 0x01],
        acc: 0,
        n: 0,
    };
    w.put(1, 1); // BFINAL
    w.put(1, 2); // BTYPE = fixed Huffman
    let mut i = 0;
    while i < data.len() {
        if i > 0 {
            let prev = data[i - 1];
            let run = data[i..]
                .iter()
                .take(258)
                .take_while(|&&b| b == prev)
                .count();
            if run >= 3 {
                w.run(run as u32);
                i += run;
                continue;
            }
        }
        w.sym(u32::from(data[i]));
        i += 1;
    }
    w.sym(256);
    w.put(0, 7); // flush to a byte boundary
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    let mut out = w.out;
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

/// A palette PNG of `w`×`h` pixels (indices into [`PALETTE`]).
fn png(w: usize, h: usize, px: &[u8]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc32(&[kind, data]).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&(w as u32).to_be_bytes());
    ihdr.extend_from_slice(&(h as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 3, 0, 0, 0]); // 8-bit palette, no interlace
    chunk(b"IHDR", &ihdr);
    chunk(b"PLTE", &PALETTE.concat());
    let mut raw = Vec::with_capacity((w + 1) * h);
    for row in px.chunks(w) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    chunk(b"IDAT", &zlib(&raw));
    chunk(b"IEND", &[]);
    out
}

/// Markdown for a chart file in `folder` (relative to the Markdown file).
#[must_use]
pub fn markdown(chart: &Chart, folder: &str) -> String {
    let mut s = String::new();
    let _ = write!(s, "![{}]({folder}/{})", chart.title, chart.file);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_has_valid_structure_and_decodable_runs() {
        let chart = Chart {
            file: "t.png".into(),
            title: "TEST 1.5 ns".into(),
            unit: "ns".into(),
            bars: vec![
                Bar {
                    label: "a".into(),
                    value: 2.0,
                    series: 0,
                },
                Bar {
                    label: "b".into(),
                    value: 1.0,
                    series: 1,
                },
            ],
            legend: ["ours", "base", ""],
        };
        let png = render(&chart);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        // IHDR CRC as computed independently over kind + data.
        let crc = u32::from_be_bytes([png[29], png[30], png[31], png[32]]);
        assert_eq!(crc, crc32(&[&png[12..29]]));
        assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
        // Known CRC-32 check value.
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        // Flat pictures compress: far below one byte per pixel.
        assert!(png.len() < WIDTH * 50, "{} bytes", png.len());
    }

    #[test]
    fn zlib_runs_round_trip_through_an_inflater() {
        // Decode our fixed-Huffman subset (literals, distance-1 runs) and compare.
        let data: Vec<u8> = (0..2000u32)
            .map(|i| if i % 700 < 400 { 7 } else { (i % 251) as u8 })
            .collect();
        let z = zlib(&data);
        assert_eq!(inflate_fixed(&z[2..z.len() - 4]), data);
    }

    /// A minimal inflater for one fixed-Huffman block (test only).
    fn inflate_fixed(d: &[u8]) -> Vec<u8> {
        let mut pos = 0usize;
        let mut bit = |n: u32| -> u32 {
            let mut v = 0;
            for i in 0..n {
                let b = (d[pos / 8] >> (pos % 8)) & 1;
                v |= u32::from(b) << i;
                pos += 1;
            }
            v
        };
        assert_eq!(bit(1), 1);
        assert_eq!(bit(2), 1);
        let mut out: Vec<u8> = Vec::new();
        loop {
            // Read MSB-first Huffman code of the fixed table.
            let mut code = 0u32;
            let mut len = 0;
            let sym = loop {
                code = (code << 1) | bit(1);
                len += 1;
                match len {
                    7 if code <= 0x17 => break code + 256,
                    8 if (0x30..=0xBF).contains(&code) => break code - 0x30,
                    8 if (0xC0..=0xC7).contains(&code) => break code - 0xC0 + 280,
                    9 if code >= 0x190 => break code - 0x190 + 144,
                    _ => {}
                }
                assert!(len < 9);
            };
            match sym {
                0..=255 => out.push(sym as u8),
                256 => break,
                _ => {
                    const BASE: [(u32, u32); 29] = [
                        (3, 0),
                        (4, 0),
                        (5, 0),
                        (6, 0),
                        (7, 0),
                        (8, 0),
                        (9, 0),
                        (10, 0),
                        (11, 1),
                        (13, 1),
                        (15, 1),
                        (17, 1),
                        (19, 2),
                        (23, 2),
                        (27, 2),
                        (31, 2),
                        (35, 3),
                        (43, 3),
                        (51, 3),
                        (59, 3),
                        (67, 4),
                        (83, 4),
                        (99, 4),
                        (115, 4),
                        (131, 5),
                        (163, 5),
                        (195, 5),
                        (227, 5),
                        (258, 0),
                    ];
                    let (base, extra) = BASE[(sym - 257) as usize];
                    let n = base + bit(extra);
                    assert_eq!(bit(5), 0, "distance code 0");
                    for _ in 0..n {
                        out.push(*out.last().unwrap());
                    }
                }
            }
        }
        out
    }
}
