//! Unit tests of the task image's inputs: finding the host's programs and their libraries, the hash,
//! the build context and the build lock. Building the image itself is left to the end-to-end tests.

use super::*;

#[test]
fn parse_ldd_keeps_the_library_paths_and_the_loader_but_not_the_vdso() {
    let text = "\tlinux-vdso.so.1 (0x00007ffd1d9f3000)\n\
                \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0c3a600000)\n\
                \t/lib64/ld-linux-x86-64.so.2 (0x00007f0c3a8e5000)\n";
    assert_eq!(
        parse_ldd(text).unwrap(),
        [
            PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
            PathBuf::from("/lib64/ld-linux-x86-64.so.2")
        ]
    );
    assert_eq!(parse_ldd("\tstatically linked\n").unwrap(), Vec::<PathBuf>::new());
    let err = parse_ldd("\tlibgone.so.1 => not found\n").unwrap_err();
    assert!(format!("{err}").contains("libgone.so.1 => not found"), "{err}");
}

#[test]
fn host_files_hold_each_command_under_bin_and_the_libraries_it_needs() {
    let bin_dirs = HOST_BIN_DIRS.map(Path::new);
    let files = host_files(&["sh", "sleep"], &bin_dirs).unwrap();
    let paths: Vec<&Path> = files.iter().map(|file| file.path.as_path()).collect();
    assert!(paths.is_sorted(), "{paths:?}");
    for command in ["/bin/sh", "/bin/sleep"] {
        let file = files.iter().find(|file| file.path == Path::new(command)).unwrap();
        assert!(file.bytes.starts_with(b"\x7fELF"), "{command} is not an ELF file");
    }
    let sh = bin_dirs
        .iter()
        .map(|dir| dir.join("sh"))
        .find(|path| path.is_file())
        .unwrap();
    for library in shared_libraries(&sh).unwrap() {
        assert!(
            paths.contains(&library.as_path()),
            "{} missing from {paths:?}",
            library.display()
        );
    }

    let err = host_files(&["sh", "gofer-no-such-command"], &bin_dirs).unwrap_err();
    assert!(format!("{err}").contains("`gofer-no-such-command`"), "{err}");
}

#[test]
fn the_inputs_hash_is_sha256_and_covers_paths_bytes_and_the_dockerfile() {
    // SHA-256 of nothing.
    assert_eq!(
        inputs_hash(&[], ""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let file = |path: &str, bytes: &[u8]| ImageFile {
        path: PathBuf::from(path),
        bytes: bytes.to_vec(),
    };
    let base = inputs_hash(&[file("/bin/sh", b"a")], DOCKERFILE);
    assert_eq!(base, inputs_hash(&[file("/bin/sh", b"a")], DOCKERFILE));
    for other in [
        inputs_hash(&[file("/bin/sh", b"b")], DOCKERFILE),
        inputs_hash(&[file("/bin/sx", b"a")], DOCKERFILE),
        inputs_hash(&[file("/bin/sh", b"a")], "FROM scratch\n"),
        // Where one file ends and the next begins is part of what is hashed.
        inputs_hash(&[file("/bin/sh", b""), file("a", b"")], DOCKERFILE),
    ] {
        assert_ne!(base, other);
    }
}

#[test]
fn build_context_holds_every_file_executable_and_the_labelled_dockerfile() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ImageFile {
            path: PathBuf::from("/bin/sh"),
            bytes: b"\x7fELF fake sh".to_vec(),
        },
        ImageFile {
            path: PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            bytes: b"\x7fELF fake loader".to_vec(),
        },
    ];
    write_build_context(dir.path(), &files, "0123456789abcdef").unwrap();
    for file in &files {
        let path = dir.path().join("rootfs").join(file.path.strip_prefix("/").unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), file.bytes);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o755);
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("Dockerfile")).unwrap(),
        "FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\nENTRYPOINT [\"/bin/timeout\", \"0\"]\n\
         CMD [\"/bin/sh\"]\nLABEL gofer.image.inputs-sha256=0123456789abcdef\n"
    );
}

#[test]
fn build_lock_is_exclusive_and_breaks_stale_locks() {
    let dir = tempfile::tempdir().unwrap();
    let lock = BuildLock::acquire(dir.path(), "repo/name:tag").unwrap();
    assert_eq!(lock.path, dir.path().join("gofer-task-image-repo_name_tag.lock"));
    assert_eq!(
        std::fs::read_to_string(&lock.path).unwrap(),
        std::process::id().to_string()
    );
    assert!(!lock_is_stale(&lock.path));

    // A waiter gets the lock once the holder releases it.
    let waiter = {
        let dir = dir.path().to_path_buf();
        std::thread::spawn(move || BuildLock::acquire(&dir, "repo/name:tag").map(|_| Instant::now()))
    };
    std::thread::sleep(Duration::from_millis(300));
    let released = Instant::now();
    drop(lock);
    assert!(waiter.join().unwrap().unwrap() >= released);

    // A lock whose owner no longer exists is taken over.
    let path = dir.path().join("gofer-task-image-dead.lock");
    std::fs::write(&path, u32::MAX.to_string()).unwrap();
    assert!(lock_is_stale(&path));
    let lock = BuildLock::acquire(dir.path(), "dead").unwrap();
    drop(lock);
    assert!(!path.exists());
}
