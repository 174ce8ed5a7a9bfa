use super::*;

const QD64: &str = include_str!("../../../../resources/fio/randread-4k-qd64.fio");
const SEVEN: &str = include_str!("../../../../resources/fio/randwrite-4k-qd32-7disks.fio");
const QD256: &str = include_str!("../../../../resources/fio/randread-4k-qd256-7disks.fio");

#[test]
fn shipped_jobs_parse_and_name_their_disks() {
    let one = FioJob::parse(QD64.as_bytes()).unwrap();
    let jobs = one.jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].name, "vda");
    assert_eq!(jobs[0].get("iodepth"), Some("64"));
    assert_eq!(jobs[0].get("rw"), Some("randread"));
    assert_eq!(one.disks_needed().unwrap(), 1);
    for text in [SEVEN, QD256] {
        let job = FioJob::parse(text.as_bytes()).unwrap();
        assert_eq!(job.jobs().len(), 7);
        // vdb..vdh: vda exists too, unused by the job.
        assert_eq!(job.disks_needed().unwrap(), 8);
    }
}

#[test]
fn globals_apply_to_later_jobs_and_jobs_override_them() {
    let text = "[global]\nbs=4k\nrw=read\n[a]\nfilename=/dev/vda\nrw=write\n\
                [global]\nbs=8k\n[b]\nfilename=/dev/vdb:/dev/vdc\n";
    let job = FioJob::parse(text.as_bytes()).unwrap();
    let jobs = job.jobs();
    assert_eq!(jobs[0].get("rw"), Some("write"));
    assert_eq!(jobs[0].get("bs"), Some("4k"));
    assert_eq!(jobs[1].get("rw"), Some("read"));
    assert_eq!(jobs[1].get("bs"), Some("8k"));
    assert_eq!(jobs[1].disks().unwrap(), vec![1, 2]);
    assert_eq!(job.disks_needed().unwrap(), 3);
}

#[test]
fn bad_job_files_get_typed_errors() {
    let cases: &[(&[u8], JobError)] = &[
        (b"bs=4k\n[a]\n", JobError::OutsideSection(1)),
        (
            b"[a]\nfilename=/dev/vda\ninclude other.fio\n",
            JobError::Unsupported {
                line: 3,
                what: "include",
            },
        ),
        (
            b"[a]\nfilename=/dev/vd${DISK}\n",
            JobError::Unsupported {
                line: 2,
                what: "${VAR} expansion",
            },
        ),
        (b"[global]\nbs=4k\n", JobError::NoJobs),
        (b"", JobError::NoJobs),
        (b"[a]\n\x00", JobError::NotText),
        (b"[a]\n\xff\n", JobError::NotText),
        (
            b"[a\n",
            JobError::Syntax {
                line: 1,
                text: "[a".into(),
            },
        ),
        (
            b"[a]\nfile name=x\n",
            JobError::Syntax {
                line: 2,
                text: "file name=x".into(),
            },
        ),
    ];
    for (text, want) in cases {
        assert_eq!(FioJob::parse(text).unwrap_err(), *want, "{text:?}");
    }
    let big = vec![b';'; MAX_JOB_BYTES + 1];
    assert_eq!(
        FioJob::parse(&big).unwrap_err(),
        JobError::TooBig(MAX_JOB_BYTES + 1)
    );
    let many: String = (0..=MAX_SECTIONS).map(|i| format!("[j{i}]\n")).collect();
    assert_eq!(
        FioJob::parse(many.as_bytes()).unwrap_err(),
        JobError::TooManySections
    );
}

#[test]
fn filenames_must_be_whole_virtio_disks() {
    for (file, ok) in [
        ("/dev/vda", true),
        ("/dev/vdz", true),
        ("/dev/vda1", false),
        ("/dev/sda", false),
        ("/tmp/file", false),
        ("/dev/vdA", false),
    ] {
        let text = format!("[j]\nfilename={file}\n");
        let job = FioJob::parse(text.as_bytes()).unwrap();
        assert_eq!(job.disks_needed().is_ok(), ok, "{file}");
    }
    let job = FioJob::parse(b"[j]\nrw=read\n").unwrap();
    assert_eq!(
        job.disks_needed().unwrap_err(),
        JobError::NoFilename("j".into())
    );
}

#[test]
fn runtime_override_renders_and_reparses() {
    let job = FioJob::parse(QD64.as_bytes()).unwrap().with_runtime(3);
    let again = FioJob::parse(job.render().as_bytes()).unwrap();
    assert_eq!(again, job);
    let j = &again.jobs()[0];
    assert_eq!(j.get("runtime"), Some("3"));
    assert!(j.flag("time_based"));
    assert!(j.flag("thread"));
}

