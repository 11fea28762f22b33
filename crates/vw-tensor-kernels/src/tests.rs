//! CPU tests: each plain-Rust reference against the composed candle path on awkward sizes, the
//! custom ops' backward against candle autograd of the composed path, and a few exact values.

use crate::util::{max_rel_err, random_tensor};
use crate::{attention, conv3d, fsq, norm, rope, vq};
use candle_core::{DType, Device, Tensor, Var};

type R = crate::Result<()>;
const CPU: Device = Device::Cpu;

fn rt(seed: u64, shape: &[usize]) -> Tensor {
    random_tensor(seed, shape, &CPU).expect("random tensor")
}

fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
    let e = max_rel_err(a, b).expect("comparable shapes");
    assert!(e <= tol, "{what}: max rel err {e} > {tol}");
}

/// Gradients of `sum(f(inputs) * w)` for a fixed random weighting w.
fn grads_of(inputs: &[Tensor], w_seed: u64, f: impl Fn(&[Tensor]) -> crate::Result<Tensor>) -> Vec<Tensor> {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).expect("var")).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts).expect("forward");
    let w = rt(w_seed, out.dims());
    let g = (out * w).expect("mul").sum_all().expect("sum").backward().expect("backward");
    // Inputs the op does not differentiate (rope's tables) get zeros.
    ts.iter().map(|t| g.get(t).cloned().unwrap_or_else(|| t.zeros_like().expect("zeros"))).collect()
}

#[test]
fn attention_composed_matches_reference() -> R {
    let (b, h, d) = (2, 3, 16);
    for (i, &(lq, lk, causal)) in
        [(37, 53, false), (37, 53, true), (61, 29, true), (1, 70, true), (45, 45, true)].iter().enumerate()
    {
        let seed = 10 * i as u64;
        let q = rt(seed, &[b, h, lq, d]);
        let k = rt(seed + 1, &[b, h, lk, d]);
        let v = rt(seed + 2, &[b, h, lk, d]);
        let mask = (rt(seed + 3, &[b, 1, 1, lk]) * 2.0)?;
        for m in [None, Some(&mask)] {
            let r = attention::reference_tensor(&q, &k, &v, 0.25, causal, m)?;
            // Chunk of 7 rows exercises the bounded-memory path on small shapes.
            let c = attention::composed_rows(&q, &k, &v, 0.25, causal, m, 7)?;
            assert_close(&c, &r, 1e-5, &format!("attn lq={lq} lk={lk} causal={causal} mask={}", m.is_some()));
            let pub_ = attention::flash_attn(&q, &k, &v, 0.25, causal, m)?;
            assert_close(&pub_, &r, 1e-5, "flash_attn public cpu path");
        }
    }
    Ok(())
}

#[test]
fn attention_causal_rows_without_keys_are_zero() -> R {
    // Lq > Lk bottom-right: the first Lq-Lk queries see no key.
    let q = rt(1, &[1, 1, 6, 8]);
    let k = rt(2, &[1, 1, 2, 8]);
    let v = rt(3, &[1, 1, 2, 8]);
    let o = attention::flash_attn(&q, &k, &v, 1.0, true, None)?;
    let rows: Vec<Vec<f32>> = o.squeeze(0)?.squeeze(0)?.to_vec2()?;
    for r in &rows[..4] {
        assert!(r.iter().all(|&x| x == 0.0), "{r:?}");
    }
    // The last query sees both keys: output is a convex mix of the two value rows.
    let vv: Vec<Vec<f32>> = v.squeeze(0)?.squeeze(0)?.to_vec2()?;
    let lo = vv[0][0].min(vv[1][0]);
    let hi = vv[0][0].max(vv[1][0]);
    assert!(rows[5][0] >= lo - 1e-6 && rows[5][0] <= hi + 1e-6);
    // The second-to-last sees only key 0.
    assert!((rows[4][0] - vv[0][0]).abs() < 1e-6);
    Ok(())
}

