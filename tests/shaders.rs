//! Validates every WGSL file under `shaders/` with naga (no GPU needed) and checks it against
//! its Rust side: the registry lists every file, every typed entry point exists, the bindings
//! match the declared layout, and each `#[repr(C)]` params struct has its WGSL twin's size.

use std::collections::BTreeSet;
use std::path::Path;

use naga::valid::{Capabilities, ValidationFlags, Validator};
use taylormap::gpu::shader::{BindingKind, ConvParams, ConvSpec, Kernel, Shader};

fn parse(shader: Shader) -> naga::Module {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("shaders")
        .join(shader.file_name());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    assert_eq!(
        text,
        shader.source(),
        "{path:?} differs from the compiled-in source"
    );
    naga::front::wgsl::parse_str(&text).unwrap_or_else(|e| {
        panic!(
            "{}",
            e.emit_to_string_with_path(&text, &path.to_string_lossy())
        )
    })
}

#[test]
fn every_shader_file_is_registered() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    let registered: BTreeSet<String> = Shader::ALL
        .iter()
        .map(|s| s.file_name().to_string())
        .collect();
    assert_eq!(on_disk, registered);
}

#[test]
fn every_shader_validates() {
    for shader in Shader::ALL {
        let module = parse(shader);
        Validator::new(ValidationFlags::all(), Capabilities::default())
            .validate(&module)
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {}",
                    shader.file_name(),
                    e.emit_to_string(shader.source())
                )
            });
        // Each file opens with a comment listing its bindings and dispatch shape.
        let head: String = shader
            .source()
            .lines()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            head.starts_with("// ") && head.contains("Bindings") && head.contains("Dispatch"),
            "{} must open with a comment listing bindings and dispatch shape",
            shader.file_name()
        );
    }
}

#[test]
fn every_kernel_has_its_entry_point() {
    for kernel in Kernel::all() {
        let module = parse(kernel.shader());
        let ep = module
            .entry_points
            .iter()
            .find(|e| e.name == kernel.entry_point())
            .unwrap_or_else(|| {
                panic!(
                    "{} has no entry point '{}'",
                    kernel.shader().file_name(),
                    kernel.entry_point()
                )
            });
        assert_eq!(ep.stage, naga::ShaderStage::Compute);
        assert_eq!(ep.workgroup_size, [64, 1, 1], "{}", kernel.label());
    }
    // And every entry point is reachable from Rust.
    for shader in Shader::ALL {
        let module = parse(shader);
        for ep in &module.entry_points {
            assert!(
                Kernel::all()
                    .iter()
                    .any(|k| k.shader() == shader && k.entry_point() == ep.name),
                "{}: entry point '{}' has no Kernel",
                shader.file_name(),
                ep.name
            );
        }
    }
}

#[test]
fn overridable_constants_match_their_specialisation() {
    // Every `override` of conv2d.wgsl gets a value from ConvSpec (a missing one fails pipeline
    // creation, an extra one would be silently ignored), and no other shader declares any.
    let spec = ConvSpec::of(&ConvParams::default());
    let given: BTreeSet<&str> = spec.constants().iter().map(|(name, _)| *name).collect();
    assert_eq!(
        given.len(),
        spec.constants().len(),
        "a constant is given twice"
    );
    for shader in Shader::ALL {
        let module = parse(shader);
        let declared: BTreeSet<&str> = module
            .overrides
            .iter()
            .map(|(_, o)| o.name.as_deref().expect("named override"))
            .collect();
        if shader == Shader::Conv2d {
            assert_eq!(declared, given);
            for (_, o) in module.overrides.iter() {
                assert!(
                    o.init.is_none(),
                    "{:?} has a default: a value must be given",
                    o.name
                );
            }
        } else {
            assert!(declared.is_empty(), "{}: {declared:?}", shader.file_name());
        }
    }
}

#[test]
fn bindings_match_the_layouts() {
    for shader in Shader::ALL {
        let module = parse(shader);
        let mut found = vec![];
        for (_, var) in module.global_variables.iter() {
            let Some(binding) = &var.binding else {
                continue;
            };
            assert_eq!(binding.group, 0, "{}", shader.file_name());
            let kind = match var.space {
                naga::AddressSpace::Uniform => BindingKind::Uniform,
                naga::AddressSpace::Storage { access } => {
                    if access.contains(naga::StorageAccess::STORE) {
                        BindingKind::StorageReadWrite
                    } else {
                        BindingKind::StorageRead
                    }
                }
                other => panic!("{}: unexpected address space {other:?}", shader.file_name()),
            };
            found.push((binding.binding, kind));
        }
        found.sort_by_key(|(b, _)| *b);
        let expected: Vec<(u32, BindingKind)> = shader
            .bindings()
            .iter()
            .enumerate()
            .map(|(i, k)| (i as u32, *k))
            .collect();
        assert_eq!(found, expected, "{}", shader.file_name());
    }
}

#[test]
fn params_structs_match_their_wgsl_twins() {
    let mut checked = 0;
    for shader in Shader::ALL {
        let module = parse(shader);
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).unwrap();
        for (name, rust_size) in shader.structs() {
            let (handle, _) = module
                .types
                .iter()
                .find(|(_, t)| t.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("{} has no struct {name}", shader.file_name()));
            let wgsl_size = layouter[handle].size as usize;
            assert_eq!(
                wgsl_size,
                rust_size,
                "{}: struct {name} is {wgsl_size} bytes in WGSL, {rust_size} in Rust",
                shader.file_name()
            );
            assert_eq!(
                rust_size % 16,
                0,
                "{name}: uniform structs are 16-byte multiples"
            );
            checked += 1;
        }
        // The uniform binding uses the params struct.
        let (params, _) = shader.params();
        let uniform = module
            .global_variables
            .iter()
            .find(|(_, v)| v.space == naga::AddressSpace::Uniform)
            .map(|(_, v)| module.types[v.ty].name.clone())
            .unwrap();
        assert_eq!(uniform.as_deref(), Some(params), "{}", shader.file_name());
    }
    assert_eq!(checked, 7);
}
