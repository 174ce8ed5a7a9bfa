//! Crash consistency: keel is SIGKILLed while the probe guest writes, at points picked by a
//! seeded generator (printed, so a failure can be replayed). The guest writes region after
//! region, each followed by a FLUSH, and prints a line once the flush is acknowledged. After
//! the kill, on the host: every region whose line was seen holds exactly what the guest wrote;
//! the region being written holds, sector by sector, either what the guest wrote or what was
//! there before; every byte the guest never wrote is unchanged.

mod common;

use common::*;

/// Regions the guest writes, in order; each is `REGION` bytes at `i * STRIDE`, so the
/// `STRIDE - REGION` bytes after each are never written.
const REGIONS: u64 = 8;
const REGION: u64 = 1 << 20;
const STRIDE: u64 = 2 << 20;
/// What the image holds before the guest runs (never a byte of the guest's pattern's
/// low sectors, whose u64s are small numbers).
const BEFORE: u8 = 0xa5;
const SECTOR: usize = 512;
const BLK_LINE: &str = "{\"cmd\":\"blk\"";

/// The probe's data pattern: every little-endian u64 of sector S holds S.
fn is_pattern(sector: &[u8], number: u64) -> bool {
    sector
        .chunks_exact(8)
        .all(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()) == number)
}

/// Checks the image after a kill that came once `acked` regions were acknowledged.
fn check_image(image: &[u8], acked: u64) -> Result<(), String> {
    for (i, sector) in image.chunks_exact(SECTOR).enumerate() {
        let offset = (i * SECTOR) as u64;
        let number = offset / SECTOR as u64;
        let region = offset / STRIDE;
        let written = offset % STRIDE < REGION && region < REGIONS;
        let unchanged = sector.iter().all(|&b| b == BEFORE);
        let ok = match (written, region.cmp(&acked)) {
            (false, _) => unchanged,
            (true, std::cmp::Ordering::Less) => is_pattern(sector, number),
            (true, std::cmp::Ordering::Equal) => unchanged || is_pattern(sector, number),
            (true, std::cmp::Ordering::Greater) => unchanged,
        };
        if !ok {
            return Err(format!(
                "sector {number} (offset {offset:#x}, region {region}, {acked} acknowledged) \
                 holds neither what it should nor what it held before"
            ));
        }
    }
    Ok(())
}

/// The guest's command line: one sequential write of each region, then its flush.
fn cmdline() -> String {
    let mut c = String::from("probe.cmd=boot");
    for i in 0..REGIONS {
        c.push_str(&format!(
            " probe.cmd=blk:disk=0,rw=write,bs=64k,iodepth=4,size={REGION},offset={},ios=16,flush=1",
            i * STRIDE
        ));
    }
    c
}

/// A small deterministic generator (xorshift64*) for the kill points.
fn kill_points(seed: u64, count: usize) -> Vec<u64> {
    let mut x = seed;
    (0..count)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d) % REGIONS
        })
        .collect()
}

#[test]
fn sigkill_keeps_every_flushed_write_and_touches_nothing_else() {
    let seed = 0x6b65_656c;
    let points = kill_points(seed, 3);
    eprintln!("kill points (seed {seed:#x}): after {points:?} acknowledged regions");
    let kernel = probe_image("probe.elf");
    let cmdline = cmdline();
    for acked in points {
        let path =
            std::env::temp_dir().join(format!("keel-crash-{}-{acked}.img", std::process::id()));
        std::fs::write(&path, vec![BEFORE; (REGIONS * STRIDE) as usize]).unwrap();
        let disk = format!("path={}", path.display());
        let mut keel = Watched::spawn(&[
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory",
            "size=128M",
            "--disk",
            &disk,
            "--cmdline",
            &cmdline,
        ]);
        if acked == 0 {
            keel.wait_stdout(BOOT_LINE, HANG_GUARD);
        } else {
            keel.wait_stdout_lines(BLK_LINE, acked as usize, HANG_GUARD);
        }
        keel.signal(libc::SIGKILL);
        let run = keel.finish(HANG_GUARD);
        assert_eq!(run.code(), None, "killed, not exited: {}", run.describe());
        // Every acknowledged region's line says its writes and flush succeeded.
        for line in run.json_lines().iter().filter(|l| l["cmd"] == "blk") {
            assert_eq!(line["errors"], 0, "{line}");
            assert_eq!(line["flush_status"], "ok", "{line}");
        }
        let image = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        if let Err(e) = check_image(&image, acked) {
            panic!(
                "killed after {acked} acknowledged regions: {e}\n{}",
                run.describe()
            );
        }
    }
}

#[test]
fn the_check_catches_a_lost_write_and_a_stray_one() {
    let mut image = vec![BEFORE; (REGIONS * STRIDE) as usize];
    for s in 0..(REGION / SECTOR as u64) {
        let sector = &mut image[(s as usize) * SECTOR..][..SECTOR];
        for w in sector.chunks_exact_mut(8) {
            w.copy_from_slice(&s.to_le_bytes());
        }
    }
    assert!(check_image(&image, 1).is_ok());
    assert!(
        check_image(&image, 0).is_ok(),
        "the region in flight may be complete"
    );
    assert!(
        check_image(&image, 2).is_err(),
        "region 1 was acknowledged but is missing"
    );
    image[(REGION + 5) as usize] = 0;
    assert!(
        check_image(&image, 1).is_err(),
        "a byte never written changed"
    );
}