#[test]
fn attention_op_backward_matches_autograd() -> R {
    let (q, k, v) = (rt(5, &[1, 2, 13, 8]), rt(6, &[1, 2, 19, 8]), rt(7, &[1, 2, 19, 8]));
    let mask = rt(8, &[13, 19]);
    for causal in [false, true] {
        let want = grads_of(&[q.clone(), k.clone(), v.clone()], 9, |t| {
            attention::composed(&t[0], &t[1], &t[2], 0.3, causal, Some(&mask))
        });
        let got = grads_of(&[q.clone(), k.clone(), v.clone()], 9, |t| {
            let mut op = attention::FlashAttnOp::new(&t[0], &t[1], &t[2], 0.3, causal, Some(&mask))?;
            op.bwd_rows = 5;
            Ok(t[0].apply_op3(&t[1], &t[2], op)?)
        });
        for (n, (g, w)) in ["dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
            assert_close(g, w, 1e-5, &format!("{n} causal={causal}"));
        }
    }
    Ok(())
}

/// Gradients of `sum(f(inputs) * w)`.
fn grads_weighted(inputs: &[Tensor], w: &Tensor, f: impl Fn(&[Tensor]) -> crate::Result<Tensor>) -> Vec<Tensor> {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).expect("var")).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let g = (f(&ts).expect("forward") * w).expect("mul").sum_all().expect("sum").backward().expect("backward");
    ts.iter().map(|t| g.get(t).cloned().expect("a gradient")).collect()
}

/// The fused CPU path (no mask) against the composed path: outputs and all three gradients, on
/// sizes that are not multiples of the 8-wide dot product, with Lq < Lk, Lq > Lk and one query.
/// With Lq > Lk causal, the first Lq - Lk queries see no key: their output is a constant zero row
/// and their dq is 0 (autograd through the composed path gives NaN there, so the other rows are
/// compared with the composed path on the queries that see a key).
#[test]
fn cpu_fused_attention_matches_composed_with_gradients() -> R {
    for (i, &(b, h, lq, lk, d, causal)) in [
        (2, 3, 37, 53, 16, false),
        (2, 3, 37, 53, 16, true),
        (1, 2, 29, 11, 13, true),
        (3, 1, 1, 70, 5, true),
        (1, 4, 45, 45, 24, true),
    ]
    .iter()
    .enumerate()
    {
        let seed = 200 + 10 * i as u64;
        let ins = [rt(seed, &[b, h, lq, d]), rt(seed + 1, &[b, h, lk, d]), rt(seed + 2, &[b, h, lk, d])];
        let what = format!("b={b} h={h} lq={lq} lk={lk} d={d} causal={causal}");
        let fused = attention::flash_attn(&ins[0], &ins[1], &ins[2], 0.3, causal, None)?;
        let comp = attention::composed(&ins[0], &ins[1], &ins[2], 0.3, causal, None)?;
        assert_close(&fused, &comp, 1e-5, &what);
        let w = rt(seed + 3, &[b, h, lq, d]);
        let got = grads_weighted(&ins, &w, |t| attention::flash_attn(&t[0], &t[1], &t[2], 0.3, causal, None));
        let blind = if causal { lq.saturating_sub(lk) } else { 0 };
        let seen = lq - blind;
        let sub = [ins[0].narrow(2, blind, seen)?, ins[1].clone(), ins[2].clone()];
        let want = grads_weighted(&sub, &w.narrow(2, blind, seen)?, |t| {
            attention::composed(&t[0], &t[1], &t[2], 0.3, causal, None)
        });
        assert_close(&got[0].narrow(2, blind, seen)?, &want[0], 1e-4, &format!("dq {what}"));
        assert_close(&got[1], &want[1], 1e-4, &format!("dk {what}"));
        assert_close(&got[2], &want[2], 1e-4, &format!("dv {what}"));
        if blind > 0 {
            let dq_blind = got[0].narrow(2, 0, blind)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(dq_blind, 0.0, "dq of queries without keys, {what}");
        }
    }
    Ok(())
}

/// The op's gradients carry no backprop graph of their own: one that did kept every chunk's f32
/// score block alive until the gradients were dropped (tens of GiB at video length on the GPU).
#[test]
fn attention_op_backward_records_no_graph() -> R {
    let vars: Vec<Var> = [rt(5, &[1, 2, 13, 8]), rt(6, &[1, 2, 19, 8]), rt(7, &[1, 2, 19, 8])]
        .iter()
        .map(Var::from_tensor)
        .collect::<candle_core::Result<_>>()?;
    let (q, k, v) = (vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor());
    let mut op = attention::FlashAttnOp::new(q, k, v, 0.3, false, None)?;
    op.bwd_rows = 5;
    let out = q.apply_op3(k, v, op)?;
    let grads = (out * rt(9, &[1, 2, 13, 8]))?.sum_all()?.backward()?;
    for (n, t) in ["dq", "dk", "dv"].iter().zip([q, k, v]) {
        let g = grads.get(t).expect("gradient");
        // A gradient with a graph back to the inputs would itself have gradients w.r.t. them.
        let again = g.sum_all()?.backward()?;
        assert!([q, k, v].iter().all(|x| again.get(x).is_none()), "{n} records a backprop graph");
    }
    Ok(())
}

