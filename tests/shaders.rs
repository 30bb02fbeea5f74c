//! Every kernel the crate builds validates with naga and translates to SPIR-V (Vulkan),
//! MSL (Metal) and HLSL (DX12), for each element prefix it is compiled with; every WGSL
//! file is embedded; and every params block in Rust matches its WGSL struct.

fn parse(file: &str, src: &str) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{file}: parse error:\n{}", e.emit_to_string(src)));
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{file}: validation error: {e:?}\n{src}"));
    (module, info)
}

#[test]
fn every_kernel_validates_and_translates_for_every_backend() {
    let modules = hotrow::shader_modules();
    assert!(modules.len() >= 4);
    for (file, src) in &modules {
        let (module, info) = parse(file, src);
        assert!(!module.entry_points.is_empty(), "{file}: no entry point");
        naga::back::spv::write_vec(&module, &info, &Default::default(), None)
            .unwrap_or_else(|e| panic!("{file}: SPIR-V: {e:?}"));
        naga::back::msl::write_string(&module, &info, &Default::default(), &Default::default())
            .unwrap_or_else(|e| panic!("{file}: MSL: {e:?}"));
        let mut hlsl = String::new();
        let options = naga::back::hlsl::Options::default();
        let pipeline = naga::back::hlsl::PipelineOptions::default();
        naga::back::hlsl::Writer::new(&mut hlsl, &options, &pipeline)
            .write(&module, &info, None)
            .unwrap_or_else(|e| panic!("{file}: HLSL: {e:?}"));
        eprintln!("{file}: ok ({} bytes of WGSL)", src.len());
    }
}

#[test]
fn every_wgsl_file_is_embedded() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut on_disk: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    on_disk.sort();
    let mut embedded: Vec<(String, String)> = hotrow::shader_files()
        .into_iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect();
    embedded.sort();
    assert_eq!(
        on_disk, embedded,
        "shaders/ and the embedded kernels differ"
    );
}

#[test]
fn params_blocks_match_their_wgsl_structs() {
    let modules = hotrow::shader_modules();
    for (name, size, offsets) in hotrow::params_layouts() {
        let mut found = 0;
        for (file, src) in &modules {
            let (module, _) = parse(file, src);
            for (_, ty) in module.types.iter() {
                if ty.name.as_deref() != Some(name) {
                    continue;
                }
                let naga::TypeInner::Struct { members, span } = &ty.inner else {
                    panic!("{file}: {name} is not a struct");
                };
                assert_eq!(*span as usize, size, "{file}: size of {name}");
                let wgsl: Vec<usize> = members.iter().map(|m| m.offset as usize).collect();
                assert_eq!(wgsl, offsets, "{file}: field offsets of {name}");
                found += 1;
            }
        }
        assert!(found > 0, "{name} is declared in no shader");
    }
}
