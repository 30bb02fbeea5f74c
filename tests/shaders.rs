//! Every kernel the crate builds validates with naga and translates to SPIR-V (Vulkan),
//! MSL (Metal) and HLSL (DX12), for each element prefix it is compiled with; every WGSL
//! file is embedded; and every params block in Rust matches its WGSL struct.

/// Whether a module reads rows as WGSL `f16` (built only where the adapter has
/// `shader-f16`): it is validated with that capability and translated for the backend
/// versions that have it.
fn uses_f16(src: &str) -> bool {
    src.starts_with("enable f16;")
}

fn parse(file: &str, src: &str) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{file}: parse error:\n{}", e.emit_to_string(src)));
    let caps = if uses_f16(src) {
        naga::valid::Capabilities::SHADER_FLOAT16
    } else {
        naga::valid::Capabilities::empty()
    };
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
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
        let mut msl = naga::back::msl::Options::default();
        let mut hlsl_options = naga::back::hlsl::Options::default();
        if uses_f16(src) {
            msl.lang_version = (2, 1);
            hlsl_options.shader_model = naga::back::hlsl::ShaderModel::V6_2;
        }
        naga::back::msl::write_string(&module, &info, &msl, &Default::default())
            .unwrap_or_else(|e| panic!("{file}: MSL: {e:?}"));
        let mut hlsl = String::new();
        let options = hlsl_options;
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