#[test]
fn conv3d_composed_matches_reference() -> R {
    #[allow(clippy::type_complexity)]
    let cases: [([usize; 5], [usize; 5], [usize; 3], [usize; 3]); 5] = [
        ([2, 3, 5, 7, 6], [4, 3, 3, 3, 3], [1, 1, 1], [1, 1, 1]),
        ([1, 5, 7, 9, 8], [3, 5, 3, 3, 3], [1, 2, 2], [0, 1, 1]),
        ([1, 2, 9, 5, 5], [2, 2, 3, 1, 1], [2, 1, 1], [0, 0, 0]),
        ([1, 3, 4, 6, 7], [2, 3, 2, 3, 1], [1, 2, 1], [1, 1, 0]),
        ([2, 4, 3, 5, 5], [6, 4, 1, 3, 3], [1, 1, 1], [0, 2, 1]),
    ];
    for (i, (xs, ws, st, pd)) in cases.iter().enumerate() {
        let x = rt(100 + i as u64, xs);
        let w = rt(200 + i as u64, ws);
        let b = rt(300 + i as u64, &[ws[0]]);
        let r = conv3d::reference_tensor(&x, &w, Some(&b), *st, *pd)?;
        let c = conv3d::conv3d(&x, &w, Some(&b), *st, *pd)?;
        assert_close(&c, &r, 1e-5, &format!("conv3d case {i}"));
        let op = conv3d::Conv3dOp { dims: conv3d::Conv3dDims::new(&x, &w, Some(&b), *st, *pd)?, has_bias: true };
        assert_close(&x.apply_op3(&w, &b, op)?, &r, 1e-5, "conv3d op cpu_fwd");
    }
    Ok(())
}

#[test]
fn conv3d_gradients_match_finite_differences() -> R {
    // The composed path relies on candle's conv2d backward, whose out-padding uses the H dim only:
    // check a stride-2 case with H != W parity against central differences in f64 precision terms.
    let x = rt(11, &[1, 2, 3, 6, 5]);
    let w = rt(12, &[2, 2, 2, 3, 3]);
    let b = rt(13, &[2]);
    let (st, pd) = ([1, 2, 2], [0, 1, 1]);
    let g = grads_of(&[x.clone(), w.clone(), b.clone()], 14, |t| conv3d::composed(&t[0], &t[1], Some(&t[2]), st, pd));
    let wsum = rt(14, conv3d::conv3d(&x, &w, Some(&b), st, pd)?.dims());
    let loss = |x: &Tensor, w: &Tensor| -> f32 {
        let y = conv3d::reference_tensor(x, w, Some(&b), st, pd).expect("ref");
        (y * &wsum).expect("mul").sum_all().expect("sum").to_scalar::<f32>().expect("scalar")
    };
    let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let gx: Vec<f32> = g[0].flatten_all()?.to_vec1()?;
    for i in [0, 7, 31, 77, 150, xv.len() - 1] {
        let eps = 1e-2;
        let mut p = xv.clone();
        p[i] += eps;
        let mut m = xv.clone();
        m[i] -= eps;
        let fd = (loss(&Tensor::from_vec(p, x.dims(), &CPU)?, &w) - loss(&Tensor::from_vec(m, x.dims(), &CPU)?, &w))
            / (2.0 * eps);
        assert!((fd - gx[i]).abs() < 2e-3 * fd.abs().max(1.0), "dx[{i}]: fd {fd} vs autograd {}", gx[i]);
    }
    let got = grads_of(&[x.clone(), w.clone(), b.clone()], 14, |t| {
        let op = conv3d::Conv3dOp { dims: conv3d::Conv3dDims::new(&t[0], &t[1], Some(&t[2]), st, pd)?, has_bias: true };
        Ok(t[0].apply_op3(&t[1], &t[2], op)?)
    });
    for (n, (a, e)) in ["dx", "dw", "db"].iter().zip(got.iter().zip(&g)) {
        assert_close(a, e, 1e-5, n);
    }
    Ok(())
}

