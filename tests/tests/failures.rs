//! End-to-end: what must fail, fails with one clear error and leaves nothing behind (issue 2,
//! "Done when": bad config, tampered layer blob; the tampered rootfs is image.rs's, the tier's
//! one tampered-rootfs check).

use kata_cc_tests::containerd::{toml_quoted as quoted, toml_set, Containerd};
use kata_cc_tests::image::flip_byte;
use kata_cc_tests::{paths, Options, TestImage};

/// Runs a container with a config changed by `edit`; asserts ctr fails and names `needle`.
fn run_fails_naming(
    cd: &Containerd,
    what: &str,
    edit: impl FnOnce(String) -> String,
    needle: &str,
) {
    let baked = std::fs::read_to_string(paths::baked_config()).expect("baked config");
    std::fs::write(cd.config_path(), edit(baked)).expect("write config");
    let id = cd.id(what);
    let out = cd.run(&id, &[], &TestImage::busybox(), &["true"]);
    assert!(
        !out.success(),
        "{what}: ctr run succeeded: {}",
        out.describe()
    );
    assert!(
        out.stderr_str().contains(needle),
        "{what}: the error does not name {needle:?}: {}\n{}",
        out.describe(),
        cd.log_tail()
    );
    // `ctr run --rm` removes the container; the shim must have removed everything else
    // (checked by finish()); no task or container may remain in between either.
    let ls = cd.ctr(&["containers", "ls", "-q"]);
    assert_eq!(
        ls.stdout_str().trim(),
        "",
        "{what}: container left: {}",
        ls.describe()
    );
}

#[test]
fn bad_config_is_one_clear_error() {
    let cd = Containerd::start("bad-config");
    let missing_kernel = cd.dir.join("no-such-vmlinuz");
    run_fails_naming(
        &cd,
        "nokernel",
        |t| toml_set(&t, "hypervisor.qemu", "kernel", &quoted(&missing_kernel)),
        &missing_kernel.display().to_string(),
    );
    let missing_image = cd.dir.join("no-such-rootfs.img");
    run_fails_naming(
        &cd,
        "noimage",
        |t| toml_set(&t, "hypervisor.qemu", "image", &quoted(&missing_image)),
        &missing_image.display().to_string(),
    );
    let missing_qemu = cd.dir.join("not-installed/qemu-system-x86_64");
    run_fails_naming(
        &cd,
        "noqemu",
        |t| toml_set(&t, "hypervisor.qemu", "path", &quoted(&missing_qemu)),
        &missing_qemu.display().to_string(),
    );
    let config = cd.config_path().display().to_string();
    run_fails_naming(
        &cd,
        "badtoml",
        |t| format!("{t}\n[hypervisor.qemu\nthis is not toml\n"),
        &config,
    );
    run_fails_naming(
        &cd,
        "badtype",
        |t| toml_set(&t, "hypervisor.qemu", "default_memory", "\"lots\""),
        "default_memory",
    );
    cd.finish();
}

#[test]
fn runtime_config_path_option_wins() {
    // ctr's --runtime-config-path is containerd's runtime option ConfigPath: it comes before
    // KATA_CC_CONFIG_PATH, so a broken file given there must be the one reported.
    let cd = Containerd::start("config-option");
    let broken = cd.dir.join("option-config.toml");
    std::fs::write(&broken, "[hypervisor.qemu\nnot toml\n").expect("write");
    let id = cd.id("option");
    let opt = broken.display().to_string();
    let out = cd.run(
        &id,
        &["--runtime-config-path", &opt],
        &TestImage::busybox(),
        &["true"],
    );
    assert!(!out.success(), "ctr run succeeded: {}", out.describe());
    assert!(
        out.stderr_str().contains(&opt),
        "the error does not name {opt}: {}\n{}",
        out.describe(),
        cd.log_tail()
    );
    cd.finish();
}

#[test]
fn changed_layer_blob_fails_naming_the_layer() {
    // Separate images (and a separate containerd) so no other test sees the changed blobs.
    let images = [TestImage::busybox_uncompressed(), TestImage::busybox()];
    let cd = Containerd::start_with(
        "layer-tamper",
        Options {
            images: images.to_vec(),
            ..Options::default()
        },
    );
    for img in &images {
        // The import unpacked the layer already; the blob is changed afterwards, as an attacker
        // with access to the content store would.
        let blob = cd
            .dir
            .join("root/io.containerd.content.v1.content/blobs/sha256")
            .join(img.layer_hex());
        let len = std::fs::metadata(&blob)
            .unwrap_or_else(|e| panic!("{}: {e}", blob.display()))
            .len();
        flip_byte(&blob, len / 2);
        let id = cd.id("layer");
        let out = cd.run(&id, &[], img, &["true"]);
        assert!(
            !out.success(),
            "{}: a changed layer ran: {}",
            img.name,
            out.describe()
        );
        assert!(
            out.stderr_str().contains(img.layer_hex()),
            "{}: the error does not name layer {}: {}\n{}",
            img.name,
            img.layer_digest,
            out.describe(),
            cd.log_tail()
        );
    }
    cd.finish();
}
