//! Unit tests of the setup sequence over the recording seam (no root).

use std::path::{Path, PathBuf};

use expect_test::expect;

use super::cgroup::Cgroup;
use super::confine::{Confinement, KEPT_CAPABILITIES, denied_syscall_names};
use super::error::SandboxError;
use super::plan::{HostEntry, Mask, Plan, PlannedBind, PlannedRoot, plan_host_view};
use super::setup;
use super::spec::{Limits, RootFs, SandboxSpec, WorkspaceSpec};
use super::sys::recording::RecordingSys;

fn plan(root: PlannedRoot) -> Plan {
    Plan {
        binds: Vec::new(),
        profile: super::spec::Profile::Job,
        root,
        workspace_path: PathBuf::from("/work"),
        workspace_lower: vec![PathBuf::from("/layers/dep"), PathBuf::from("/layers/base")],
        workspace_upper: PathBuf::from("/run/job/upper"),
        workspace_work: PathBuf::from("/run/job/work"),
        script: b"echo hi\n".to_vec(),
        env: vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("LANG".into(), "C.UTF-8".into()),
        ],
        hostname: "kiln".into(),
        network: false,
        limits: Limits::default(),
        user_namespace: None,
    }
}

fn host_plan() -> Plan {
    plan(PlannedRoot::Host {
        entries: vec![
            HostEntry::Symlink {
                name: "bin".into(),
                target: "usr/bin".into(),
            },
            HostEntry::Empty("dev".into()),
            HostEntry::Bind("etc".into()),
            HostEntry::Empty("home".into()),
            HostEntry::Empty("proc".into()),
            HostEntry::Bind("usr".into()),
            HostEntry::Bind("var".into()),
            HostEntry::Empty("work".into()),
        ],
        masks: vec![
            Mask::Dir("/var/tmp".into()),
            Mask::File("/etc/secret".into()),
        ],
    })
}