#[test]
fn causal_conv3d_streams_exactly() -> R {
    let x = rt(21, &[1, 3, 7, 5, 6]);
    let w = rt(22, &[4, 3, 3, 3, 3]);
    let b = rt(23, &[4]);
    let full = conv3d::causal_conv3d(&x, &w, Some(&b), [1, 1, 1], [1, 1], None)?;
    assert_eq!(full.dims(), [1, 4, 7, 5, 6]);
    // First frame sees only itself: equals a conv over [0, 0, x0].
    let first =
        conv3d::reference_tensor(&x.narrow(2, 0, 1)?.pad_with_zeros(2, 2, 0)?, &w, Some(&b), [1, 1, 1], [0, 1, 1])?;
    assert_close(&full.narrow(2, 0, 1)?, &first, 1e-5, "first causal frame");
    // Chunks of 1, 2 and 4 frames with carried caches reproduce the full output.
    let mut cache: Option<Tensor> = None;
    let mut outs = Vec::new();
    let mut s = 0;
    for n in [1, 2, 4] {
        let xc = x.narrow(2, s, n)?;
        outs.push(conv3d::causal_conv3d(&xc, &w, Some(&b), [1, 1, 1], [1, 1], cache.as_ref())?);
        cache = Some(conv3d::causal_conv3d_cache(&xc, cache.as_ref(), 3)?);
        s += n;
    }
    assert_close(&Tensor::cat(&outs, 2)?, &full, 1e-5, "streamed causal conv");
    Ok(())
}

#[test]
fn norm_modulate_matches_reference() -> R {
    let (b, l, c) = (2, 7, 37);
    let x = (rt(31, &[b, l, c]) * 3.0)?.broadcast_add(&rt(32, &[b, l, 1]))?;
    for (si, sshape) in [[b, 1, c], [b, l, c], [1, 1, c]].iter().enumerate() {
        let shift = rt(33 + si as u64, sshape);
        let scale = rt(36 + si as u64, sshape);
        for kind in [norm::NormKind::Layer, norm::NormKind::Rms] {
            let op = norm::NormModulateOp { eps: 1e-6, kind };
            let r = x.apply_op3(&shift, &scale, op)?;
            let c_ = norm::composed(&x, None, &shift, &scale, 1e-6, kind)?;
            assert_close(&c_, &r, 1e-5, &format!("{kind:?} shift {sshape:?}"));
        }
        let w = rt(40, &[c]);
        let with_w = norm::rms_norm_modulate(&x, Some(&w), &shift, &scale, 1e-6)?;
        let scale_w = (unsq3(&scale)?.affine(1.0, 1.0)?.broadcast_mul(&w)? - 1.0)?;
        let r = x.apply_op3(
            &shift,
            &scale_w.broadcast_as((b, l, c))?.contiguous()?,
            norm::NormModulateOp { eps: 1e-6, kind: norm::NormKind::Rms },
        )?;
        assert_close(&with_w, &r, 1e-5, "rms with weight folded into scale");
        let gate = rt(41, sshape);
        let y = rt(42, &[b, l, c]);
        let g = norm::gated_residual(&x, &gate, &y)?;
        assert_close(&g, &x.apply_op3(&gate, &y, norm::GatedResidualOp)?, 1e-6, "gated residual");
    }
    // LayerNorm output has zero mean / unit variance per row when unmodulated.
    let zero = Tensor::zeros((b, 1, c), DType::F32, &CPU)?;
    let y = norm::layer_norm_modulate(&x, &zero, &zero, 1e-6)?;
    let mean = y.mean_keepdim(2)?.abs()?.max_keepdim(1)?.max_keepdim(0)?.flatten_all()?.to_vec1::<f32>()?[0];
    assert!(mean < 1e-5, "mean {mean}");
    Ok(())
}

fn unsq3(t: &Tensor) -> crate::Result<Tensor> {
    crate::util::unsqueeze_to(t, 3)
}

