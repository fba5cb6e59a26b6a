//! 8-bit codes of a chunk's rows, for the compact scan: every row (and
//! query) is stored as `scale × c` with `c` in −127..=127, and the integer
//! dot products of the codes are computed with AVX-512 VNNI (64 products
//! per instruction) where the CPU has it, else by a portable loop that
//! gives the same integers.
//!
//! The scan stays **exact**: for vectors `q` and `x` with codes `q'` and
//! `x'` and residuals `rq = |q − q'|`, `rx = |x − x'|`,
//! `|q·x − q'·x'| ≤ |q|·rx + rq·|x'| ≤ |q|·rx + rq·(|x| + rx)`
//! (Cauchy–Schwarz; the lengths are measured, not assumed to be 1, so a
//! row loaded from a file is bounded as honestly as one inserted), so each
//! code score comes with an interval that holds the exact score, widened
//! by the f32 rounding of both scores.
//! A row whose upper end is below the k-th best lower end seen so far
//! cannot be in the top k; every other row is scored again exactly in f32
//! (`scan.rs`). The answer is the exact search's.

use std::sync::OnceLock;

/// Rows per block: one 32-bit lane of a 512-bit register each.
pub(crate) const LANES: usize = 16;
/// Dimensions per lane and instruction (`vpdpbusd` sums four products).
const GROUP: usize = 4;
/// Queries per tile of the kernel.
pub(crate) const TILE: usize = 8;
/// Added to every bound: covers the f32 rounding of the code score and of
/// the exact score (`dot` sums 16 partial sums of `dim / 16` products:
/// each within about `(dim / 16 + 16) × 2⁻²⁴` of the exact value for unit
/// vectors), with room to spare.
fn slack(dim: usize) -> f32 {
    1e-5 + dim as f32 * 2e-7
}

// The integer dot products cannot overflow: at most `MAX_DIM` products of
// an unsigned query code (≤ 255) and a row code (|c| ≤ 127).
const _: () = assert!(super::MAX_DIM * 255 * 127 <= i32::MAX as usize);

/// A vector's codes: `scale × codes` approximates it, `resid` is the
/// length of the difference, `norm` the vector's (both rounded up).
fn quantize(v: &[f32], pdim: usize) -> (Vec<i8>, f32, f32, f32) {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let mut codes = vec![0i8; pdim];
    let norm = up(v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt());
    let scale = max / 127.0;
    // A zero vector, or one so small that its scale is not a normal
    // float (a file's rows are as saved): all residual.
    if !(max.is_finite() && scale.is_normal()) {
        return (codes, 0.0, norm, norm);
    }
    let mut r2 = 0f64;
    for (c, x) in codes.iter_mut().zip(v) {
        let q = (x / scale).round().clamp(-127.0, 127.0);
        *c = q as i8;
        r2 += (f64::from(*x) - f64::from(scale) * f64::from(q)).powi(2);
    }
    (codes, scale, up(r2.sqrt()), norm)
}

/// `x` as f32, rounded up.
fn up(x: f64) -> f32 {
    let f = x as f32;
    if f64::from(f) < x {
        f.next_up()
    } else {
        f
    }
}

fn padded(dim: usize) -> usize {
    dim.div_ceil(GROUP) * GROUP
}

/// A chunk's rows as codes, in blocks of [`LANES`] rows laid out for the
/// kernel: block, then group of four dimensions, then row, then the four
/// codes.
#[derive(Debug, PartialEq)]
pub(crate) struct Codes {
    pdim: usize,
    data: Vec<i8>,
    scale: Vec<f32>,
    resid: Vec<f32>,
    /// Each row's length plus its residual (what multiplies the query's
    /// residual in the bound).
    reach: Vec<f32>,
    slack: f32,
    /// 128 × the sum of each row's codes (the kernel multiplies unsigned
    /// query codes, shifted by 128).
    shift: Vec<i32>,
}

