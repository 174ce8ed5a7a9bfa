use super::*;
use crate::kvm_pv::{kvm_base, KVM_SIGNATURE};

/// Bit `n`; the expected values below are written as bit numbers from hyperv-tlfs.h, not
/// through the module's constants, so a wrong constant shows up here.
const fn b(n: u32) -> u32 {
    1 << n
}

fn full_host() -> HostHvSupport {
    HostHvSupport {
        hyperv: true,
        vapic: true,
        vp_index: true,
        vp_runtime: true,
        crash: true,
        time: true,
        synic2: true,
        stimer_direct: true,
        frequencies: true,
        reenlightenment: true,
        tlbflush: true,
        tlbflush_ext: true,
        tlbflush_direct: true,
        send_ipi: true,
        reset: true,
        avic: true,
        enforce_cpuid: true,
    }
}

fn find(entries: &[kvm_cpuid_entry2], function: u32) -> kvm_cpuid_entry2 {
    let found: Vec<_> = entries.iter().filter(|e| e.function == function).collect();
    assert_eq!(
        found.len(),
        1,
        "leaf {function:#x} appears {} times",
        found.len()
    );
    *found[0]
}

/// The configuration a list of enlightenment names stands for (`on`: [`HypervConfig::on`]).
fn hv(list: &str) -> HypervConfig {
    if list == "on" {
        return HypervConfig::on();
    }
    list.split(',').fold(HypervConfig::off(), |c, name| {
        c.with(HvFeature::from_name(name).unwrap_or_else(|| panic!("{name}")))
    })
}

fn regs(e: &kvm_cpuid_entry2) -> [u32; 4] {
    [e.eax, e.ebx, e.ecx, e.edx]
}

#[test]
fn constants_match_hyperv_tlfs_h() {
    let bits = [
        (HV_MSR_VP_RUNTIME_AVAILABLE, b(0)),
        (HV_MSR_TIME_REF_COUNT_AVAILABLE, b(1)),
        (HV_MSR_SYNIC_AVAILABLE, b(2)),
        (HV_MSR_SYNTIMER_AVAILABLE, b(3)),
        (HV_MSR_APIC_ACCESS_AVAILABLE, b(4)),
        (HV_MSR_HYPERCALL_AVAILABLE, b(5)),
        (HV_MSR_VP_INDEX_AVAILABLE, b(6)),
        (HV_MSR_RESET_AVAILABLE, b(7)),
        (HV_MSR_REFERENCE_TSC_AVAILABLE, b(9)),
        (HV_MSR_GUEST_IDLE_AVAILABLE, b(10)),
        (HV_ACCESS_FREQUENCY_MSRS, b(11)),
        (HV_ACCESS_REENLIGHTENMENT, b(13)),
        (HV_FEATURE_FREQUENCY_MSRS_AVAILABLE, b(8)),
        (HV_FEATURE_GUEST_CRASH_MSR_AVAILABLE, b(10)),
        (HV_FEATURE_EXT_GVA_RANGES_FLUSH, b(14)),
        (HV_STIMER_DIRECT_MODE_AVAILABLE, b(19)),
        (HV_X64_REMOTE_TLB_FLUSH_RECOMMENDED, b(2)),
        (HV_X64_APIC_ACCESS_RECOMMENDED, b(3)),
        (HV_X64_RELAXED_TIMING_RECOMMENDED, b(5)),
        (HV_DEPRECATING_AEOI_RECOMMENDED, b(9)),
        (HV_X64_CLUSTER_IPI_RECOMMENDED, b(10)),
        (HV_X64_EX_PROCESSOR_MASKS_RECOMMENDED, b(11)),
        (HV_X64_NESTED_DIRECT_FLUSH, b(17)),
    ];
    for (i, (constant, expected)) in bits.into_iter().enumerate() {
        assert_eq!(constant, expected, "entry {i}");
    }
    assert_eq!(&HYPERV_INTERFACE_SIGNATURE.to_le_bytes(), b"Hv#1");
    assert_eq!(HYPERV_CPUID_MAX_LEAF, 0x4000_000a);
    let msrs = [
        (HV_X64_MSR_GUEST_OS_ID, 0x4000_0000),
        (HV_X64_MSR_HYPERCALL, 0x4000_0001),
        (HV_X64_MSR_VP_INDEX, 0x4000_0002),
        (HV_X64_MSR_RESET, 0x4000_0003),
        (HV_X64_MSR_VP_RUNTIME, 0x4000_0010),
        (HV_X64_MSR_TIME_REF_COUNT, 0x4000_0020),
        (HV_X64_MSR_REFERENCE_TSC, 0x4000_0021),
        (HV_X64_MSR_TSC_FREQUENCY, 0x4000_0022),
        (HV_X64_MSR_APIC_FREQUENCY, 0x4000_0023),
        (HV_X64_MSR_EOI, 0x4000_0070),
        (HV_X64_MSR_VP_ASSIST_PAGE, 0x4000_0073),
        (HV_X64_MSR_SCONTROL, 0x4000_0080),
        (HV_X64_MSR_EOM, 0x4000_0084),
        (HV_X64_MSR_SINT0, 0x4000_0090),
        (HV_X64_MSR_STIMER0_CONFIG, 0x4000_00b0),
        (HV_X64_MSR_CRASH_P0, 0x4000_0100),
        (HV_X64_MSR_CRASH_CTL, 0x4000_0105),
        (HV_X64_MSR_REENLIGHTENMENT_CONTROL, 0x4000_0106),
        (HV_X64_MSR_TSC_EMULATION_STATUS, 0x4000_0108),
    ];
    for (constant, expected) in msrs {
        assert_eq!(constant, expected);
    }
    // The table's names agree with its numbers.
    let by_name = |n: &str| HV_MSRS.iter().find(|m| m.name == n).unwrap().msr;
    assert_eq!(by_name("HV_X64_MSR_SINT15"), 0x4000_009f);
    assert_eq!(by_name("HV_X64_MSR_STIMER3_COUNT"), 0x4000_00b7);
    assert_eq!(by_name("HV_X64_MSR_CRASH_P4"), 0x4000_0104);
    assert_eq!(HV_MSRS.len(), 13 + 5 + 16 + 8 + 6 + 3);
}