#[test]
fn norm_ops_backward_matches_autograd() -> R {
    let x = rt(51, &[2, 5, 12]);
    let (shift, scale) = (rt(52, &[2, 1, 12]), rt(53, &[2, 1, 12]));
    for kind in [norm::NormKind::Layer, norm::NormKind::Rms] {
        let ins = [x.clone(), shift.clone(), scale.clone()];
        let want = grads_of(&ins, 54, |t| norm::composed(&t[0], None, &t[1], &t[2], 1e-5, kind));
        let got = grads_of(&ins, 54, |t| Ok(t[0].apply_op3(&t[1], &t[2], norm::NormModulateOp { eps: 1e-5, kind })?));
        for (a, e) in got.iter().zip(&want) {
            assert_close(a, e, 1e-5, &format!("{kind:?} grads"));
        }
    }
    let y = rt(55, &[2, 5, 12]);
    let ins = [x.clone(), shift.clone(), y.clone()];
    let want = grads_of(&ins, 56, |t| norm::gated_residual_composed(&t[0], &t[1], &t[2]));
    let got = grads_of(&ins, 56, |t| Ok(t[0].apply_op3(&t[1], &t[2], norm::GatedResidualOp)?));
    for (a, e) in got.iter().zip(&want) {
        assert_close(a, e, 1e-5, "gated residual grads");
    }
    Ok(())
}

#[test]
fn rope_matches_reference_and_inverts() -> R {
    let (b, h, l, d) = (2, 3, 11, 20);
    let x = rt(61, &[b, h, l, d]);
    let ang = (rt(62, &[l, d / 2]) * 3.0)?;
    let (cos, sin) = (ang.cos()?, ang.sin()?);
    for layout in [rope::RopeLayout::Half, rope::RopeLayout::Interleaved] {
        let r = x.apply_op3(&cos, &sin, rope::RopeOp { layout })?;
        let c = rope::apply(&x, &cos, &sin, layout)?;
        assert_close(&c, &r, 1e-6, &format!("{layout:?}"));
        let back = rope::apply(&c, &cos, &sin.neg()?, layout)?;
        assert_close(&back, &x, 1e-5, "rotation by -angle inverts");
        let want =
            grads_of(&[x.clone(), cos.clone(), sin.clone()], 63, |t| rope::composed(&t[0], &t[1], &t[2], layout));
        let got = grads_of(&[x.clone(), cos.clone(), sin.clone()], 63, |t| {
            Ok(t[0].apply_op3(&t[1], &t[2], rope::RopeOp { layout })?)
        });
        assert_close(&got[0], &want[0], 1e-5, "rope dx");
    }
    // Interleaved pair (0,1) rotates like a complex multiply by e^{i angle}.
    let i = rope::apply_rope_interleaved(&x, &cos, &sin)?;
    let (x0, x1) = (x.get(0)?.get(0)?.get(0)?.to_vec1::<f32>()?, i.get(0)?.get(0)?.get(0)?.to_vec1::<f32>()?);
    let (c0, s0) = (cos.get(0)?.to_vec1::<f32>()?[0], sin.get(0)?.to_vec1::<f32>()?[0]);
    assert!((x1[0] - (x0[0] * c0 - x0[1] * s0)).abs() < 1e-6 && (x1[1] - (x0[1] * c0 + x0[0] * s0)).abs() < 1e-6);
    Ok(())
}

#[test]
fn rope3d_freqs_follow_cosmos() -> R {
    let cfg = rope::Rope3dConfig::cosmos(128);
    assert_eq!(cfg.band_dims(), [44, 42, 42]);
    let (cos, sin) = rope::rope3d_freqs(&cfg, [2, 3, 4], Some(16.0), &CPU)?;
    assert_eq!(cos.dims(), [24, 64]);
    // Token (t=1, h=2, w=3) is row 1*12 + 2*4 + 3 = 23.
    let c: Vec<f32> = cos.get(23)?.to_vec1()?;
    let s: Vec<f32> = sin.get(23)?.to_vec1()?;
    let theta_t = 10000f64 * 2f64.powf(44.0 / 42.0);
    let pt = 1.0 / 16.0 * 24.0;
    for i in [0usize, 5, 21] {
        let a = pt / theta_t.powf(2.0 * i as f64 / 44.0);
        assert!((c[i] as f64 - a.cos()).abs() < 1e-5 && (s[i] as f64 - a.sin()).abs() < 1e-5, "t band {i}");
    }
    for (off, pos) in [(22usize, 2.0f64), (43, 3.0)] {
        for i in [0usize, 7, 20] {
            let a = pos / 10000f64.powf(2.0 * i as f64 / 42.0);
            assert!((c[off + i] as f64 - a.cos()).abs() < 1e-5, "band at {off} index {i}");
        }
    }
    Ok(())
}

