//! Every WGSL file in shaders/ parses and validates with naga, and the crate embeds them all.

#[test]
fn every_shader_validates_with_naga() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for path in &files {
        let src = std::fs::read_to_string(path).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{name}: parse error:\n{}", e.emit_to_string(&src)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: validation error: {e:?}"));
        assert!(
            hotrow::SHADERS.iter().any(|(n, s)| *n == name && *s == src),
            "{name} is not embedded in hotrow::SHADERS"
        );
        eprintln!("{name}: ok ({} entry points)", module.entry_points.len());
    }
    assert_eq!(
        files.len(),
        hotrow::SHADERS.len(),
        "SHADERS lists a file that is not in shaders/"
    );
}