impl Codes {
    /// The codes of `rows` (`dim` floats each).
    pub(crate) fn encode(rows: &[f32], dim: usize) -> Self {
        let pdim = padded(dim);
        let n = rows.len() / dim.max(1);
        let blocks = n.div_ceil(LANES);
        let mut c = Codes {
            pdim,
            data: vec![0; blocks * LANES * pdim],
            scale: Vec::with_capacity(n),
            resid: Vec::with_capacity(n),
            reach: Vec::with_capacity(n),
            slack: slack(dim),
            shift: Vec::with_capacity(n),
        };
        for (r, row) in rows.chunks_exact(dim.max(1)).enumerate() {
            let (codes, scale, resid, norm) = quantize(row, pdim);
            let (b, lane) = (r / LANES, r % LANES);
            for (g, four) in codes.chunks_exact(GROUP).enumerate() {
                let at = ((b * (pdim / GROUP) + g) * LANES + lane) * GROUP;
                c.data[at..at + GROUP].copy_from_slice(four);
            }
            c.scale.push(scale);
            c.resid.push(resid);
            c.reach.push((norm + resid).next_up());
            c.shift
                .push(128 * codes.iter().map(|&x| i32::from(x)).sum::<i32>());
        }
        c
    }

    /// No rows yet, of `dim` dimensions: rows are added with
    /// [`push_row`](Self::push_row).
    pub(crate) fn empty(dim: usize) -> Self {
        Codes {
            pdim: padded(dim),
            data: Vec::new(),
            scale: Vec::new(),
            resid: Vec::new(),
            reach: Vec::new(),
            slack: slack(dim),
            shift: Vec::new(),
        }
    }

    /// Rows coded.
    pub(crate) fn rows(&self) -> usize {
        self.scale.len()
    }

    /// Appends a copy of row `r` of `from` (codes of the same dimension):
    /// the same as encoding that row here.
    pub(crate) fn push_row(&mut self, from: &Codes, r: usize) {
        let n = self.rows();
        if n.is_multiple_of(LANES) {
            self.data.resize(self.data.len() + LANES * self.pdim, 0);
        }
        let groups = self.pdim / GROUP;
        let (fb, fl, tb, tl) = (r / LANES, r % LANES, n / LANES, n % LANES);
        for g in 0..groups {
            let src = ((fb * groups + g) * LANES + fl) * GROUP;
            let dst = ((tb * groups + g) * LANES + tl) * GROUP;
            self.data[dst..dst + GROUP].copy_from_slice(&from.data[src..src + GROUP]);
        }
        self.scale.push(from.scale[r]);
        self.resid.push(from.resid[r]);
        self.reach.push(from.reach[r]);
        self.shift.push(from.shift[r]);
    }

    /// Blocks of [`LANES`] rows.
    pub(crate) fn blocks(&self) -> usize {
        self.data.len() / (LANES * self.pdim).max(1)
    }

    fn block(&self, b: usize) -> &[i8] {
        let len = LANES * self.pdim;
        &self.data[b * len..(b + 1) * len]
    }

    /// Bytes it holds.
    pub(crate) fn bytes(&self) -> usize {
        self.data.len() + 4 * (self.scale.len() + self.resid.len() + self.reach.len() + self.shift.len())
    }

    /// Bytes that [`write`](Self::write) appends for `rows` rows of `dim`:
    /// the codes in whole blocks, then four numbers per row.
    pub(crate) fn stored_len(rows: usize, dim: usize) -> Option<usize> {
        rows.div_ceil(LANES)
            .checked_mul(LANES)?
            .checked_mul(padded(dim))?
            .checked_add(rows.checked_mul(16)?)
    }

    /// Appends the codes to `out` (the index file's layout: the codes as
    /// laid out in memory, then each row's scale, residual, reach, all f32,
    /// and shift, i32, little-endian).
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.extend(self.data.iter().map(|&c| c as u8));
        for v in [&self.scale, &self.resid, &self.reach] {
            out.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        }
        out.extend(self.shift.iter().flat_map(|x| x.to_le_bytes()));
    }

    /// Codes as [`write`](Self::write) wrote them for `rows` rows of `dim`
    /// (`bytes` is [`stored_len`](Self::stored_len) long), or why not: each
    /// number finite and not negative, each shift the sum of its row's codes.
    pub(crate) fn read(bytes: &[u8], rows: usize, dim: usize) -> Result<Self, String> {
        let pdim = padded(dim);
        if Self::stored_len(rows, dim) != Some(bytes.len()) {
            return Err(format!("codes of {rows} rows take {} bytes", bytes.len()));
        }
        let (data, mut rest) = bytes.split_at(rows.div_ceil(LANES) * LANES * pdim);
        let mut floats = || {
            let (now, later) = rest.split_at(4 * rows);
            rest = later;
            now.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect::<Vec<f32>>()
        };
        let (scale, resid, reach) = (floats(), floats(), floats());
        let shift: Vec<i32> = rest
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let c = Codes {
            pdim,
            data: data.iter().map(|&b| b as i8).collect(),
            scale,
            resid,
            reach,
            slack: slack(dim),
            shift,
        };
        // The lengths of rows near f32::MAX round up to infinity: a bound
        // that keeps every such row, still honest.
        for (what, v, inf) in [
            ("scale", &c.scale, false),
            ("residual", &c.resid, true),
            ("reach", &c.reach, true),
        ] {
            if let Some(r) = v.iter().position(|x| !(*x >= 0.0 && (x.is_finite() || inf))) {
                return Err(format!("row {r} of a chunk has {what} {}", v[r]));
            }
        }
        for (r, &s) in c.shift.iter().enumerate() {
            let (b, lane) = (r / LANES, r % LANES);
            let sum: i32 = c
                .block(b)
                .chunks_exact(GROUP * LANES)
                .map(|g| {
                    g[lane * GROUP..(lane + 1) * GROUP]
                        .iter()
                        .map(|&x| i32::from(x))
                        .sum::<i32>()
                })
                .sum();
            if s != 128 * sum {
                return Err(format!(
                    "row {r} of a chunk has shift {s}, its codes sum to {sum}"
                ));
            }
        }
        Ok(c)
    }
}