#[test]
fn fsq_matches_official_formula() -> R {
    let levels = [8usize, 5, 5, 5];
    let z = (rt(71, &[3, 17, 4]) * 4.0)?;
    let (codes, idx) = fsq::fsq_quantize(&z, &levels)?;
    let (rc, ri) = fsq::reference(&crate::host_f32(&z)?, &levels)?;
    assert_close(&codes, &Tensor::from_vec(rc, (3, 17, 4), &CPU)?, 1e-6, "fsq codes");
    assert_eq!(idx.flatten_all()?.to_vec1::<u32>()?, ri);
    assert_eq!(idx.dims(), [3, 17]);
    // Round trip index -> code.
    let back = fsq::fsq_indices_to_codes(&idx, &levels)?;
    assert_close(&back, &codes, 1e-6, "indices_to_codes");
    // Exact values: z = 0 -> code 0 with index 4 + 2*8 + 2*40 + 2*200 = 500; saturation -> 3/4 and -1.
    let zz = Tensor::new(&[[0f32, 0., 0., 0.], [50., 50., -50., 0.], [-50., -50., 50., 0.]], &CPU)?;
    let (c, i) = fsq::fsq_quantize(&zz, &levels)?;
    assert_eq!(i.to_vec1::<u32>()?, vec![500, 439, 560]);
    assert_eq!(c.to_vec2::<f32>()?[1], vec![0.75, 1.0, -1.0, 0.0]);
    assert_eq!(c.to_vec2::<f32>()?[2], vec![-1.0, -1.0, 1.0, 0.0]);
    // Straight-through gradient: d code / dz = half_l (1 - tanh^2(z + shift)) / half_width.
    let want = grads_of(std::slice::from_ref(&z), 72, |t| Ok(fsq::composed(&t[0], &levels)?.0));
    let got = grads_of(std::slice::from_ref(&z), 72, |t| {
        Ok(t[0].apply_op1(fsq::FsqOp { levels: levels.to_vec(), want: fsq::FsqOutput::Codes })?)
    });
    assert_close(&got[0], &want[0], 1e-5, "fsq grads");
    Ok(())
}

/// Latents that probe the FSQ step thresholds: random at several scales, every threshold and
/// its 64 float neighbours either side, signed zeros, subnormals, huge values and infinities.
fn fsq_probe_values(steps: &[fsq::LevelSteps], seed: u64) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::new();
    for (k, scale) in [0.01f32, 0.3, 1.0, 3.0, 10.0].into_iter().enumerate() {
        v.extend(crate::random_f32(seed + k as u64, 4000).into_iter().map(|x| x * scale));
    }
    for s in steps {
        for &t in &s.thresholds {
            for d in -64i32..=64 {
                // Neighbours in magnitude on the threshold's side of zero (down to zero, up to inf).
                let (sign, mag) = (t.to_bits() & 0x8000_0000, (t.to_bits() & 0x7fff_ffff) as i64);
                v.push(f32::from_bits(sign | (mag + d as i64).clamp(0, 0x7f80_0000) as u32));
            }
        }
    }
    let edge = [
        0.0f32,
        -0.0,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        1e-45,
        -1e-45,
        1e-40,
        -1e-40,
        0.5,
        -0.5,
        9.0,
        -9.0,
        1e30,
        -1e30,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    v.extend(edge);
    v
}

