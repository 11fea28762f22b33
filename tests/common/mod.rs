//! Helpers shared by the integration tests.

/// Every tensor of every safetensors file in `dir`, by file and name, as f32 values.
pub fn tensors_of(dir: &std::path::Path) -> Vec<(String, String, Vec<f32>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            let file = p.file_name().unwrap().to_string_lossy().into_owned();
            for (k, t) in candle_core::safetensors::load(&p, &candle_core::Device::Cpu).unwrap() {
                let v = t.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                out.push((file.clone(), k, v));
            }
        }
    }
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    assert!(!out.is_empty(), "no tensors in {}", dir.display());
    out
}

/// Asserts that two folders hold the same tensors, naming the first that differs (and by how much)
/// instead of printing the values.
pub fn assert_same_tensors(a: &std::path::Path, b: &std::path::Path) {
    let (ta, tb) = (tensors_of(a), tensors_of(b));
    let names = |t: &[(String, String, Vec<f32>)]| t.iter().map(|(f, k, _)| format!("{f}:{k}")).collect::<Vec<_>>();
    assert_eq!(names(&ta), names(&tb), "{} and {}: different tensors", a.display(), b.display());
    for ((file, key, va), (_, _, vb)) in ta.iter().zip(&tb) {
        let diff = va.iter().zip(vb).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(va == vb, "{file}:{key} differs between {} and {} (max |diff| {diff:e})", a.display(), b.display());
    }
}