/// A chunk's codes, made on first use by a compact scan (and dropped with
/// the chunk, or when it changes).
#[derive(Debug, Default)]
pub(crate) struct Lazy(OnceLock<Codes>);

impl Clone for Lazy {
    /// A changed copy of a chunk makes its codes again.
    fn clone(&self) -> Self {
        Lazy::default()
    }
}

impl Lazy {
    /// Codes already made (read from a file).
    pub(crate) fn made(codes: Codes) -> Self {
        Lazy(OnceLock::from(codes))
    }

    /// The codes, if made.
    pub(crate) fn peek(&self) -> Option<&Codes> {
        self.0.get()
    }

    /// The codes, made from `rows()` if not yet (the first caller makes
    /// them; a failure to read the rows is returned and nothing is kept).
    pub(crate) fn get<E>(&self, rows: impl FnOnce() -> Result<Vec<f32>, E>, dim: usize) -> Result<&Codes, E> {
        if let Some(c) = self.0.get() {
            return Ok(c);
        }
        let made = Codes::encode(&rows()?, dim);
        Ok(self.0.get_or_init(|| made))
    }

    /// The codes of rows in memory, made from them if not yet.
    pub(crate) fn of(&self, rows: &[f32], dim: usize) -> &Codes {
        self.0.get_or_init(|| Codes::encode(rows, dim))
    }
}

/// The queries' codes, unsigned (shifted by 128), `pdim` each, padded
/// with zero queries to whole tiles.
#[derive(Debug)]
pub(crate) struct Queries {
    pdim: usize,
    /// Four unsigned codes per word, little-endian.
    data: Vec<i32>,
    scale: Vec<f32>,
    resid: Vec<f32>,
    norm: Vec<f32>,
}

impl Queries {
    /// `flat` holds the queries, `dim` floats each.
    pub(crate) fn encode(flat: &[f32], dim: usize) -> Self {
        let pdim = padded(dim);
        let n = flat.len() / dim.max(1);
        let mut q = Queries {
            pdim,
            data: Vec::with_capacity(n.div_ceil(TILE) * TILE * pdim / GROUP),
            scale: Vec::with_capacity(n),
            resid: Vec::with_capacity(n),
            norm: Vec::with_capacity(n),
        };
        for v in flat.chunks_exact(dim.max(1)) {
            let (codes, scale, resid, norm) = quantize(v, pdim);
            q.data.extend(
                codes
                    .chunks_exact(GROUP)
                    .map(|four| i32::from_le_bytes([0, 1, 2, 3].map(|t| (i16::from(four[t]) + 128) as u8))),
            );
            q.scale.push(scale);
            q.resid.push(resid);
            q.norm.push(norm);
        }
        // Padding queries: their scores are never read.
        q.data.resize(
            n.div_ceil(TILE) * TILE * pdim / GROUP,
            i32::from_le_bytes([128; 4]),
        );
        q
    }
}

/// Which kernel scores the codes: VNNI only where the CPU has it (the
/// only way to make one that uses it is [`Kernel::detect`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kernel {
    vnni: bool,
}

impl Kernel {
    /// The fastest this CPU runs.
    pub(crate) fn detect() -> Self {
        Kernel { vnni: vnni() }
    }