#[test]
fn config_disk_holds_magic_job_and_padding() {
    let job = FioJob::parse(QD64.as_bytes()).unwrap();
    let image = job.config_disk_image();
    assert_eq!(&image[..16], CONFIG_DISK_MAGIC);
    assert_eq!(image.len() % 512, 0);
    assert!(image.len() >= 4096);
    let text_end = image[16..].iter().position(|&b| b == 0).unwrap() + 16;
    let text = std::str::from_utf8(&image[16..text_end]).unwrap();
    assert_eq!(FioJob::parse(text.as_bytes()).unwrap(), job);
    assert!(image[text_end..].iter().all(|&b| b == 0));
}

#[test]
fn probe_translation_of_shipped_jobs() {
    let job = FioJob::parse(QD64.as_bytes()).unwrap();
    assert_eq!(
        job.probe_commands(1 << 30, 1).unwrap(),
        vec![
            "probe.cmd=blk:disk=0,rw=randread,bs=4096,iodepth=64,runtime=30,verify=0,\
              report=fio,name=vda"
        ]
    );
    assert!(job.probe_commands(1 << 30, 2).unwrap()[0].ends_with("name=vda,queues=2"));
    let polled = FioJob::parse(b"[j]\nfilename=/dev/vda\nhipri=1\n").unwrap();
    assert!(polled.probe_commands(1 << 30, 1).unwrap()[0].ends_with("name=j,poll=1"));
    let seven = FioJob::parse(SEVEN.as_bytes()).unwrap();
    let cmds = seven.probe_commands(1 << 30, 1).unwrap();
    assert_eq!(cmds.len(), 7);
    assert!(cmds[0].starts_with("probe.cmd=blk:disk=1,rw=randwrite,bs=4096,iodepth=32,"));
    assert!(cmds[6].ends_with("name=vdh"));
}

#[test]
fn probe_translation_sizes_verify_and_refusals() {
    let job = FioJob::parse(
        b"[global]\nbs=8k\nsize=16m\nverify=crc32c\n[w]\nrw=randwrite\nfilename=/dev/vdb\n\
          [r]\nrw=read\nfilename=/dev/vda\nverify=crc32c\n",
    )
    .unwrap();
    let cmds = job.probe_commands(1 << 30, 1).unwrap();
    assert!(cmds[0].contains("disk=1,rw=randwrite,bs=8192,iodepth=1,ios=2048,verify=1"));
    // Verifying plain reads would check the probe's own pattern on data it did not write.
    assert!(cmds[1].contains("rw=read,bs=8192,iodepth=1,ios=2048,verify=0"));
    let whole = FioJob::parse(b"[j]\nfilename=/dev/vda\n").unwrap();
    assert!(whole.probe_commands(1 << 20, 1).unwrap()[0].contains("ios=256,"));
    for (text, key) in [
        ("[j]\nfilename=/dev/vda\nrw=trim\n", "rw"),
        ("[j]\nfilename=/dev/vda\nbs=100\n", "bs"),
        ("[j]\nfilename=/dev/vda\niodepth=0\n", "iodepth"),
        ("[j]\nfilename=/dev/vda\nnumjobs=4\n", "numjobs"),
        ("[j]\nfilename=/dev/vda\nruntime=2h\n", "runtime"),
        ("[j]\nfilename=/dev/vda\ntime_based\n", "time_based"),
        ("[j]\nfilename=/dev/vda\nsize=1\n", "size"),
    ] {
        let job = FioJob::parse(text.as_bytes()).unwrap();
        match job.probe_commands(1 << 30, 1) {
            Err(JobError::BadValue { key: k, .. }) => assert_eq!(k, key, "{text}"),
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn fio_time_and_size_units() {
    assert_eq!(fio_seconds("30"), Some(30));
    assert_eq!(fio_seconds("30s"), Some(30));
    assert_eq!(fio_seconds("2m"), Some(120));
    assert_eq!(fio_seconds("1h"), Some(3600));
    assert_eq!(fio_seconds("1500ms"), Some(2));
    assert_eq!(fio_seconds("10us"), Some(1));
    assert_eq!(fio_seconds("x"), None);
    assert_eq!(fio_seconds(""), None);
    assert_eq!(fio_size("4k"), Some(4096));
    assert_eq!(fio_size("1M"), Some(1 << 20));
    assert_eq!(fio_size("4KiB"), Some(4096));
}