#[test]
fn host_view_sequence() {
    let mut sys = RecordingSys::default();
    let plan = host_plan();
    setup::enter_namespaces(&mut sys, &plan).unwrap();
    setup::enter_cgroup_namespace(&mut sys).unwrap();
    setup::configure_namespaces(&mut sys, &plan).unwrap();
    setup::build_root(&mut sys, &plan).unwrap();
    let err = setup::exec_job(&mut sys, &plan, &Confinement::compile().unwrap());
    assert!(matches!(err, SandboxError::Exec { .. }), "{err}");
    expect![[r#"
        unshare CLONE_NEWUTS|CLONE_NEWIPC|CLONE_NEWPID|CLONE_NEWNET
        unshare CLONE_NEWCGROUP
        sethostname kiln
        ioctl SIOCSIFFLAGS lo up
        unshare CLONE_NEWNS
        mount - / type=- flags=MS_REC|MS_PRIVATE data=-
        mount tmpfs /tmp type=tmpfs flags=MS_NOSUID|MS_NODEV data=mode=0755
        chdir /tmp
        mkdir /tmp/newroot 755
        mkdir /tmp/oldroot 755
        mkdir /tmp/empty-layer 755
        pivot_root /tmp /tmp/oldroot
        chdir /
        mount tmpfs /newroot type=tmpfs flags=MS_NOSUID|MS_NODEV data=mode=0755
        symlink /newroot/bin -> usr/bin
        mkdir /newroot/dev 755
        mkdir /newroot/etc 755
        mount /oldroot/etc /newroot/etc type=- flags=MS_BIND|MS_REC data=-
        mkdir /newroot/home 755
        mkdir /newroot/proc 755
        mkdir /newroot/usr 755
        mount /oldroot/usr /newroot/usr type=- flags=MS_BIND|MS_REC data=-
        mkdir /newroot/var 755
        mount /oldroot/var /newroot/var type=- flags=MS_BIND|MS_REC data=-
        mkdir /newroot/work 755
        mkdir /newroot/proc 755
        mkdir /newroot/dev 755
        mkdir /newroot/tmp 755
        mkdir /newroot/.kiln 755
        mkdir /newroot/work 755
        create /newroot/.kiln/job.sh 555 (8 bytes)
        create /empty-file 444 (0 bytes)
        mount tmpfs /newroot/var/tmp type=tmpfs flags=MS_RDONLY|MS_NOSUID|MS_NODEV data=mode=0755,size=4k
        mount /empty-file /newroot/etc/secret type=- flags=MS_BIND data=-
        mount_setattr /newroot rdonly recursive
        chdir /oldroot/layers
        mount overlay /newroot/work type=overlay flags=0 data=lowerdir=dep:base,upperdir=/oldroot/run/job/upper,workdir=/oldroot/run/job/work,volatile
        chdir /
        mount proc /newroot/proc type=proc flags=MS_NOSUID|MS_NODEV|MS_NOEXEC data=-
        mount tmpfs /newroot/dev type=tmpfs flags=MS_NOSUID|MS_NOEXEC data=mode=0755,size=64k
        mknod /newroot/dev/null c 1:3 666
        mknod /newroot/dev/zero c 1:5 666
        mknod /newroot/dev/full c 1:7 666
        mknod /newroot/dev/random c 1:8 666
        mknod /newroot/dev/urandom c 1:9 666
        mknod /newroot/dev/tty c 5:0 666
        symlink /newroot/dev/fd -> /proc/self/fd
        symlink /newroot/dev/stdin -> /proc/self/fd/0
        symlink /newroot/dev/stdout -> /proc/self/fd/1
        symlink /newroot/dev/stderr -> /proc/self/fd/2
        symlink /newroot/dev/ptmx -> pts/ptmx
        mkdir /newroot/dev/shm 1777
        mount tmpfs /newroot/dev/shm type=tmpfs flags=MS_NOSUID|MS_NODEV|MS_NOEXEC data=mode=1777
        mkdir /newroot/dev/pts 755
        mount devpts /newroot/dev/pts type=devpts flags=MS_NOSUID|MS_NOEXEC data=newinstance,ptmxmode=0666,mode=620
        mount tmpfs /newroot/tmp type=tmpfs flags=MS_NOSUID|MS_NODEV data=mode=1777
        create /proc-mask 444 (0 bytes)
        mount /proc-mask /newroot/proc/acpi type=- flags=MS_BIND data=-
        mount_setattr /newroot/proc/acpi rdonly recursive
        mount /proc-mask /newroot/proc/asound type=- flags=MS_BIND data=-
        mount_setattr /newroot/proc/asound rdonly recursive
        mount /proc-mask /newroot/proc/interrupts type=- flags=MS_BIND data=-
        mount_setattr /newroot/proc/interrupts rdonly recursive
        mount /proc-mask /newroot/proc/kcore type=- flags=MS_BIND data=-
        mount_setattr /newroot/proc/kcore rdonly recursive
        mount /proc-mask /newroot/proc/keys type=- flags=MS_BIND data=-
        mount_setattr /newroot/proc/keys rdonly recursive
        mount /proc-mask /newroot/proc/kmsg type=- flags=MS_BIND data=-
        mount_setattr /newroot/proc/kmsg rdonly recursive
        mount /proc-mask /newroot/proc/latency_stats type=- flags=MS_BIND data=-
        mount_setattr /newroot/proc/latency_stats rdonly recursive
        mount /proc-mask /newroot/proc/sched_debug type=- flags=MS_BIND data=-
        mount_setattr /newroot/proc/sched_debug rdonly recursive
        mount /proc-mask /newroot/proc/scsi type=- flags=MS_BIND data=-
        mount_setattr /newroot/proc/scsi rdonly recursive
        mount /proc-mask /newroot/proc/timer_list type=- flags=MS_BIND data=-
        mount_setattr /newroot/proc/timer_list rdonly recursive
        mount /proc-mask /newroot/proc/timer_stats type=- flags=MS_BIND data=-
        mount_setattr /newroot/proc/timer_stats rdonly recursive
        mount /newroot/proc/bus /newroot/proc/bus type=- flags=MS_BIND|MS_REC data=-
        mount_setattr /newroot/proc/bus rdonly recursive
        mount /newroot/proc/fs /newroot/proc/fs type=- flags=MS_BIND|MS_REC data=-
        mount_setattr /newroot/proc/fs rdonly recursive
        mount /newroot/proc/irq /newroot/proc/irq type=- flags=MS_BIND|MS_REC data=-
        mount_setattr /newroot/proc/irq rdonly recursive
        mount /newroot/proc/sys /newroot/proc/sys type=- flags=MS_BIND|MS_REC data=-
        mount_setattr /newroot/proc/sys rdonly recursive
        mount /newroot/proc/sysrq-trigger /newroot/proc/sysrq-trigger type=- flags=MS_BIND|MS_REC data=-
        mount_setattr /newroot/proc/sysrq-trigger rdonly recursive
        chdir /newroot
        pivot_root . .
        umount2 . detach
        chdir /
        chdir /work
        prctl PR_CAPBSET_DROP all but 0x404fb
        capset effective=permitted=0x404fb inheritable=0x0
        prctl PR_CAP_AMBIENT_CLEAR_ALL
        prctl PR_SET_NO_NEW_PRIVS
        seccomp x32 (4 instructions)
        seccomp enosys (25 instructions)
        seccomp deny (340 instructions)
        execve /bin/sh [/bin/sh /.kiln/job.sh] env=[PATH=/usr/bin:/bin LANG=C.UTF-8]
    "#]]
    .assert_eq(&sys.transcript());
}

#[test]
fn image_root_is_a_read_only_overlay_with_a_scaffold_on_top() {
    let mut sys = RecordingSys::default();
    let mut plan = plan(PlannedRoot::Image {
        layers: vec!["/images/top".into(), "/images/base".into()],
    });
    plan.workspace_path = PathBuf::from("/home/build/src");
    plan.workspace_lower.clear();
    setup::build_root(&mut sys, &plan).unwrap();
    let transcript = sys.transcript();
    let until_workspace: String = transcript
        .lines()
        .skip(9)
        .take(10)
        .map(|l| format!("{l}\n"))
        .collect();
    expect![[r#"
        mkdir /scaffold 755
        mkdir /scaffold/proc 755
        mkdir /scaffold/dev 755
        mkdir /scaffold/tmp 755
        mkdir /scaffold/.kiln 755
        mkdir /scaffold/home 755
        mkdir /scaffold/home/build 755
        mkdir /scaffold/home/build/src 755
        create /scaffold/.kiln/job.sh 555 (8 bytes)
        mount overlay /newroot type=overlay flags=MS_RDONLY data=lowerdir=/scaffold:/oldroot/images/top:/oldroot/images/base
    "#]]
    .assert_eq(&until_workspace);
    // No dependency layer: the workspace overlay stands on an empty one.
    assert!(transcript.contains(
        "mount overlay /newroot/home/build/src type=overlay flags=0 data=lowerdir=/empty-layer,upperdir=/oldroot/run/job/upper,workdir=/oldroot/run/job/work,volatile\n"
    ));
    assert!(
        !transcript.contains("mount_setattr /newroot rdonly"),
        "an image overlay without upper is read-only already"
    );
}

#[test]
fn non_root_maps_itself_to_root_in_a_user_namespace() {
    let mut sys = RecordingSys::default();
    let mut plan = host_plan();
    plan.user_namespace = Some((1000, 100));
    plan.network = true;
    setup::enter_namespaces(&mut sys, &plan).unwrap();
    setup::configure_namespaces(&mut sys, &plan).unwrap();
    expect![[r#"
        unshare CLONE_NEWUTS|CLONE_NEWIPC|CLONE_NEWUSER|CLONE_NEWPID
        write /proc/self/setgroups "deny"
        write /proc/self/uid_map "0 1000 1\n"
        write /proc/self/gid_map "0 100 1\n"
        sethostname kiln
    "#]]
    .assert_eq(&sys.transcript());
    let mut sys = RecordingSys::default();
    setup::build_root(&mut sys, &plan).unwrap();
    let transcript = sys.transcript();
    assert!(
        transcript.contains(",userxattr\n"),
        "overlay in a user namespace needs userxattr"
    );
    assert!(
        transcript.contains("mount /oldroot/dev/null /newroot/dev/null type=- flags=MS_BIND"),
        "no mknod in a user namespace"
    );
    assert!(!transcript.contains("mknod"));
}

#[test]
fn a_failing_step_stops_the_sequence_with_its_own_error() {
    let mut sys = RecordingSys {
        fail_on: Some("pivot_root . .".into()),
        ..Default::default()
    };
    let err = setup::build_root(&mut sys, &host_plan()).unwrap_err();
    assert!(matches!(err, SandboxError::PivotRoot { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "pivot_root to /newroot failed: EPERM: Operation not permitted"
    );
    assert_eq!(sys.calls.last().map(String::as_str), Some("pivot_root . ."));

    let mut sys = RecordingSys {
        fail_on: Some("mount overlay /newroot/work".into()),
        ..Default::default()
    };
    let err = setup::build_root(&mut sys, &host_plan()).unwrap_err();
    let SandboxError::MountOverlay {
        target, options, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(target, Path::new("/newroot/work"));
    assert!(options.starts_with("lowerdir=dep:base,"), "{options}");

    let mut sys = RecordingSys {
        fail_on: Some("unshare".into()),
        ..Default::default()
    };
    let err = setup::enter_namespaces(&mut sys, &host_plan()).unwrap_err();
    assert!(matches!(err, SandboxError::Unshare { .. }), "{err:?}");
}

#[test]
fn host_view_plan_lists_binds_symlinks_hidden_and_masks() {
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().canonicalize().unwrap();
    for dir in [
        "usr/bin",
        "etc",
        "home/alice",
        "root",
        "tmp",
        "var/tmp",
        "var/lib/kiln",
        "proc",
        "work",
    ] {
        std::fs::create_dir_all(root_path.join(dir)).unwrap();
    }
    std::fs::write(root_path.join("etc/token"), "secret").unwrap();
    std::os::unix::fs::symlink("usr/bin", root_path.join("bin")).unwrap();
    std::fs::write(root_path.join("swapfile"), "").unwrap();
    let exclude = [
        PathBuf::from("/var/lib/kiln"),
        "/etc/token".into(),
        "/nonexistent".into(),
    ];
    let planned = plan_host_view(&root_path, &exclude, Path::new("/work/ws")).unwrap();
    let PlannedRoot::Host { entries, masks } = planned else {
        panic!()
    };
    assert_eq!(
        entries,
        vec![
            HostEntry::Symlink {
                name: "bin".into(),
                target: "usr/bin".into()
            },
            HostEntry::Bind("etc".into()),
            HostEntry::Empty("home".into()),
            HostEntry::Empty("proc".into()),
            HostEntry::Empty("root".into()),
            HostEntry::Empty("tmp".into()),
            HostEntry::Bind("usr".into()),
            HostEntry::Bind("var".into()),
            HostEntry::Empty("work".into()),
            HostEntry::Empty("sys".into()),
            HostEntry::Empty("dev".into()),
            HostEntry::Empty(".kiln".into()),
        ]
    );
    assert_eq!(
        masks,
        vec![
            Mask::Dir("/var/tmp".into()),
            Mask::Dir("/var/lib/kiln".into()),
            Mask::File("/etc/token".into())
        ]
    );
}

#[test]
fn cgroup_v1_and_v2_layouts() {
    let limits = Limits {
        memory_bytes: Some(64 << 20),
        pids: Some(32),
    };
    let v1 = tempfile::tempdir().unwrap();
    for dir in ["memory", "pids"] {
        std::fs::create_dir_all(v1.path().join(dir)).unwrap();
        std::fs::write(v1.path().join(dir).join("cgroup.procs"), "").unwrap();
    }
    let own = "8:pids:/\n4:memory:/outer/job\n0::/\n";
    let mut sys = RecordingSys::default();
    let cgroup = Cgroup::prepare_in(&mut sys, v1.path(), own, &limits, 7)
        .unwrap()
        .unwrap();
    cgroup
        .add(&mut sys, nix::unistd::Pid::from_raw(42))
        .unwrap();
    cgroup.remove(&mut sys);
    let shown = sys
        .transcript()
        .replace(&v1.path().display().to_string(), "CG");
    expect![[r#"
        mkdir CG/memory/outer/job/kiln 755
        mkdir CG/memory/outer/job/kiln/7 755
        write CG/memory/outer/job/kiln/7/memory.limit_in_bytes "67108864"
        mkdir CG/pids/kiln 755
        mkdir CG/pids/kiln/7 755
        write CG/pids/kiln/7/pids.max "32"
        write CG/memory/outer/job/kiln/7/cgroup.procs "42"
        write CG/pids/kiln/7/cgroup.procs "42"
        rmdir CG/pids/kiln/7
        rmdir CG/memory/outer/job/kiln/7
        rmdir CG/memory/outer/job/kiln
        rmdir CG/pids/kiln
    "#]]
    .assert_eq(&shown);

    let v2 = tempfile::tempdir().unwrap();
    std::fs::write(v2.path().join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
    let mut sys = RecordingSys::default();
    Cgroup::prepare_in(&mut sys, v2.path(), "0::/\n", &limits, 7)
        .unwrap()
        .unwrap();
    let shown = sys
        .transcript()
        .replace(&v2.path().display().to_string(), "CG");
    expect![[r#"
        write CG/cgroup.subtree_control "+memory +pids"
        mkdir CG/kiln 755
        write CG/kiln/cgroup.subtree_control "+memory +pids"
        mkdir CG/kiln/7 755
        write CG/kiln/7/memory.max "67108864"
        write CG/kiln/7/pids.max "32"
    "#]]
    .assert_eq(&shown);

    // A missing controller is a clear failure, not a silent "unlimited".
    std::fs::write(v2.path().join("cgroup.controllers"), "cpu io\n").unwrap();
    let err =
        Cgroup::prepare_in(&mut RecordingSys::default(), v2.path(), "", &limits, 7).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cgroup limit memory cannot be applied: the cgroup v2 controller `memory` is not available"
    );
    let none = Cgroup::prepare_in(
        &mut RecordingSys::default(),
        v2.path(),
        "",
        &Limits::default(),
        7,
    )
    .unwrap();
    assert!(none.is_none());
}

fn spec() -> SandboxSpec {
    SandboxSpec::new(
        RootFs::Host { exclude: vec![] },
        WorkspaceSpec {
            path: "/work".into(),
            lower: vec![],
            upper: "/u".into(),
            work: "/w".into(),
        },
        "/job.sh".into(),
    )
}

#[test]
fn spec_is_strict_and_validated() {
    let json = serde_json::to_string(&spec()).unwrap();
    let back: SandboxSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec());
    let unknown = json.replacen("\"network\"", "\"netwerk\"", 1);
    assert!(
        serde_json::from_str::<SandboxSpec>(&unknown)
            .unwrap_err()
            .to_string()
            .contains("unknown field `netwerk`")
    );

    for (path, reason) in [
        ("work", "must be absolute"),
        ("/work/../etc", "must not contain `.` or `..`"),
        ("/", "cannot be the root"),
        ("/proc/x", "/proc is reserved by the sandbox"),
        ("/tmp", "/tmp is reserved by the sandbox"),
    ] {
        let mut bad = spec();
        bad.workspace.path = path.into();
        let err = bad.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("bad workspace path {path}: {reason}")
        );
    }
    let mut bad = spec();
    bad.env.push(("A=B".into(), "c".into()));
    assert!(bad.validate().is_err());
    let mut bad = spec();
    bad.root = RootFs::Image { layers: vec![] };
    assert!(bad.validate().is_err());
}

#[test]
fn resolve_names_the_missing_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec();
    spec.workspace.upper = dir.path().join("missing-upper");
    spec.workspace.work = dir.path().to_owned();
    std::fs::write(dir.path().join("job.sh"), "true").unwrap();
    spec.script = dir.path().join("job.sh");
    let err = Plan::resolve(&spec).unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "workspace upper dir {}/missing-upper does not exist",
            dir.path().display()
        )),
        "{err}"
    );
    let comma = dir.path().join("a,b");
    std::fs::create_dir(&comma).unwrap();
    spec.workspace.upper = comma;
    assert!(matches!(
        Plan::resolve(&spec).unwrap_err(),
        SandboxError::OverlayPathSyntax { .. }
    ));
}

#[test]
fn a_non_utf8_path_is_an_error_not_a_panic() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec();
    spec.script = PathBuf::from(std::ffi::OsStr::from_bytes(b"/job-\xff.sh"));
    let err = super::SandboxRun::prepare(&spec, dir.path()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid sandbox spec: cannot encode the spec"),
        "{err}"
    );
}

#[test]
fn binds_get_mount_points_only_where_writable_and_are_mounted_last() {
    let mut sys = RecordingSys::default();
    let mut plan = host_plan();
    plan.binds = vec![
        PlannedBind::writable("/cache/0".into(), "/home/.cargo".into()),
        PlannedBind::writable("/cache/1".into(), "/work/target".into()),
        PlannedBind::writable("/cache/2".into(), "/var/cache/x".into()),
    ];
    setup::build_root(&mut sys, &plan).unwrap();
    let log = sys.calls.join("\n");
    let lines: Vec<&str> = log.lines().collect();
    let position = |needle: &str| {
        lines
            .iter()
            .position(|line| *line == needle)
            .unwrap_or_else(|| panic!("no `{needle}` in\n{log}"))
    };
    // Below an empty top-level directory: made before the root is read-only.
    assert!(
        position("mkdir /newroot/home/.cargo 755")
            < position("mount_setattr /newroot rdonly recursive")
    );
    // Below a bound host directory: never made before it is read-only, and
    // only once the host is gone (made in the sandbox's own root).
    let detached = position("umount2 . detach");
    assert!(position("mkdir /var/cache 755") > detached);
    // Every bind source is taken while the host is reachable, without
    // following a symlink, and attached only after the host's tree is gone,
    // at a target resolved in the sandbox's own root.
    let tmp =
        position("mount tmpfs /newroot/tmp type=tmpfs flags=MS_NOSUID|MS_NODEV data=mode=1777");
    for (source, target) in [
        ("0", "/home/.cargo"),
        ("1", "/work/target"),
        ("2", "/var/cache/x"),
    ] {
        let taken = position(&format!("open_tree clone /oldroot/cache/{source}"));
        assert!(taken > tmp && taken < detached, "{target}");
        let attached = position(&format!("move_mount tree -> {target}"));
        assert!(attached > detached, "{target}");
    }
    assert!(
        !lines
            .iter()
            .any(|line| line.starts_with("mount /oldroot/cache/")),
        "a bind source mounted by path:\n{log}"
    );
}

#[test]
fn bind_targets_are_checked() {
    let workspace = WorkspaceSpec {
        path: "/work".into(),
        lower: vec![],
        upper: "/u".into(),
        work: "/w".into(),
    };
    for bad in ["relative", "/", "/a/../b", "/proc/x", "/.kiln/y"] {
        let mut spec = SandboxSpec::new(
            RootFs::Host { exclude: vec![] },
            workspace.clone(),
            "/s".into(),
        );
        spec.binds = vec![super::spec::Bind {
            source: "/c".into(),
            target: bad.into(),
            read_only: false,
        }];
        assert!(spec.validate().is_err(), "{bad}");
    }
}

#[test]
fn the_job_gives_up_privileges_in_order_just_before_exec() {
    let mut sys = RecordingSys::default();
    let confinement = Confinement::compile().unwrap();
    let err = setup::exec_job(&mut sys, &host_plan(), &confinement);
    assert!(matches!(err, SandboxError::Exec { .. }), "{err}");
    let shown: String = sys
        .transcript()
        .lines()
        .map(|line| {
            // Instruction counts depend on the filter, not on the order.
            let line = match line.find(" (") {
                Some(at) if line.starts_with("seccomp") => &line[..at],
                _ => line,
            };
            format!("{line}\n")
        })
        .collect();
    expect![[r#"
        chdir /work
        prctl PR_CAPBSET_DROP all but 0x404fb
        capset effective=permitted=0x404fb inheritable=0x0
        prctl PR_CAP_AMBIENT_CLEAR_ALL
        prctl PR_SET_NO_NEW_PRIVS
        seccomp x32
        seccomp enosys
        seccomp deny
        execve /bin/sh [/bin/sh /.kiln/job.sh] env=[PATH=/usr/bin:/bin LANG=C.UTF-8]
    "#]]
    .assert_eq(&shown);

    // Each step fails on its own, and the job is never executed.
    for (step, expected) in [
        (
            "prctl PR_CAPBSET_DROP",
            "cannot drop capabilities from the bounding set: EPERM: Operation not permitted",
        ),
        (
            "capset",
            "cannot set the job's capabilities (capset): EPERM: Operation not permitted",
        ),
        (
            "prctl PR_CAP_AMBIENT",
            "cannot clear the ambient capabilities: EPERM: Operation not permitted",
        ),
        (
            "prctl PR_SET_NO_NEW_PRIVS",
            "cannot set no_new_privs: EPERM: Operation not permitted",
        ),
        (
            "seccomp deny",
            "cannot install the seccomp filter `deny`: EPERM: Operation not permitted",
        ),
    ] {
        let mut sys = RecordingSys {
            fail_on: Some(step.into()),
            ..Default::default()
        };
        let err = setup::exec_job(&mut sys, &host_plan(), &confinement);
        assert_eq!(err.to_string(), expected);
        assert!(!sys.transcript().contains("execve"), "{step}");
    }
}

#[test]
fn proc_is_masked_and_read_only_where_the_kernel_has_the_entry() {
    let mut sys = RecordingSys::default();
    setup::build_root(&mut sys, &host_plan()).unwrap();
    let transcript = sys.transcript();
    let proc_part: String = transcript
        .lines()
        .skip_while(|line| !line.starts_with("create /proc-mask"))
        .take_while(|line| !line.starts_with("chdir /newroot"))
        .map(|line| format!("{line}\n"))
        .collect();
    expect![[r#"
        create /proc-mask 444 (0 bytes)
        mount /proc-mask /newroot/proc/acpi type=- flags=MS_BIND data=-
        mount_setattr /newroot/proc/acpi rdonly recursive
        mount /proc-mask /newroot/proc/asound type=- flags=MS_BIND data=-
        mount_setattr /newroot/proc/asound rdonly recursive
        mount /proc-mask /newroot/proc/interrupts type=- flags=MS_BIND data=-
        mount_setattr /newroot/proc/interrupts rdonly recursive
        mount /proc-mask /newroot/proc/kcore type=- flags=MS_BIND data=-
        mount_setattr /newroot/proc/kcore rdonly recursive
        mount /proc-mask /newroot/proc/keys type=- flags=MS_BIND data=-
        mount_setattr /newroot/proc/keys rdonly recursive
        mount /proc-mask /newroot/proc/kmsg type=- flags=MS_BIND data=-
        mount_setattr /newroot/proc/kmsg rdonly recursive
        mount /proc-mask /newroot/proc/latency_stats type=- flags=MS_BIND data=-
        mount_setattr /newroot/proc/latency_stats rdonly recursive
        mount /proc-mask /newroot/proc/sched_debug type=- flags=MS_BIND data=-
        mount_setattr /newroot/proc/sched_debug rdonly recursive
        mount /proc-mask /newroot/proc/scsi type=- flags=MS_BIND data=-
        mount_setattr /newroot/proc/scsi rdonly recursive
        mount /proc-mask /newroot/proc/timer_list type=- flags=MS_BIND data=-
        mount_setattr /newroot/proc/timer_list rdonly recursive
        mount /proc-mask /newroot/proc/timer_stats type=- flags=MS_BIND data=-
        mount_setattr /newroot/proc/timer_stats rdonly recursive
        mount /newroot/proc/bus /newroot/proc/bus type=- flags=MS_BIND|MS_REC data=-
        mount_setattr /newroot/proc/bus rdonly recursive
        mount /newroot/proc/fs /newroot/proc/fs type=- flags=MS_BIND|MS_REC data=-
        mount_setattr /newroot/proc/fs rdonly recursive
        mount /newroot/proc/irq /newroot/proc/irq type=- flags=MS_BIND|MS_REC data=-
        mount_setattr /newroot/proc/irq rdonly recursive
        mount /newroot/proc/sys /newroot/proc/sys type=- flags=MS_BIND|MS_REC data=-
        mount_setattr /newroot/proc/sys rdonly recursive
        mount /newroot/proc/sysrq-trigger /newroot/proc/sysrq-trigger type=- flags=MS_BIND|MS_REC data=-
        mount_setattr /newroot/proc/sysrq-trigger rdonly recursive
    "#]]
    .assert_eq(&proc_part);
    let proc_at = transcript.find("mount proc /newroot/proc").unwrap();
    let mask_at = transcript.find("create /proc-mask").unwrap();
    assert!(proc_at < mask_at, "masks go over the fresh /proc");

    // A directory gets an empty read-only tmpfs; a missing entry is skipped.
    let mut sys = RecordingSys {
        fail_on: Some("mount /proc-mask /newroot/proc/acpi ".into()),
        fail_with: Some(nix::errno::Errno::ENOTDIR),
        ..Default::default()
    };
    setup::build_root(&mut sys, &host_plan()).unwrap();
    assert!(sys.transcript().contains(
        "mount tmpfs /newroot/proc/acpi type=tmpfs flags=MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC data=mode=0555,size=4k\n"
    ));
    let mut sys = RecordingSys {
        fail_on: Some("mount /newroot/proc/sys ".into()),
        fail_with: Some(nix::errno::Errno::ENOENT),
        ..Default::default()
    };
    setup::build_root(&mut sys, &host_plan()).unwrap();
    assert!(
        !sys.transcript()
            .contains("mount_setattr /newroot/proc/sys rdonly")
    );
    // Any other failure is a setup failure naming the entry.
    let mut sys = RecordingSys {
        fail_on: Some("mount_setattr /newroot/proc/sysrq-trigger".into()),
        ..Default::default()
    };
    let err = setup::build_root(&mut sys, &host_plan()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot make /newroot/proc/sysrq-trigger read-only in the job's /proc: EPERM: Operation not permitted"
    );
}

#[test]
fn the_cgroup_namespace_is_its_own_step() {
    let mut sys = RecordingSys {
        fail_on: Some("unshare CLONE_NEWCGROUP".into()),
        ..Default::default()
    };
    let err = setup::enter_cgroup_namespace(&mut sys).unwrap_err();
    assert!(matches!(err, SandboxError::Unshare { .. }), "{err:?}");
}

#[test]
fn docs_name_every_refused_syscall_and_every_kept_capability() {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/drivers.md")).unwrap();
    let section = docs
        .split("### What a job can and cannot do")
        .nth(1)
        .expect("docs/drivers.md has a \"What a job can and cannot do\" section");
    for name in denied_syscall_names().chain(["clone3", "io_uring_setup", "unshare", "clone"]) {
        assert!(
            section.contains(&format!("`{name}`")),
            "docs/drivers.md does not name `{name}`"
        );
    }
    for (_, cap) in KEPT_CAPABILITIES {
        assert!(
            section.contains(&format!("`{cap}`")),
            "docs/drivers.md does not justify `{cap}`"
        );
    }
}