    /// The portable loop.
    #[cfg(test)]
    fn portable() -> Self {
        Kernel { vnni: false }
    }
}

/// Whether this CPU runs the VNNI kernel.
pub(crate) fn vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The integer dot products of queries `j0..j0 + T` with the rows of block
/// `b`: `out[j][lane]`, before the shift.
fn dots<const T: usize>(
    codes: &Codes,
    b: usize,
    q: &Queries,
    j0: usize,
    kernel: Kernel,
    out: &mut [[i32; LANES]; T],
) {
    let block = codes.block(b);
    let words = q.pdim / GROUP;
    let qs = &q.data[j0 * words..(j0 + T) * words];
    #[cfg(target_arch = "x86_64")]
    if kernel.vnni {
        // SAFETY: a `Kernel` says VNNI only where `vnni()` found the
        // features the kernel is compiled for.
        unsafe { vnni_dots::<T>(block, qs, q.pdim, out) };
        return;
    }
    let _ = kernel;
    portable_dots::<T>(block, qs, q.pdim, out);
}

fn portable_dots<const T: usize>(block: &[i8], qs: &[i32], pdim: usize, out: &mut [[i32; LANES]; T]) {
    let words = pdim / GROUP;
    for (j, o) in out.iter_mut().enumerate() {
        *o = [0; LANES];
        for (g, w) in qs[j * words..(j + 1) * words].iter().enumerate() {
            let four = w.to_le_bytes();
            let rows = &block[g * LANES * GROUP..(g + 1) * LANES * GROUP];
            for (lane, x) in rows.chunks_exact(GROUP).enumerate() {
                o[lane] += four
                    .iter()
                    .zip(x)
                    .map(|(&a, &b)| i32::from(a) * i32::from(b))
                    .sum::<i32>();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni_dots<const T: usize>(block: &[i8], qs: &[i32], pdim: usize, out: &mut [[i32; LANES]; T]) {
    use std::arch::x86_64::*;
    let groups = pdim / GROUP;
    assert!(block.len() >= groups * LANES * GROUP && qs.len() >= T * groups);
    let rows: [&[i32]; T] = std::array::from_fn(|j| &qs[j * groups..(j + 1) * groups]);
    let mut acc = [_mm512_setzero_si512(); T];
    for g in 0..groups {
        // SAFETY: the block holds `groups` runs of 64 bytes (asserted).
        let x = unsafe { _mm512_loadu_si512(block.as_ptr().add(g * LANES * GROUP).cast()) };
        for (a, q) in acc.iter_mut().zip(&rows) {
            *a = _mm512_dpbusd_epi32(*a, _mm512_set1_epi32(q[g]), x);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: `o` is 16 i32s, 64 bytes.
        unsafe { _mm512_storeu_si512(o.as_mut_ptr().cast(), a) };
    }
}

/// Per query, the highest bar any thread's scan has found so far (the
/// k-th best lower end it has seen), shared so that every thread prunes
/// with the best: each is at most the k-th best exact score.
#[derive(Debug)]
pub(crate) struct Bars(Vec<std::sync::atomic::AtomicU32>);

/// `f32` to `u32`, keeping the order (for an atomic maximum).
fn ordered(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 1 << 31
    }
}

fn unordered(u: u32) -> f32 {
    f32::from_bits(if u >> 31 == 1 { u & !(1 << 31) } else { !u })
}

impl Bars {
    pub(crate) fn new(queries: usize) -> Self {
        let low = ordered(f32::NEG_INFINITY);
        Bars(
            (0..queries)
                .map(|_| std::sync::atomic::AtomicU32::new(low))
                .collect(),
        )
    }

    pub(crate) fn get(&self, j: usize) -> f32 {
        self.0.get(j).map_or(f32::NEG_INFINITY, |a| {
            unordered(a.load(std::sync::atomic::Ordering::Relaxed))
        })
    }

    /// Raises query `j`'s bar to `x` if that is higher (NaN is ignored).
    pub(crate) fn raise(&self, j: usize, x: f32) {
        if let (Some(a), false) = (self.0.get(j), x.is_nan()) {
            a.fetch_max(ordered(x), std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// One row's code score and the half-width of the interval around it that
/// holds its exact score.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounded {
    pub(crate) score: f32,
    pub(crate) bound: f32,
}

/// Scores queries `j0..j0 + T` against block `b` (of a chunk of `rows`
/// rows), calling `each(j, row, bounded)` for the rows whose upper end
/// reaches query `j`'s bar (`bars[j]`), which `each` returns raised.
#[allow(clippy::too_many_arguments)]
pub(crate) fn score_block<const T: usize>(
    codes: &Codes,
    b: usize,
    rows: usize,
    q: &Queries,
    j0: usize,
    kernel: Kernel,
    bars: &mut [f32],
    mut each: impl FnMut(usize, usize, Bounded) -> f32,
) {
    let mut out = [[0i32; LANES]; T];
    dots::<T>(codes, b, q, j0, kernel, &mut out);
    let real = rows.saturating_sub(b * LANES).min(LANES);
    let at = b * LANES..b * LANES + real;
    // The block's numbers in whole lanes; a lane past the last row gets a
    // NaN bound, which no comparison passes.
    let (mut shift, mut scale, mut resid, mut reach) =
        ([0i32; LANES], [0f32; LANES], [0f32; LANES], [0f32; LANES]);
    let mut pad = [f32::NAN; LANES];
    shift[..real].copy_from_slice(&codes.shift[at.clone()]);
    scale[..real].copy_from_slice(&codes.scale[at.clone()]);
    resid[..real].copy_from_slice(&codes.resid[at.clone()]);
    reach[..real].copy_from_slice(&codes.reach[at]);
    pad[..real].fill(codes.slack);
    for (t, o) in out.iter().enumerate() {
        let j = j0 + t;
        let (Some(&qs), Some(&qr), Some(&qn)) = (q.scale.get(j), q.resid.get(j), q.norm.get(j)) else {
            continue;
        };
        let Some(bar) = bars.get_mut(j) else {
            continue;
        };
        // Which lanes reach the bar, without branches (the compiler
        // vectorises this loop: 4,000 -> 4,600 queries/s, 100,000 × 512,
        // a batch of 1,000, `index_bench --compact`); then each of those,
        // against the bar as `each` raises it.
        let score = |lane: usize| qs * scale[lane] * (o[lane] - shift[lane]) as f32;
        let bound = |lane: usize| qn * resid[lane] + qr * reach[lane] + pad[lane];
        let mut pass = 0u32;
        for lane in 0..LANES {
            pass |= u32::from(score(lane) + bound(lane) >= *bar) << lane;
        }
        while pass != 0 {
            let lane = pass.trailing_zeros() as usize;
            pass &= pass - 1;
            let (score, bound) = (score(lane), bound(lane));
            if score + bound >= *bar {
                *bar = bar.max(each(j, b * LANES + lane, Bounded { score, bound }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(rng: &mut fastrand::Rng, dim: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dim).map(|_| rng.f32() * 2.0 - 1.0).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn the_kernel_gives_the_portable_integers_and_the_bounds_hold() {
        let mut rng = fastrand::Rng::with_seed(3);
        for &(n, dim) in &[(1, 3), (17, 5), (40, 64), (33, 512)] {
            // Rows of other lengths too (a file's rows are not renormalised):
            // the bound measures them.
            let rows: Vec<f32> = (0..n)
                .flat_map(|r| {
                    let len: f32 = [1.0, 1000.0, 1e-3][r % 3];
                    unit(&mut rng, dim).into_iter().map(move |x| x * len)
                })
                .collect();
            let queries: Vec<f32> = (0..TILE + 1).flat_map(|_| unit(&mut rng, dim)).collect();
            let (codes, q) = (Codes::encode(&rows, dim), Queries::encode(&queries, dim));
            for b in 0..codes.blocks() {
                let (mut a, mut p) = ([[0; LANES]; TILE], [[0; LANES]; TILE]);
                portable_dots::<TILE>(codes.block(b), &q.data[..TILE * q.pdim / GROUP], q.pdim, &mut p);
                if vnni() {
                    dots::<TILE>(&codes, b, &q, 0, Kernel::detect(), &mut a);
                    assert_eq!(a, p, "n={n} dim={dim} block {b}");
                }
                for (j0, kernel) in [0, TILE]
                    .into_iter()
                    .flat_map(|j| [(j, Kernel::detect()), (j, Kernel::portable())])
                {
                    score_block::<1>(
                        &codes,
                        b,
                        n,
                        &q,
                        j0,
                        kernel,
                        &mut [f32::NEG_INFINITY; TILE + 1],
                        |j, r, s| {
                            let exact: f32 = rows[r * dim..(r + 1) * dim]
                                .iter()
                                .zip(&queries[j * dim..(j + 1) * dim])
                                .map(|(a, b)| a * b)
                                .sum();
                            assert!(
                                (exact - s.score).abs() <= s.bound,
                                "n={n} dim={dim} row {r} query {j}: {exact} vs {} ± {}",
                                s.score,
                                s.bound
                            );
                            let len: f32 = [1.0, 1000.0, 1e-3][r % 3];
                            assert!(s.bound < 0.1 * len.max(1.0), "a useful bound: {}", s.bound);
                            f32::NEG_INFINITY
                        },
                    );
                }
            }
        }
    }

    #[test]
    fn rows_copied_one_by_one_are_the_rows_encoded_together() {
        let mut rng = fastrand::Rng::with_seed(8);
        for dim in [5, 64, 130] {
            let rows: Vec<f32> = (0..37 * dim).map(|_| rng.f32() * 2.0 - 1.0).collect();
            let whole = Codes::encode(&rows, dim);
            // Rows 3..37 from the whole set, then rows 0..3 from a set of
            // their own: the codes of the rows in that order.
            let head = Codes::encode(&rows[..3 * dim], dim);
            let mut copied = Codes::empty(dim);
            for r in 3..37 {
                copied.push_row(&whole, r);
            }
            for r in 0..3 {
                copied.push_row(&head, r);
            }
            let reordered: Vec<f32> = rows[3 * dim..].iter().chain(&rows[..3 * dim]).copied().collect();
            assert_eq!(copied, Codes::encode(&reordered, dim), "dim {dim}");
            let (mut a, mut b) = (Vec::new(), Vec::new());
            copied.write(&mut a);
            Codes::encode(&reordered, dim).write(&mut b);
            assert_eq!(a, b);
            assert_eq!(Codes::read(&a, 37, dim).as_ref(), Ok(&copied));
        }
    }

    #[test]
    fn rows_at_the_ends_of_the_floats_have_honest_bounds_and_codes_that_read_back() {
        // A file's rows are not renormalised: tiny (subnormal) and huge
        // rows load, and their codes must bound them and survive a save.
        let dim = 4;
        let rows = [
            [0.0, 4.2e-45, 0.0, 4.06e-44],
            [3e38, -3e38, 1.0, 0.0],
            [1.0, 0.0, 0.0, 0.0],
        ]
        .concat();
        let codes = Codes::encode(&rows, dim);
        let mut bytes = Vec::new();
        codes.write(&mut bytes);
        assert_eq!(Codes::read(&bytes, 3, dim).as_ref(), Ok(&codes));
        let query = [0.5f32, 0.5, 0.5, 0.5];
        let q = Queries::encode(&query, dim);
        score_block::<1>(
            &codes,
            0,
            3,
            &q,
            0,
            Kernel::detect(),
            &mut [f32::NEG_INFINITY],
            |_, r, s| {
                let exact: f32 = rows[r * dim..(r + 1) * dim]
                    .iter()
                    .zip(&query)
                    .map(|(a, b)| a * b)
                    .sum();
                assert!(
                    !s.bound.is_nan() && (exact - s.score).abs() <= s.bound,
                    "row {r}: {exact} vs {s:?}"
                );
                f32::NEG_INFINITY
            },
        );
    }

    #[test]
    fn bars_keep_the_order_of_floats() {
        let xs = [
            f32::NEG_INFINITY,
            -2.0,
            -0.5,
            -0.0,
            0.0,
            1e-30,
            0.5,
            3.0,
            f32::INFINITY,
        ];
        for w in xs.windows(2) {
            assert!(ordered(w[0]) <= ordered(w[1]), "{w:?}");
            assert_eq!(unordered(ordered(w[1])).to_bits(), w[1].to_bits());
        }
        let bars = Bars::new(2);
        assert_eq!(bars.get(0), f32::NEG_INFINITY);
        bars.raise(0, -0.25);
        bars.raise(0, -0.75);
        bars.raise(0, f32::NAN);
        assert_eq!(
            (bars.get(0), bars.get(1), bars.get(9)),
            (-0.25, f32::NEG_INFINITY, f32::NEG_INFINITY)
        );
    }

    #[test]
    fn a_zero_vector_has_an_honest_bound() {
        let (codes, scale, resid, norm) = quantize(&[0.0, 0.0, 0.0], 4);
        assert_eq!((codes, scale, resid, norm), (vec![0; 4], 0.0, 0.0, 0.0));
    }
}