#[test]
fn fsq_level_steps_reproduce_reference() -> R {
    for (n, levels) in
        [vec![8usize, 5, 5, 5], vec![7, 5, 5, 5, 5], vec![8, 8, 8, 6, 5], vec![2, 3, 4, 6], vec![16, 17, 9, 10]]
            .into_iter()
            .enumerate()
    {
        let steps = fsq::level_steps(&levels)?;
        let ks = fsq::kernel_steps(&levels)?.expect("the threshold kernels take these levels");
        let cs = fsq::level_constants(&levels)?;
        for (((s, k), c), &l) in steps.iter().zip(&ks).zip(&cs).zip(&levels) {
            let c = c.map(|x| x as f32);
            let hw = c[3];
            // l integer levels; the zero level splits into -0 and +0 (l + 1 values, l thresholds).
            assert_eq!(s.values.len(), l + 1, "level {l}: values {:?}", s.values);
            assert_eq!(s.thresholds.len(), l);
            assert!(s.thresholds.windows(2).all(|w| w[0] < w[1]), "level {l}: thresholds ascend");
            assert_eq!(s.values[0], -((l / 2) as f32), "level {l}: lowest level");
            for v in fsq_probe_values(&steps, 900 + n as u64) {
                let (want, got) = (fsq::round_level(v, c), s.level(v));
                assert_eq!(got.to_bits(), want.to_bits(), "level {l} at z = {v:e} ({:#010x})", v.to_bits());
                // The kernels' arithmetic: counted level, reciprocal division, digit.
                assert_eq!(k.level(v).to_bits(), want.to_bits(), "kernel level {l} at z = {v:e}");
                assert_eq!(k.code(v).to_bits(), (want / hw).to_bits(), "kernel code {l} at z = {v:e}");
                assert_eq!(k.digit(v).to_bits(), (want + hw).to_bits(), "kernel digit {l} at z = {v:e}");
            }
            assert!(k.code(f32::NAN).is_nan() && k.digit(f32::NAN).is_nan());
            assert!(s.level(f32::NAN).is_nan() && fsq::round_level(f32::NAN, c).is_nan());
        }
        // Whole rows: codes and indices from the steps equal the reference's, bit for bit.
        let d = levels.len();
        let z: Vec<f32> = fsq_probe_values(&steps, 950 + n as u64)
            .into_iter()
            .chain([f32::NAN])
            .collect::<Vec<_>>()
            .chunks_exact(d)
            .flatten()
            .copied()
            .collect();
        let (rc, ri) = fsq::reference(&z, &levels)?;
        for (r, row) in z.chunks(d).enumerate() {
            let mut acc = 0f32;
            for (i, &v) in row.iter().enumerate() {
                let [_, _, _, _, basis] = cs[i].map(|x| x as f32);
                let code = ks[i].code(v);
                assert!(code.to_bits() == rc[r * d + i].to_bits() || (code.is_nan() && rc[r * d + i].is_nan()));
                acc += ks[i].digit(v) * basis;
            }
            assert_eq!(acc as u32, ri[r], "index of row {row:?}");
        }
    }
    Ok(())
}

#[test]
fn fsq_kernel_steps_cover_levels_2_to_16() -> R {
    for l in 2..=16usize {
        let ks = fsq::kernel_steps(&[l])?.unwrap_or_else(|| panic!("level {l} falls back to tanh"));
        assert_eq!(ks[0].thresholds.len(), l);
        assert_eq!(ks[0].digit_thresholds.len(), l - 1);
    }
    Ok(())
}

/// f32 `tanh` is monotone non-decreasing over every float (what makes [`fsq::level_steps`] exact).
/// About 4.3e9 evaluations, ~30 s in release: `cargo test --release -p vw-tensor-kernels -- --ignored tanh_monotone`.
#[test]
#[ignore]
fn fsq_tanh_monotone_over_all_f32() {
    let mut prev = f32::NEG_INFINITY.tanh();
    let neg = (0x8000_0000u32..=0xff80_0000).rev();
    let mut bad = Vec::new();
    for b in neg.chain(0..=0x7f80_0000u32) {
        let y = f32::from_bits(b).tanh();
        if y < prev && bad.len() < 8 {
            bad.push(b);
        }
        prev = y;
    }
    assert!(bad.is_empty(), "tanh decreases at {bad:08x?}");
}

#[test]
fn vq_nearest_matches_reference() -> R {
    let z = rt(81, &[53, 7]);
    let cb = rt(82, &[29, 7]);
    let got = vq::nearest_code(&z, &cb)?.to_vec1::<u32>()?;
    let want = vq::reference(&crate::host_f32(&z)?, &crate::host_f32(&cb)?, 7);
    assert_eq!(got, want);
    // A code is its own nearest neighbour.
    let self_idx = vq::nearest_code(&cb, &cb)?.to_vec1::<u32>()?;
    assert_eq!(self_idx, (0..29).collect::<Vec<u32>>());
    Ok(())
}

#[test]
fn bf16_inputs_keep_their_dtype() -> R {
    let q = rt(91, &[1, 2, 9, 8]).to_dtype(DType::BF16)?;
    let o = attention::flash_attn(&q, &q, &q, 0.3, true, None)?;
    assert_eq!(o.dtype(), DType::BF16);
    let r = attention::reference_tensor(&q, &q, &q, 0.3, true, None)?;
    assert_close(&o, &r, 1e-2, "bf16 attention");
    Ok(())
}