/// Expected bits of each enlightenment alone: (features EAX, features EDX, recommendations EAX,
/// nested EAX), hypercall MSRs (bit 5) included.
fn expected_alone(f: HvFeature) -> [u32; 4] {
    let hc = b(5);
    match f {
        HvFeature::Relaxed => [hc, 0, b(5), 0],
        HvFeature::Vapic => [hc | b(4), 0, b(3), 0],
        HvFeature::Spinlocks => [hc, 0, 0, 0],
        HvFeature::Vpindex => [hc | b(6), 0, 0, 0],
        HvFeature::Runtime => [hc | b(0), 0, 0, 0],
        HvFeature::Crash => [hc, b(10), 0, 0],
        HvFeature::Time => [hc | b(1) | b(9), 0, 0, 0],
        HvFeature::Synic => [hc | b(2), 0, 0, 0],
        HvFeature::Stimer => [hc | b(3), 0, 0, 0],
        HvFeature::StimerDirect => [hc, b(19), 0, 0],
        HvFeature::Frequencies => [hc | b(11), b(8), 0, 0],
        HvFeature::Reenlightenment => [hc | b(13), 0, 0, 0],
        HvFeature::Tlbflush => [hc, 0, b(2) | b(11), 0],
        HvFeature::TlbflushExt => [hc, b(14), 0, 0],
        HvFeature::TlbflushDirect => [hc, 0, 0, b(17)],
        HvFeature::Ipi => [hc, 0, b(10) | b(11), 0],
        HvFeature::Reset => [hc | b(7), 0, 0, 0],
        HvFeature::Avic => [hc, 0, b(9), 0],
    }
}

#[test]
fn each_feature_alone_sets_exactly_its_bits() {
    for f in HvFeature::ALL {
        let cfg = HypervConfig::off().with(f);
        let leaves = hyperv_leaves(&cfg, 4);
        let features = find(&leaves, HYPERV_CPUID_FEATURES);
        let rec = find(&leaves, HYPERV_CPUID_ENLIGHTMENT_INFO);
        let nested = find(&leaves, HYPERV_CPUID_NESTED_FEATURES);
        let [eax, edx, rec_eax, nested_eax] = expected_alone(f);
        assert_eq!(
            regs(&features),
            [eax, 0, 0, edx],
            "{}: 0x40000003",
            f.name()
        );
        assert_eq!(
            regs(&rec),
            [rec_eax, 0xffff_ffff, 0, 0],
            "{}: 0x40000004",
            f.name()
        );
        assert_eq!(
            regs(&nested),
            [nested_eax, 0, 0, 0],
            "{}: 0x4000000a",
            f.name()
        );
        for zero in 0x4000_0006..=0x4000_0009 {
            assert_eq!(
                regs(&find(&leaves, zero)),
                [0; 4],
                "{}: {zero:#x}",
                f.name()
            );
        }
    }
}

