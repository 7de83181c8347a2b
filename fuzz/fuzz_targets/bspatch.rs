//! Arbitrary base and patch bytes → `bundle::bspatch::apply`, the decoder of `Bsdiff` pieces
//! (bundle-format.md §5.1), which reads patches from frames of untrusted bundles. Input layout:
//! 4 bytes declared output length (u32 LE, so lengths far beyond the input are tried too), 2
//! bytes base length (u16 LE, capped at what is left), the base, then the patch. Must never
//! panic or allocate in proportion to the declared length, and whatever it returns has exactly
//! the declared length. The same patch cut into its three parts (record headers, copied
//! literals, added differences: a `BsdiffSplit` frame's streams) through
//! `bundle::bspatch::apply_split` gives the same output, or fails where it fails.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<4>() else { return };
    let Some((base_len, rest)) = rest.split_first_chunk::<2>() else { return };
    let out_len = u64::from(u32::from_le_bytes(*len));
    let base_len = usize::from(u16::from_le_bytes(*base_len)).min(rest.len());
    let (base, patch) = rest.split_at(base_len);
    let whole = bundle::bspatch::apply(base, patch, out_len);
    if let Ok(out) = &whole {
        assert_eq!(out.len() as u64, out_len);
        // Every output byte comes from a patch byte (an added difference or a copied literal).
        assert!(out.len() <= patch.len());
    }
    let [control, diff, copy] = bundle::bspatch::split(patch);
    let mut out = Vec::new();
    let parts = bundle::bspatch::apply_split(base, &control, &copy, &diff[..], out_len, |at, c| {
        assert_eq!(at, out.len() as u64);
        out.extend_from_slice(c);
        Ok(())
    });
    assert_eq!(parts.ok().map(|()| out), whole.ok(), "split and interleaved differ");
});