#[test]
fn fixed_leaves() {
    let cfg = hv("relaxed");
    let leaves = hyperv_leaves(&cfg, 3);
    let functions: Vec<u32> = leaves.iter().map(|e| e.function).collect();
    assert_eq!(functions, (0x4000_0000..=0x4000_000a).collect::<Vec<_>>());
    let vendor = find(&leaves, 0x4000_0000);
    assert_eq!(vendor.eax, 0x4000_000a);
    let id: Vec<u8> = [vendor.ebx, vendor.ecx, vendor.edx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    assert_eq!(&id, b"Microsoft Hv");
    assert_eq!(regs(&find(&leaves, 0x4000_0001)), [0x3123_7648, 0, 0, 0]);
    assert_eq!(regs(&find(&leaves, 0x4000_0002)), [14393, 10 << 16, 0, 0]);
    assert_eq!(regs(&find(&leaves, 0x4000_0005)), [3, 3, 0, 0]);
    assert!(leaves.iter().all(|e| e.flags == 0 && e.index == 0));
}

#[test]
fn vendor_id_and_spinlocks_values() {
    let cfg = hv("spinlocks")
        .with_spinlocks(0xfff)
        .with_vendor_id("KeelHv");
    let leaves = hyperv_leaves(&cfg, 1);
    let vendor = find(&leaves, 0x4000_0000);
    assert_eq!(&vendor.ebx.to_le_bytes(), b"Keel");
    assert_eq!(&vendor.ecx.to_le_bytes(), b"Hv\0\0");
    assert_eq!(vendor.edx, 0);
    assert_eq!(find(&leaves, 0x4000_0004).ebx, 0xfff);
    // vendor-id alone enables nothing.
    let only_vendor = HypervConfig::off().with_vendor_id("X");
    assert!(!only_vendor.enabled());
    assert!(hyperv_leaves(&only_vendor, 1).is_empty());
}

#[test]
fn on_with_a_full_host() {
    let cfg = hv("on");
    assert!(cfg.is_on());
    let cfg = cfg.resolve(&full_host());
    assert_eq!(cfg.features(), HvFeature::ALL);
    cfg.check(&full_host()).unwrap();
    let bits = cfg.cpuid_bits();
    let eax = b(0) | b(1) | b(2) | b(3) | b(4) | b(5) | b(6) | b(7) | b(9) | b(11) | b(13);
    assert_eq!(bits.features_eax, eax);
    assert_eq!(bits.features_edx, b(8) | b(10) | b(14) | b(19));
    // avic withdraws vapic's APIC-MSR recommendation (bit 3).
    assert_eq!(bits.recommendations_eax, b(2) | b(5) | b(9) | b(10) | b(11));
    assert_eq!(bits.nested_eax, b(17));
    assert_eq!(
        HypervConfig::all()
            .without(HvFeature::Avic)
            .cpuid_bits()
            .recommendations_eax
            & b(3),
        b(3)
    );
}

#[test]
fn on_narrows_to_the_host_and_prunes_dependents() {
    let host = HostHvSupport {
        time: false,
        send_ipi: false,
        ..full_host()
    };
    let cfg = hv("on").resolve(&host);
    for gone in [
        HvFeature::Time,
        HvFeature::Stimer,
        HvFeature::StimerDirect,
        HvFeature::Ipi,
    ] {
        assert!(!cfg.has(gone), "{} kept", gone.name());
    }
    assert!(cfg.has(HvFeature::Synic) && cfg.has(HvFeature::Tlbflush));
    cfg.check(&host).unwrap();
    // A host without Hyper-V at all: `on` becomes nothing.
    let none = hv("on").resolve(&HostHvSupport::default());
    assert!(!none.enabled());
    // An explicit list is never narrowed.
    let listed = hv("time");
    assert_eq!(listed.resolve(&host), listed);
}

#[test]
fn dependencies() {
    let cases = [
        ("synic", "hyperv: synic needs vpindex"),
        ("vpindex,time,stimer", "hyperv: stimer needs synic"),
        ("vpindex,synic,stimer", "hyperv: stimer needs time"),
        (
            "vpindex,synic,time,stimer-direct",
            "hyperv: stimer-direct needs stimer",
        ),
        ("tlbflush", "hyperv: tlbflush needs vpindex"),
        ("tlbflush-ext", "hyperv: tlbflush-ext needs tlbflush"),
        ("tlbflush-direct", "hyperv: tlbflush-direct needs vapic"),
        ("ipi", "hyperv: ipi needs vpindex"),
    ];
    for (list, message) in cases {
        let cfg = hv(list);
        assert_eq!(
            cfg.check(&full_host()).unwrap_err().to_string(),
            message,
            "{list}"
        );
    }
    for ok in [
        "vpindex,synic,time,stimer,stimer-direct",
        "vpindex,tlbflush,tlbflush-ext,ipi",
        "vapic,tlbflush-direct",
        "avic",
        "reenlightenment",
        "relaxed,spinlocks,runtime,crash,frequencies,reset",
    ] {
        hv(ok).check(&full_host()).unwrap();
    }
}

#[test]
fn host_capability_names() {
    let expected = [
        (HvFeature::Time, "KVM_CAP_HYPERV_TIME"),
        (HvFeature::Synic, "KVM_CAP_HYPERV_SYNIC2"),
        (HvFeature::Stimer, "KVM_CAP_HYPERV_SYNIC2"),
        (HvFeature::Vpindex, "KVM_CAP_HYPERV_VP_INDEX"),
        (HvFeature::Tlbflush, "KVM_CAP_HYPERV_TLBFLUSH"),
        (HvFeature::Ipi, "KVM_CAP_HYPERV_SEND_IPI"),
        (HvFeature::TlbflushDirect, "KVM_CAP_HYPERV_DIRECT_TLBFLUSH"),
    ];
    let legacy = HostHvSupport {
        hyperv: true,
        ..HostHvSupport::default()
    };
    for (f, cap) in expected {
        assert_eq!(legacy.missing_capability(f), Some(cap), "{}", f.name());
        assert_eq!(full_host().missing_capability(f), None);
    }
    for f in HvFeature::ALL {
        assert_eq!(
            HostHvSupport::default().missing_capability(f),
            Some("KVM_CAP_HYPERV")
        );
        let lacking = legacy.missing_capability(f);
        assert_eq!(
            lacking.is_none(),
            matches!(f, HvFeature::Relaxed | HvFeature::Spinlocks)
        );
    }
    let err = hv("time").check(&legacy).unwrap_err();
    assert_eq!(
        err.to_string(),
        "hyperv: time needs KVM_CAP_HYPERV_TIME, which this host lacks"
    );
    // Dependencies are reported before host gaps.
    let err = hv("synic").check(&legacy).unwrap_err();
    assert_eq!(err.to_string(), "hyperv: synic needs vpindex");
}

/// KVM_GET_SUPPORTED_HV_CPUID of a recent kernel (arch/x86/kvm/hyperv.c).
fn kvm_supported_hv_cpuid() -> Vec<kvm_cpuid_entry2> {
    let features_eax = 0x2aff | b(15);
    let features_edx = b(1) | b(4) | b(8) | b(10) | b(11) | b(14) | b(19);
    let rec_eax = b(2) | b(3) | b(5) | b(9) | b(10) | b(11);
    vec![
        leaf(0x4000_0000, 0x4000_000a, 0, 0, 0),
        leaf(0x4000_0001, HYPERV_INTERFACE_SIGNATURE, 0, 0, 0),
        leaf(
            0x4000_0003,
            features_eax,
            b(4) | b(5) | b(11),
            0,
            features_edx,
        ),
        leaf(0x4000_0004, rec_eax, 0xfff, 0, 0),
        leaf(0x4000_0005, 4096, 64, 0, 0),
        leaf(0x4000_000a, b(17) | b(19), 0, 0, 0),
    ]
}

#[test]
fn host_support_from_supported_hv_cpuid() {
    let host = HostHvSupport::from_supported_hv_cpuid(&kvm_supported_hv_cpuid());
    assert_eq!(
        host,
        HostHvSupport {
            enforce_cpuid: false,
            ..full_host()
        }
    );
    // An older kernel: no direct stimers, extended flush ranges, AEOI hint or direct flush.
    let mut old = kvm_supported_hv_cpuid();
    old[2].edx &= !(b(14) | b(19));
    old[3].eax &= !b(9);
    old[5].eax = 0;
    let host = HostHvSupport::from_supported_hv_cpuid(&old);
    assert!(!host.stimer_direct && !host.tlbflush_ext && !host.avic && !host.tlbflush_direct);
    assert!(host.time && host.synic2 && host.tlbflush && host.send_ipi && host.vapic);
    let cfg = hv("on").resolve(&host);
    assert_eq!(cfg.features().len(), HvFeature::ALL.len() - 4);
    assert_eq!(
        HostHvSupport::from_supported_hv_cpuid(&[]),
        HostHvSupport::default()
    );
}

/// A guest's hypervisor leaves after `cpuid::adjust`: KVM's signature, features and the timing
/// leaf.
fn kvm_leaves() -> Vec<kvm_cpuid_entry2> {
    vec![
        leaf(1, 0, 0, 1 << 31, 0),
        leaf(
            0x4000_0000,
            0x4000_0010,
            KVM_SIGNATURE[0],
            KVM_SIGNATURE[1],
            KVM_SIGNATURE[2],
        ),
        leaf(0x4000_0001, 0x0100_7afb, 0, 0, 0),
        leaf(0x4000_0010, 2_000_000, 1_000_000, 0, 0),
        leaf(0x8000_0000, 0x8000_0008, 0, 0, 0),
    ]
}

#[test]
fn relocation_moves_kvm_leaves_up() {
    let mut e = kvm_leaves();
    relocate_kvm_leaves(&mut e);
    let functions: Vec<u32> = e.iter().map(|x| x.function).collect();
    assert_eq!(
        functions,
        [1, 0x4000_0100, 0x4000_0101, 0x4000_0110, 0x8000_0000]
    );
    assert_eq!(find(&e, 0x4000_0100).eax, 0x4000_0110);
    assert_eq!(find(&e, 0x4000_0101).eax, 0x0100_7afb);
    assert_eq!(regs(&find(&e, 0x4000_0110)), [2_000_000, 1_000_000, 0, 0]);
    assert_eq!(kvm_base(&e), Some(0x4000_0100));
    // Without the timing leaf the range ends at the features leaf.
    let mut e = kvm_leaves();
    e.retain(|x| x.function != 0x4000_0010);
    relocate_kvm_leaves(&mut e);
    assert_eq!(find(&e, 0x4000_0100).eax, 0x4000_0101);
    // Nothing to move: nothing happens.
    let mut e = vec![leaf(0, 0xd, 0, 0, 0)];
    relocate_kvm_leaves(&mut e);
    assert_eq!(e.len(), 1);
}

#[test]
fn apply_installs_hyperv_below_kvm() {
    let mut e = kvm_leaves();
    let cfg = hv("relaxed,vpindex,time,synic,stimer");
    let names = apply_hyperv(&mut e, &cfg, &full_host(), 2).unwrap();
    assert_eq!(names, ["relaxed", "vpindex", "time", "synic", "stimer"]);
    for function in 0x4000_0000..=0x4000_000a {
        find(&e, function);
    }
    assert_eq!(find(&e, 0x4000_0001).eax, HYPERV_INTERFACE_SIGNATURE);
    assert_eq!(
        find(&e, 0x4000_0003).eax,
        b(1) | b(2) | b(3) | b(5) | b(6) | b(9)
    );
    assert_eq!(kvm_base(&e), Some(0x4000_0100));
    assert_eq!(find(&e, 0x4000_0110).eax, 2_000_000);
    assert!(e.iter().all(|x| x.function != 0x4000_0010));
    // KVM's PV features can still be chosen afterwards.
    let kvmclock = crate::kvm_pv::KvmPvFeatures::named("kvmclock").unwrap();
    let pv = crate::kvm_pv::KvmPvRequest::List(kvmclock);
    crate::kvm_pv::apply_kvm_pv(&mut e, pv).unwrap();
    assert_eq!(find(&e, 0x4000_0101).eax, b(0) | b(3) | b(24));
}

#[test]
fn hidden_kvm_leaves_leave_hyperv_alone_at_the_base() {
    use crate::kvm_pv::{apply_kvm_pv, KvmPvRequest};
    let cfg = hv("relaxed,vpindex,time");
    // As Keel applies them (KVM PV first), and the other way round: the same leaves.
    let mut first = kvm_leaves();
    apply_kvm_pv(&mut first, KvmPvRequest::Hidden).unwrap();
    apply_hyperv(&mut first, &cfg, &full_host(), 2).unwrap();
    let mut second = kvm_leaves();
    apply_hyperv(&mut second, &cfg, &full_host(), 2).unwrap();
    apply_kvm_pv(&mut second, KvmPvRequest::Hidden).unwrap();
    for e in [&first, &second] {
        assert_eq!(kvm_base(e), None);
        let functions: Vec<u32> = e
            .iter()
            .map(|x| x.function)
            .filter(|f| (0x4000_0000..0x5000_0000).contains(f))
            .collect();
        assert_eq!(functions, (0x4000_0000..=0x4000_000a).collect::<Vec<_>>());
        assert_eq!(find(e, 0x4000_0000).eax, HYPERV_CPUID_MAX_LEAF);
        assert_eq!(find(e, 0x4000_0001).eax, HYPERV_INTERFACE_SIGNATURE);
        assert_eq!(find(e, 1).ecx, 1 << 31, "the hypervisor bit stays");
        find(e, 0x8000_0000);
    }
    let regs_of = |e: &[kvm_cpuid_entry2]| -> Vec<(u32, [u32; 4])> {
        e.iter().map(|x| (x.function, regs(x))).collect()
    };
    let mut sorted = [first, second];
    for e in &mut sorted {
        e.sort_by_key(|x| x.function);
    }
    assert_eq!(regs_of(&sorted[0]), regs_of(&sorted[1]));
}

#[test]
fn apply_off_and_errors_leave_entries_alone() {
    let before = kvm_leaves();
    let mut e = before.clone();
    assert!(apply_hyperv(&mut e, &HypervConfig::off(), &full_host(), 1)
        .unwrap()
        .is_empty());
    let on = hv("on");
    assert!(apply_hyperv(&mut e, &on, &HostHvSupport::default(), 1)
        .unwrap()
        .is_empty());
    let err = apply_hyperv(&mut e, &hv("synic"), &full_host(), 1);
    assert_eq!(
        err.unwrap_err(),
        HypervError::MissingDependency {
            feature: "synic",
            needs: "vpindex"
        }
    );
    assert_eq!(regs(&e[1]), regs(&before[1]));
    assert_eq!(e.len(), before.len());
    let on = apply_hyperv(&mut e, &hv("on"), &full_host(), 1).unwrap();
    assert_eq!(on.len(), HvFeature::ALL.len());
}

#[test]
fn msrs_follow_features() {
    assert!(msrs_offered(&HypervConfig::off()).is_empty());
    let numbers =
        |list: &str| -> Vec<u32> { msrs_offered(&hv(list)).into_iter().map(|m| m.0).collect() };
    assert_eq!(numbers("relaxed"), [0x4000_0000, 0x4000_0001]);
    assert_eq!(
        numbers("time"),
        [0x4000_0000, 0x4000_0001, 0x4000_0020, 0x4000_0021]
    );
    assert_eq!(
        numbers("frequencies"),
        [0x4000_0000, 0x4000_0001, 0x4000_0022, 0x4000_0023]
    );
    assert_eq!(numbers("crash").len(), 2 + 6);
    assert_eq!(numbers("vpindex,synic").len(), 2 + 1 + 21);
    assert_eq!(
        numbers("vapic"),
        [
            0x4000_0000,
            0x4000_0001,
            0x4000_0070,
            0x4000_0071,
            0x4000_0072,
            0x4000_0073
        ]
    );
    assert_eq!(msrs_offered(&HypervConfig::all()).len(), HV_MSRS.len());
    // Every MSR's feature sets the CPUID bit KVM checks before allowing it.
    for m in HV_MSRS {
        let cfg = m
            .feature
            .map_or(hv("relaxed"), |f| HypervConfig::off().with(f));
        assert!(msrs_offered(&cfg).contains(&(m.msr, m.name)), "{}", m.name);
    }
    assert!(
        !HV_MSRS
            .iter()
            .find(|m| m.msr == HV_X64_MSR_EOI)
            .unwrap()
            .readable
    );
}

#[test]
fn apply_twice_keeps_kvm_leaves() {
    let mut e = kvm_leaves();
    let first = hv("relaxed,vpindex");
    apply_hyperv(&mut e, &first, &full_host(), 2).unwrap();
    let second = hv("vapic");
    apply_hyperv(&mut e, &second, &full_host(), 2).unwrap();
    assert_eq!(kvm_base(&e), Some(0x4000_0100));
    assert_eq!(find(&e, 0x4000_0101).eax, 0x0100_7afb);
    assert_eq!(find(&e, 0x4000_0003).eax, b(4) | b(5));
    assert_eq!(e.len(), kvm_leaves().len() + 11);
}
